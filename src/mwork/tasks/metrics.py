"""Scoring functions shared by the tasks: number parsing (MGSM), SQuAD F1 / exact match
(XQuAD) and ROUGE-L (XLSum), all language-aware.

Tokenisation, so that scores mean the same thing in every script:

* ``CHAR_LANGS`` (zh, ja, th: no spaces between words) are scored on characters: every
  non-space character is a token (after normalisation). Korean writes spaces, so it is
  tokenised on whitespace like the other languages.
* Every other language: whitespace tokens after normalisation.

Number parsing (``extract_numbers`` / ``last_number``):

* Text is NFKC-normalised (full-width ``１２，３４５．６`` -> ``12,345.6``) and every Unicode
  decimal digit (Devanagari, Bengali, Telugu, Thai, Arabic-Indic, ...) is read as its value;
  ``−`` (U+2212) is a minus sign, ``٫``/``٬`` are the Arabic decimal / group separators.
* A number is a run of digits joined by ``,`` ``.`` or a no-break / thin space. A minus sign
  counts only when it is not preceded by a digit or letter (``5-3`` is 5 and 3; ``is -3`` is -3).
* Both ``,`` and ``.`` present: the last one is the decimal point (``1,234.5``, ``1.234,5``).
  One kind repeated: group separators (``1,234,567``, ``1.234.567``), which must then be
  followed by groups of exactly three digits, else the run is read as separate numbers
  (``1,2,3`` -> 1, 2, 3). A single ``,`` before exactly three digits is a group separator
  (``1,234`` -> 1234), before any other count a decimal comma (``3,5`` -> 3.5). A single ``.``
  before exactly three digits is a group separator in languages that write ``1.234`` for
  one thousand two hundred thirty-four (``DOT_GROUP_LANGS``: de, es, it, pt, ...), else a
  decimal point. Spaces are group separators.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from typing import Iterable, Sequence

CHAR_LANGS: frozenset[str] = frozenset({"zh", "ja", "th"})
# languages whose convention is "1.234" = 1234 and "3,5" = 3.5
DOT_GROUP_LANGS: frozenset[str] = frozenset({"de", "es", "it", "pt", "nl", "id", "tr", "vi", "el", "ro", "da"})

_SPACE_SEPS = "\u00a0\u202f\u2009"  # no-break, narrow no-break and thin space: digit groups
_GROUP_SPACE = "\ue000"  # private-use stand-in, so that NFKC does not turn them into spaces
_NUMBER = re.compile(r"\d+(?:[.,\ue000]\d+)*")
_ENGLISH_ARTICLES = re.compile(r"\b(a|an|the)\b")


# ---- numbers -------------------------------------------------------------------------------


def _ascii_digits(text: str) -> str:
    """NFKC, then every Unicode decimal digit as its ASCII digit; unify minus and Arabic separators."""
    for sep in _SPACE_SEPS:
        text = text.replace(sep, _GROUP_SPACE)
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u2212", "-").replace("\u066b", ".").replace("\u066c", ",")
    return "".join(str(unicodedata.decimal(c)) if c.isdecimal() and not c.isascii() else c for c in text)


def _is_grouped(parts: Sequence[str]) -> bool:
    return 1 <= len(parts[0]) <= 3 and all(len(p) == 3 for p in parts[1:])


def _interpret(run: str, lang: str) -> list[float]:
    """The number(s) a matched digit run denotes (see the module docstring)."""
    if _GROUP_SPACE in run:
        parts = run.split(_GROUP_SPACE)
        heads = parts[:-1] + [re.split(r"[.,]", parts[-1])[0]]  # "12 345,5": groups 12, 345
        if not (all(h.isdigit() for h in heads) and _is_grouped(heads)):
            return [v for part in parts for v in _interpret(part, lang)]  # "12 5": two numbers
        run = "".join(parts)
    has_comma, has_dot = "," in run, "." in run
    if has_comma and has_dot:
        dec = "," if run.rfind(",") > run.rfind(".") else "."
        group = "." if dec == "," else ","
        int_part, frac = run.rsplit(dec, 1)
        groups = int_part.split(group)
        if not _is_grouped(groups):
            return [float(p) for p in re.split(r"[.,]", run) if p]
        return [float("".join(groups) + "." + frac)]
    if not (has_comma or has_dot):
        return [float(run)]
    sep = "," if has_comma else "."
    parts = run.split(sep)
    if len(parts) > 2:
        return [float("".join(parts))] if _is_grouped(parts) else [float(p) for p in parts]
    may_group = sep == "," or lang in DOT_GROUP_LANGS
    if may_group and _is_grouped(parts):
        return [float("".join(parts))]
    return [float(parts[0] + "." + parts[1])]


def extract_numbers(text: str, lang: str = "en") -> list[float]:
    """Every number in ``text``, in order, read with ``lang``'s separator conventions."""
    text = _ascii_digits(text)
    numbers: list[float] = []
    for match in _NUMBER.finditer(text):
        values = _interpret(match.group(), lang)
        start = match.start()
        before = text[start - 1] if start >= 1 else ""
        before2 = text[start - 2] if start >= 2 else ""
        if before == "-" and not (before2.isalnum() or before2 == "_"):
            values[0] = -values[0]
        numbers.extend(values)
    return numbers


def last_number(text: str, lang: str = "en") -> float | None:
    """The last number in ``text`` (MGSM's answer convention), or None when there is none."""
    numbers = extract_numbers(text, lang)
    return numbers[-1] if numbers else None


def parse_number(text: str, lang: str = "en") -> float:
    """Exactly one number (e.g. a gold ``answer_number`` such as ``"2,125"``); else ValueError."""
    numbers = extract_numbers(text.strip(), lang)
    if len(numbers) != 1:
        raise ValueError(f"expected one number, found {len(numbers)} in {text!r}")
    return numbers[0]


def numbers_equal(a: float | None, b: float | None) -> bool:
    """Numeric equality up to float rounding (``18 == 18.0``); None never matches."""
    if a is None or b is None:
        return False
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def format_number(x: float) -> str:
    """``18.0`` -> ``"18"``, ``2.5`` -> ``"2.5"``: how gold numbers appear in prompts and records."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# ---- SQuAD-style F1 / exact match ----------------------------------------------------------


def _is_punct(c: str) -> bool:
    return c in string.punctuation or unicodedata.category(c).startswith("P")


def normalize_answer(text: str, lang: str) -> str:
    """SQuAD normalisation, made multilingual: NFKC, lowercase, delete punctuation (ASCII and
    every Unicode P* character), drop English articles (English only), collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(c for c in text if not _is_punct(c))
    if lang == "en":
        text = _ENGLISH_ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str, lang: str) -> list[str]:
    """Tokens of a normalised answer: characters for ``CHAR_LANGS``, whitespace words otherwise."""
    norm = normalize_answer(text, lang)
    if lang in CHAR_LANGS:
        return [c for c in norm if not c.isspace()]
    return norm.split()


def _f1(pred: list[str], gold: list[str]) -> float:
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def _golds(golds: str | Iterable[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def qa_f1(prediction: str, golds: str | Iterable[str], lang: str) -> float:
    """Token-overlap F1, maximised over the gold answers."""
    pred, golds = answer_tokens(prediction, lang), _golds(golds)
    return max((_f1(pred, answer_tokens(g, lang)) for g in golds), default=0.0)


def qa_exact(prediction: str, golds: str | Iterable[str], lang: str) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer (spaces ignored in
    ``CHAR_LANGS``), else 0.0."""
    pred, golds = answer_tokens(prediction, lang), _golds(golds)
    return float(any(pred == answer_tokens(g, lang) for g in golds))


# ---- ROUGE-L ---------------------------------------------------------------------------------


def rouge_tokens(text: str, lang: str) -> list[str]:
    """ROUGE tokens: NFKC, lowercase; punctuation splits words and is dropped; characters for
    ``CHAR_LANGS``, whitespace words otherwise (combining marks stay inside their word)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if _is_punct(c) else c for c in text)
    if lang in CHAR_LANGS:
        return [c for c in text if not c.isspace()]
    return text.split()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a) * len(b)))."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str, lang: str) -> dict[str, float]:
    """Sentence-level ROUGE-L (Lin, 2004) with beta = 1: precision, recall and F1 of the LCS."""
    pred, ref = rouge_tokens(prediction, lang), rouge_tokens(reference, lang)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    p, r = lcs / len(pred), lcs / len(ref)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r)}
