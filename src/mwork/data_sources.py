"""Where data sets come from -- a local file or folder, else the Hugging Face hub -- and XQuAD's
articles, which both the texts (``xquad:LANG``, :mod:`mwork.texts`) and the xquad task
(:mod:`mwork.tasks.xquad`) read. Below both, so neither imports the other for them.

The ``source`` rule (every task's ``load`` and :func:`load_articles`):

* a file or a folder: read locally (each task documents the file names it looks for);
* ``"hub"``: the task's Hugging Face dataset, through the ``datasets`` package (imported
  only then; ``pip install datasets``);
* ``None``: the folder in the environment variable ``MWORK_DATA`` when it is set (the layout of
  the released files: ``$MWORK_DATA/mgsm/mgsm_en.tsv``, ``$MWORK_DATA/xquad/xquad.en.json`` ...),
  else the hub.

XQuAD locally: ``xquad.<lang>.json`` in SQuAD format, in the given folder or its ``xquad/``
subfolder, or the file itself. Hub: ``google/xquad`` (config ``xquad.<lang>``, split
``validation``), whose rows are flattened questions in the original order: paragraphs are
recovered as runs of the same context and articles as consecutive groups of five paragraphs
(every XQuAD article has exactly five; checked).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

DATA_ENV = "MWORK_DATA"
XQUAD_LANGS: tuple[str, ...] = ("en", "es", "de", "el", "ru", "tr", "ar", "vi", "th", "zh", "hi", "ro")
N_ARTICLES = 48
PARAGRAPHS_PER_ARTICLE = 5


def resolve_source(source: str | Path | None, task_dir: str, candidates: Sequence[str]) -> Path | None:
    """The local file to read, or None for the hub (see the module docstring).

    ``candidates`` are file names tried inside a given folder, then inside ``folder/task_dir``."""
    origin = ""
    if source is None:
        env = os.environ.get(DATA_ENV)
        if not env:
            return None
        source, origin = env, f" (from ${DATA_ENV})"
    if str(source) == "hub":
        return None
    path = Path(source)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"data source {path}{origin} is neither a file nor a folder (or pass source='hub')")
    tried = []
    for folder in (path, path / task_dir):
        for name in candidates:
            tried.append(folder / name)
            if tried[-1].is_file():
                return tried[-1]
    raise FileNotFoundError(f"none of these files exists{origin}: {', '.join(str(t) for t in tried)}")


class HubLoadError(ValueError):
    """The hub could not serve a data set (offline, unknown config or split). A ValueError so
    that the CLI reports it as one line telling the user to pass a local source."""


def load_hub(repo: str, config: str | None, split: str) -> Any:
    """``datasets.load_dataset(repo, config, split=split)``, with errors that say what to do."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"loading {repo} from the Hugging Face hub needs the 'datasets' package: pip install datasets "
            "(or pass source=<local file or folder>)"
        ) from err
    try:
        return datasets.load_dataset(repo, config, split=split)
    except Exception as err:  # network, unknown config or split: one clear message
        raise HubLoadError(
            f"could not load {repo} (config {config!r}, split {split!r}) from the hub: {err}. "
            "Pass source=<local file or folder> to read local data instead"
        ) from err


def read_squad_json(path: str | Path) -> list[dict[str, Any]]:
    """Articles of a SQuAD-format file: ``[{'title', 'paragraphs': [{'context', 'qas'}]}]``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a SQuAD-format JSON file with a 'data' list ({err})") from None
    return data


def _articles_from_hub(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    paragraphs: list[dict[str, Any]] = []
    for r in rows:
        if not paragraphs or paragraphs[-1]["context"] != r["context"]:
            paragraphs.append({"context": r["context"], "qas": []})
        answers = [{"text": t} for t in r["answers"]["text"]]
        paragraphs[-1]["qas"].append({"id": r["id"], "question": r["question"], "answers": answers})
    if len(paragraphs) != N_ARTICLES * PARAGRAPHS_PER_ARTICLE:
        raise ValueError(f"expected {N_ARTICLES * PARAGRAPHS_PER_ARTICLE} XQuAD paragraphs on the hub, found "
                         f"{len(paragraphs)}: cannot recover articles; use a local SQuAD-format file")
    n = PARAGRAPHS_PER_ARTICLE
    return [{"title": f"article-{i}", "paragraphs": paragraphs[i * n:(i + 1) * n]} for i in range(N_ARTICLES)]


def load_articles(lang: str, source: str | Path | None = None) -> list[dict[str, Any]]:
    """All XQuAD articles of ``lang`` in SQuAD structure, locally or from the hub."""
    path = resolve_source(source, "xquad", [f"xquad.{lang}.json"])
    if path is not None:
        return read_squad_json(path)
    if lang not in XQUAD_LANGS:
        raise ValueError(f"XQuAD has no language {lang!r}; it has {', '.join(XQUAD_LANGS)}")
    return _articles_from_hub(load_hub("google/xquad", f"xquad.{lang}", "validation"))
