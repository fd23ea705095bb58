"""The prompts a steering sweep generates from, in any language (``--prompts``):

* ``builtin:LANG`` (or ``builtin:LANG:N``): mwork's built-in prompts (``mwork/data/prompts``, 24 per
  language, parallel across the ten languages), each put into ``template``;
* ``xquad:LANG`` / ``xquad:LANG[A:B]``: XQuAD questions of articles A..B-1 (default 24-47, never
  the detection half) with their paragraph, in the XQuAD task's prompt of LANG. XQuAD is
  parallel (one question id in every language), so each prompt also carries the *target*
  language's gold answers, for the F1 of the steered answer in the new language;
* a file: ``.txt`` (one prompt per line, in the language ``source``) or ``.jsonl`` (``{"text":
  ..., "lang": ...}`` per line; optional ``"answers": [...]``, gold answers in the target language).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mwork.texts import EVALUATION_ARTICLES, parse_range

_XQUAD = re.compile(r"^xquad:(?P<lang>[A-Za-z_-]+)(?:\[(?P<range>\d+:\d+)\])?$")


@dataclass(frozen=True)
class SteerPrompt:
    """One prompt: ``id``, its ``text`` (the user's prompt), ``rendered`` (what the model reads),
    ``lang`` (its language), ``answers`` (gold answers in the target language, or None) and
    ``stop`` (where an answer ends, for the F1)."""

    id: str
    text: str
    rendered: str
    lang: str
    answers: tuple[str, ...] | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)


def _builtin(lang: str, template: str) -> list[SteerPrompt]:
    from mwork.lens.prompts import builtin_prompts

    return [SteerPrompt(f"builtin:{lang}:{i}", p.text, template.format(prompt=p.text), lang)
            for i, p in enumerate(builtin_prompts([lang]))]


def _xquad(lang: str, articles: tuple[int, int] | None, target: str) -> tuple[list[SteerPrompt], str | None]:
    from mwork.tasks.registry import get_task
    from mwork.texts import data_dir

    task = get_task("xquad")
    source = data_dir()
    chosen = articles if articles is not None else (EVALUATION_ARTICLES.start, EVALUATION_ARTICLES.stop)
    examples = task.load(lang, source, articles=chosen)
    rendered, prompt = task.build_prompts(examples, lang)
    note = None
    gold: dict[str, list[str]] = {}
    if target == lang:
        gold = {e.id: list(e.target) for e in examples}
    else:
        try:
            gold = {e.id: list(e.target) for e in task.load(target, source, articles=chosen)}
        except (FileNotFoundError, ValueError, ImportError, OSError) as err:
            note = f"no XQuAD answers in {target!r} ({err}): the answer F1 is not measured"
    out = []
    for e, r in zip(examples, rendered):
        answers = gold.get(e.id)
        out.append(SteerPrompt(f"xquad:{e.id}", e.fields["question"], r, lang,
                               tuple(answers) if answers else None, tuple(prompt.get("stop", ()))))
    if gold and not any(p.answers for p in out):
        note = f"the XQuAD questions of {lang!r} have no counterpart in {target!r}: the answer F1 is not measured"
    return out, note


def _file(path: Path, source: str | None, template: str) -> list[SteerPrompt]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"the prompts file {path} is empty: write one prompt per line (or JSONL with text, lang)")
    out = []
    if path.suffix == ".jsonl" or lines[0].lstrip().startswith("{"):
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                text, lang = str(row["text"]), str(row["lang"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{n}: expected a JSON object with 'text' and 'lang' ({err})") from None
            answers = row.get("answers")
            if answers is not None and (not isinstance(answers, list) or not all(isinstance(a, str) for a in answers)):
                raise ValueError(f"{path}:{n}: 'answers' must be a list of strings (gold answers in the target "
                                 "language)")
            out.append(SteerPrompt(f"{path.name}:{n}", text, template.format(prompt=text), lang,
                                   tuple(answers) if answers else None, tuple(row.get("stop", ["\n"]))))
        return out
    if not source:
        raise ValueError(f"{path} is plain text: give the prompts' language (--source LANG), or write JSONL lines "
                         '{"text": ..., "lang": ...}')
    return [SteerPrompt(f"{path.name}:{n}", t.strip(), template.format(prompt=t.strip()), source)
            for n, t in enumerate(lines, 1)]


def load_prompts(spec: str, target: str, *, source: str | None = None, template: str = "{prompt}",
                 limit: int | None = None) -> tuple[list[SteerPrompt], list[str]]:
    """The prompts of ``spec`` (module docstring), the first ``limit``; and notes for the user."""
    if "{prompt}" not in template:
        raise ValueError(f"the template {template!r} has no {{prompt}} placeholder")
    notes: list[str] = []
    m = _XQUAD.match(spec)
    if spec.startswith("builtin:"):
        lang = spec[len("builtin:"):]
        if not lang:
            raise ValueError("name the built-in prompts' language, e.g. builtin:en")
        prompts = _builtin(lang, template)
    elif m:
        rng = parse_range(m.group("range"), "xquad range") if m.group("range") else None
        prompts, note = _xquad(m.group("lang"), rng, target)
        notes += [note] if note else []
    elif spec.startswith("xquad:"):
        raise ValueError(f"{spec!r}: write xquad:LANG or xquad:LANG[A:B] (articles A..B-1)")
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"no prompts file at {spec} (or use builtin:LANG or xquad:LANG[A:B])")
        prompts = _file(path, source, template)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        prompts = prompts[:limit]
    langs = sorted({p.lang for p in prompts})
    if target in langs:
        notes.append(f"some prompts are already in the target language {target!r}: their rate says little")
    return prompts, notes


def source_language(prompts: Sequence[SteerPrompt]) -> str:
    """The prompts' language (``mixed`` when they have several)."""
    langs = sorted({p.lang for p in prompts})
    return langs[0] if len(langs) == 1 else "mixed"


def prompts_record(prompts: Sequence[SteerPrompt]) -> list[dict[str, Any]]:
    """What the cells' inputs digest is computed from."""
    return [{"id": p.id, "rendered": p.rendered, "lang": p.lang, "answers": list(p.answers or []),
             "stop": list(p.stop)} for p in prompts]
