"""Texts: every way of naming a list of documents, parsed in one place (:class:`TextSource`).

A spec is one string (``--corpus``, ``--texts``, ``--eval``, ``--heldout`` all take it):

* ``FILE``: ``.txt`` (one document per line), ``.jsonl`` (one JSON object per line, the text in
  ``text_field``, or a JSON string per line), ``.json`` (SQuAD format: every paragraph's
  ``context``); ``FILE[A:B]`` keeps documents A..B-1 (for SQuAD JSON: articles A..B-1);
* ``xquad:LANG`` / ``xquad:LANG[A:B]``: XQuAD paragraphs of articles A..B-1, from the local data
  folder ``$MWORK_DATA`` (``xquad/xquad.LANG.json`` under it) or else the hub (``google/xquad``); without
  ``[A:B]`` the caller's default articles (detection and training: 0-23, evaluation: 24-47);
* ``builtin:LANG`` / ``builtin:LANG:heldout``: the built-in prose of the ``dataset-build``
  package (its detection/training pool or its held-out pool, see :mod:`mwork.corpora`);
* ``hf:DATASET[:CONFIG][@SPLIT]``: a Hugging Face data set (hub id or local folder), streamed;
  offline (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``, or a hub that does not answer at once):
  a cached copy, else one line saying so (as for models).

Every source yields *every* document in order, empty ones included, so that nothing is dropped
silently: callers report empty documents (:func:`is_empty`: nothing but whitespace) by number.
Document numbers are 0-based positions (for text and JSONL files: line number - 1). Ranges are
always ``START:STOP`` (stop excluded), as in Python; a range that selects nothing (START >= STOP,
or past the end) is an error that names it and the document count, one that runs past the end
reads what there is, with a warning.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from mwork.data_sources import load_articles
from mwork.files import check_name
from mwork.fingerprints import TextHasher, fingerprint_texts, texts_digest  # noqa: F401  (here too: its users import them from texts)

FORMATS = ("auto", "text", "jsonl", "squad")
DETECTION_ARTICLES = range(0, 24)  # XQuAD articles for detection and training
EVALUATION_ARTICLES = range(24, 48)  # held out for evaluation
_SPEC = re.compile(r"^(?P<body>.*?)(?:\[(?P<lo>-?\d*):(?P<hi>-?\d*)\])?$", re.S)


def is_empty(text: str) -> bool:
    """The one rule for an empty document: nothing but whitespace."""
    return not text.strip()


def parse_range(text: str, what: str = "range") -> tuple[int, int]:
    """``"24:48"`` -> (24, 48): START:STOP, stop excluded, 0 <= START < STOP."""
    try:
        start, stop = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"{what} must look like START:STOP (e.g. 24:48, stop excluded), got {text!r}") from None
    if not 0 <= start < stop:
        raise ValueError(f"{what} {text!r}: need 0 <= START < STOP")
    return start, stop


def data_dir(path: str | Path | None = None) -> Path | None:
    """Where local data sets live: ``path`` (a folder the user gives), else ``$MWORK_DATA``; None
    if neither names an existing folder (then data comes from the hub)."""
    candidates = [path, os.environ.get("MWORK_DATA")]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


@dataclass(frozen=True)
class TextSource:
    """Where documents come from; iterate it to stream them (str each). See the module docstring.

    Exactly one of ``path`` (with ``format``, ``text_field``), ``xquad`` (a language),
    ``builtin`` (a language; ``builtin_split`` "detect" or "heldout") or ``hf_dataset`` (with
    ``hf_config``, ``hf_split``, ``text_field``). ``articles``: SQuAD / XQuAD article numbers.
    ``docs``: a (start, stop) slice of the documents; ``max_docs``: the first N (empty ones
    included)."""

    path: str | Path | None = None
    format: str = "auto"
    text_field: str = "text"
    hf_dataset: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    xquad: str | None = None
    builtin: str | None = None
    builtin_split: str = "detect"
    articles: tuple[int, ...] | tuple[int, int] | range | None = None
    docs: tuple[int | None, int | None] | None = None
    max_docs: int | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("path", "hf_dataset", "xquad", "builtin") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one text source: a file, xquad:LANG, builtin:LANG or a hub data set "
                             f"(got {', '.join(given) or 'none'})")
        if self.format not in FORMATS:
            raise ValueError(f"unknown text format {self.format!r}; use one of {', '.join(FORMATS)}")
        if self.max_docs is not None and self.max_docs < 1:
            raise ValueError(f"max_docs must be at least 1, got {self.max_docs}")
        if self.path is not None and not Path(self.path).is_file():
            raise FileNotFoundError(_not_a_text_file(Path(self.path)))
        if self.articles is not None:
            if self.kind() not in ("squad", "xquad"):
                raise ValueError("articles only apply to SQuAD-format JSON files and xquad:LANG")
            object.__setattr__(self, "articles", _article_tuple(self.articles))
        if self.builtin_split not in ("detect", "heldout"):
            raise ValueError(f"builtin split must be 'detect' or 'heldout', not {self.builtin_split!r}")

    # ---- parsing ----------------------------------------------------------------------------
    @classmethod
    def parse(cls, spec: "str | Path | TextSource", *, articles: Any = DETECTION_ARTICLES, **options: Any) -> "TextSource":
        """A TextSource from a spec string (module docstring); ``articles``: the XQuAD articles
        when the spec names none; ``options`` set other fields (``text_field``, ``max_docs`` ...)."""
        if isinstance(spec, TextSource):
            return replace(spec, **options) if options else spec
        text = str(spec)
        m = _SPEC.match(text)
        body, lo, hi = m.group("body"), m.group("lo"), m.group("hi")
        bracket = m.group("lo") is not None
        span = (int(lo) if lo else None, int(hi) if hi else None)
        if body.startswith("xquad:"):
            lang = body[len("xquad:"):]
            if not lang:
                raise ValueError(f"{text!r}: name the language, e.g. xquad:zh")
            from mwork.files import check_name

            check_name(lang, "language code", text)  # it names the file xquad/xquad.LANG.json
            chosen = range(span[0] or 0, span[1] if span[1] is not None else 48) if bracket else articles
            if bracket and not chosen:
                raise ValueError(f"{text}: the article range [{lo}:{hi}] is empty (START:STOP, stop excluded: need "
                                 "START < STOP; XQuAD has articles 0-47)")
            return cls(xquad=lang, articles=chosen, **options)
        if body.startswith("builtin:"):
            lang, _, split = body[len("builtin:"):].partition(":")
            return cls(builtin=lang, builtin_split=split or "detect", docs=span if bracket else None, **options)
        if body.startswith("hf:"):
            rest, _, split = body[len("hf:"):].partition("@")
            name, _, config = rest.rpartition(":") if rest.count(":") else (rest, "", "")
            return cls(hf_dataset=name or rest, hf_config=config or None, hf_split=split or "train",
                       docs=span if bracket else None, **options)
        source = cls(path=body, **options)
        if bracket and source.kind() == "squad":
            count = len(_squad_articles(body))
            chosen = range(span[0] or 0, span[1] if span[1] is not None else count)
            if not chosen or chosen.start >= count:
                why = "starts past the end" if chosen.start >= count and (span[1] is None or chosen) else \
                    "is empty (START:STOP, stop excluded: need START < STOP)"
                raise ValueError(f"{text}: the article range [{lo}:{hi}] {why}; {body} has {count} articles "
                                 f"({_numbers(count)})")
            return replace(source, articles=chosen)
        return replace(source, docs=span) if bracket else source

    def kind(self) -> str:
        """``text``, ``jsonl``, ``squad``, ``xquad``, ``builtin`` or ``hf``."""
        if self.xquad is not None:
            return "xquad"
        if self.builtin is not None:
            return "builtin"
        if self.hf_dataset is not None:
            return "hf"
        if self.format != "auto":
            return self.format
        suffix = Path(self.path).suffix.lower()
        return {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "squad"}.get(suffix, "text")

    # ---- reading ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        reader = {"text": _text_lines, "jsonl": _jsonl, "squad": _squad, "xquad": _xquad, "builtin": _builtin,
                  "hf": _hf}[self.kind()]
        source: Iterable[str] = reader(self)
        if self.docs is not None:
            source = self._slice(list(source))
        for n, doc in enumerate(source):
            if self.max_docs is not None and n >= self.max_docs:
                break
            yield doc

    def _slice(self, docs: list[str]) -> list[str]:
        """``docs[start:stop]`` as ``self.docs`` says; a range that selects nothing (START >= STOP,
        or past the end) is an error naming it and the document count; one that runs past the
        end, a warning."""
        start, stop = self.docs
        n = len(docs)
        first, end, _ = slice(start, stop).indices(n)
        where = f"{self.name()}[{'' if start is None else start}:{'' if stop is None else stop}]"
        if not n:
            raise ValueError(f"{where}: {self.name()} has no documents at all")
        backwards = start is not None and stop is not None and (start < 0) == (stop < 0) and start >= stop
        if first >= end:
            why = "is empty (START:STOP, stop excluded: need START < STOP)" if backwards or first < n else \
                "starts past the end"
            raise ValueError(f"{where}: the range {why}; {self.name()} has {n} documents ({_numbers(n)})")
        if stop is not None and stop > n:
            shown = f"document {first}" if end - first == 1 else f"documents {first}-{end - 1}"
            warnings.warn(f"{where}: {self.name()} has only {n} documents; reading {shown}")
        return docs[first:end]

    def name(self) -> str:
        """The source as its spec names it (without a range)."""
        kind = self.kind()
        if kind == "hf":
            return f"hf:{self.hf_dataset}" + (f":{self.hf_config}" if self.hf_config else "")
        if kind == "xquad":
            return f"xquad:{self.xquad}"
        if kind == "builtin":
            return f"builtin:{self.builtin}" + (":heldout" if self.builtin_split == "heldout" else "")
        return str(self.path)

    def texts(self) -> list[str]:
        return list(self)

    def describe(self) -> dict[str, Any]:
        """What the texts are, for result metadata."""
        kind = self.kind()
        info: dict[str, Any] = {"format": kind, "max_docs": self.max_docs}
        if kind == "hf":
            info.update(hf_dataset=self.hf_dataset, hf_config=self.hf_config, hf_split=self.hf_split,
                        text_field=self.text_field)
        elif kind == "xquad":
            info["xquad"] = self.xquad
        elif kind == "builtin":
            info.update(builtin=self.builtin, split=self.builtin_split)
        else:
            info["path"] = str(Path(self.path).resolve())
            if kind == "jsonl":
                info["text_field"] = self.text_field
        if kind in ("squad", "xquad"):
            info["articles"] = _describe_articles(self.articles)
        if self.docs is not None:
            info["docs"] = list(self.docs)
        return info


def _numbers(n: int, start: int = 0) -> str:
    """``"0-9"`` for 10 items (``start``: the first shown), ``"none"`` for 0."""
    start = start if start >= 0 else max(n + start, 0)
    return "none" if start >= n else str(start) if start == n - 1 else f"{start}-{n - 1}"


def _article_tuple(articles: Any) -> tuple[int, ...]:
    if isinstance(articles, tuple) and len(articles) == 2 and not isinstance(articles, range):
        articles = range(*articles)  # (start, stop), stop excluded
    return tuple(sorted(set(int(a) for a in articles)))


def _describe_articles(articles: tuple[int, ...] | None) -> Any:
    if articles is None:
        return None
    if articles and list(articles) == list(range(articles[0], articles[-1] + 1)):
        return f"{articles[0]}:{articles[-1] + 1}"
    return list(articles)


def _text_lines(c: TextSource) -> Iterator[str]:
    # binary read: split on "\n" only (a stray "\r" inside a document does not split it)
    with open(c.path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise ValueError(f"{c.path}, line {lineno}: not valid UTF-8 ({err.reason})") from err
            yield line.lstrip("\ufeff") if lineno == 1 else line


def _jsonl(c: TextSource) -> Iterator[str]:
    for lineno, line in enumerate(_text_lines(c), start=1):
        where = f"{c.path}:{lineno}"
        if not line.strip():
            yield ""  # a blank line is an empty document (reported), keeping numbers = line - 1
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
        yield row if isinstance(row, str) else _field(row, c.text_field, where)


def _squad_articles(path: str | Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg}); for JSON Lines use a .jsonl name or format 'jsonl'") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path} is not SQuAD-format JSON ({{'data': [articles]}}); "
                         "for JSON Lines use format 'jsonl', for plain text 'text'")
    return data["data"]


def _contexts(articles: list[dict[str, Any]], chosen: tuple[int, ...] | None, where: str) -> Iterator[str]:
    numbers = range(len(articles)) if chosen is None else chosen
    bad = [a for a in numbers if not 0 <= a < len(articles)]
    if bad:
        raise ValueError(f"articles {bad[:5]} out of range: {where} has articles 0..{len(articles) - 1}")
    for a in numbers:
        for paragraph in articles[a].get("paragraphs", []):
            yield paragraph.get("context") or ""


def _squad(c: TextSource) -> Iterator[str]:
    yield from _contexts(_squad_articles(c.path), c.articles, str(c.path))


def _xquad(c: TextSource) -> Iterator[str]:
    root = data_dir()
    local = root / "xquad" / f"xquad.{c.xquad}.json" if root else None
    articles = load_articles(c.xquad, local if local is not None and local.is_file() else "hub")
    yield from _contexts(articles, c.articles, f"XQuAD {c.xquad}")


def _builtin(c: TextSource) -> Iterator[str]:
    from mwork.corpora import builtin_corpus

    yield from builtin_corpus(c.builtin, c.builtin_split)


def _hf(c: TextSource) -> Iterator[str]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError("reading a hub data set needs the 'datasets' package: pip install datasets") from err
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import httpx

    from mwork.hub import offline_reason

    # offline (the variables, or a hub that does not answer at once): a cached copy or one clear
    # line, never a ConnectionError traceback after a minute of retries (as for models)
    reason = None if Path(c.hf_dataset).exists() else offline_reason(datasets=True)
    rows = 0
    try:
        with _hub_offline(reason is not None):
            ds = datasets.load_dataset(c.hf_dataset, c.hf_config, split=c.hf_split, streaming=True)
            for row in ds:
                yield _field(row, c.text_field, f"{c.hf_dataset} row {rows}")
                rows += 1
    except (ConnectionError, TimeoutError, LocalEntryNotFoundError, httpx.TransportError) as err:
        fix = "pass a local copy instead: a text or JSONL file, or hf:FOLDER with the data files (parquet, JSON, CSV)"
        if rows:
            raise ValueError(f"hub data set {c.hf_dataset}: the connection failed after {rows} rows "
                             f"({type(err).__name__}); rerun when online, or {fix}") from None
        why = reason or "the Hugging Face hub cannot be reached"
        raise ValueError(f"offline: no cached copy of the data set {c.hf_dataset} and {why}; {fix}") from None


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """``datasets`` and ``huggingface_hub`` in offline mode for the block (cached copies only, no
    retries) when ``offline``; as they are otherwise."""
    if not offline:
        yield
        return
    import datasets
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _field(row: Any, field: str, where: str) -> str:
    if not isinstance(row, dict) or field not in row:
        fields = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
        raise ValueError(f"{where}: no text field {field!r} (has: {fields}); choose the field with --text-field")
    value = row[field]
    return "" if value is None else str(value)


# ---- the functions the tasks and commands call --------------------------------------------------


def read_texts(spec: "str | Path | TextSource", *, articles: str | range | None = None,
               default_articles: range = DETECTION_ARTICLES, **options: Any) -> list[str]:
    """Every document of a spec (module docstring). ``articles``: an explicit choice of SQuAD /
    XQuAD articles (``"24:48"``, e.g. from ``--articles``) over the spec's own;
    ``default_articles``: XQuAD's articles when neither names any."""
    chosen = range(*parse_range(articles, "--articles")) if isinstance(articles, str) else articles
    source = TextSource.parse(spec, articles=chosen if chosen is not None else default_articles, **options)
    if chosen is not None:
        if source.kind() not in ("squad", "xquad"):
            raise ValueError("--articles applies only to xquad:LANG or a SQuAD-format .json file")
        source = replace(source, articles=chosen)
    return source.texts()


def _not_a_text_file(path: Path) -> str:
    if path.is_dir():
        return f"{path} is a folder; give a text file in it (.txt, .jsonl or SQuAD .json), one document per line or record"
    return f"no text file at {path}: it does not exist"


def load_texts(path: str | Path, field: str = "text") -> list[str]:
    """Texts of one file (``.txt``, ``.jsonl`` with ``field``, SQuAD ``.json``: all articles)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(_not_a_text_file(p))
    return TextSource(path=p, text_field=field).texts()


def xquad_texts(
    path_or_lang: str | Path,
    articles: Iterable[int] | None = EVALUATION_ARTICLES,
    data: str | Path | None = None,
    source: str = "auto",
) -> list[str]:
    """The paragraph contexts of the chosen XQuAD articles (default: the held-out 24-47).

    ``path_or_lang``: a SQuAD-format JSON file, or a language code (``zh``) looked up as
    ``<data>/xquad/xquad.<lang>.json`` (see :func:`data_dir`). ``source``: ``"auto"`` (local
    file, else the hub), ``"local"`` or ``"hub"`` (``google/xquad`` through ``datasets``;
    needs network). ``articles=None``: all articles."""
    if source not in ("auto", "local", "hub"):
        raise ValueError(f"source must be 'auto', 'local' or 'hub', not {source!r}")
    chosen = None if articles is None else tuple(sorted(set(int(a) for a in articles)))
    p = Path(path_or_lang)
    if source != "hub" and p.suffix == ".json":
        if not p.is_file():
            raise FileNotFoundError(f"no XQuAD/SQuAD JSON file at {p}")
        return list(_contexts(_squad_articles(p), chosen, str(p)))
    lang = str(path_or_lang)
    if source != "hub":
        root = data_dir(data)
        local = root / "xquad" / f"xquad.{lang}.json" if root else None
        if local is not None and local.is_file():
            return list(_contexts(_squad_articles(local), chosen, str(local)))
        if source == "local":
            raise FileNotFoundError(
                f"no local XQuAD file for {lang!r} (looked for xquad/xquad.{lang}.json under "
                f"{root or 'no data folder: set MWORK_DATA'}); use source='hub' to download google/xquad"
            )
    return list(_contexts(load_articles(lang, "hub"), chosen, f"google/xquad {lang}"))


def heldout_texts(lang: str, texts_dir: str | Path | None = None, limit: int | None = None) -> tuple[list[str], str]:
    """Held-out texts of ``lang`` and where they came from: ``<texts_dir>/<lang>.txt`` if
    given, else XQuAD articles 24-47 when a local copy exists, else the built-in corpus's
    held-out paragraphs (never the ones used for detection or training)."""
    if texts_dir is not None:
        path = Path(texts_dir) / f"{lang}.txt"
        if not path.exists():
            raise FileNotFoundError(f"no held-out texts for {lang!r}: expected {path} (one text per line)")
        texts, source = load_texts(path), str(path)
    else:
        try:
            texts, source = xquad_texts(lang, source="local"), "XQuAD articles 24-47 (local)"
        except FileNotFoundError:
            texts, source = TextSource(builtin=lang, builtin_split="heldout").texts(), "dataset-build held-out paragraphs"
    return (texts[:limit] if limit else texts), source


# ---- corpora by language (LANG=SPEC) -------------------------------------------------------


def parse_corpus_specs(specs: Iterable[str], what: str = "--corpus") -> dict[str, str]:
    """``["en=FILE", "zh=xquad:zh"]`` -> ``{"en": "FILE", "zh": "xquad:zh"}`` (order kept)."""
    out: dict[str, str] = {}
    for spec in specs:
        lang, sep, text = str(spec).partition("=")
        lang = lang.strip()
        if not sep or not text:
            raise ValueError(f"{what} {spec!r}: expected LANG=FILE (e.g. fr=corpus/fr.txt or zh=xquad:zh)")
        check_name(lang, "language code", what)  # it names the file LANG.safetensors
        if lang in out:
            raise ValueError(f"{what} names {lang} twice: give each language once")
        out[lang] = text
    if not out:
        raise ValueError(f"give at least one {what} LANG=FILE")
    return out


def read_corpora(corpora: Mapping[str, Any], *, default_articles: range = DETECTION_ARTICLES,
                 **options: Any) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """Every language's documents and what they are: ``corpora`` maps a language to a text spec
    (``mwork.texts``: a file, ``xquad:LANG[A:B]`` ...), a ``TextSource`` or a list of documents.
    ``options`` (``max_docs``, ``text_field``) apply to specs; XQuAD specs without articles get
    ``default_articles`` (detection: 0-23)."""
    texts: dict[str, list[str]] = {}
    info: dict[str, dict[str, Any]] = {}
    for lang, corpus in corpora.items():
        if isinstance(corpus, (str, Path, TextSource)):
            source = TextSource.parse(corpus, articles=default_articles,
                                      **{k: v for k, v in options.items() if v is not None})
            texts[lang] = source.texts()
            info[lang] = {"spec": str(corpus) if not isinstance(corpus, TextSource) else None, **source.describe()}
        else:
            texts[lang] = [str(t) for t in corpus]
            info[lang] = {"format": "documents given in Python"}
        info[lang]["n_docs"] = len(texts[lang])
        info[lang]["sha256"] = texts_digest(texts[lang])
    return texts, info
