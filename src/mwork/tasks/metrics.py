"""Scoring functions shared by the tasks: number parsing (MGSM), SQuAD F1 / exact match
(XQuAD) and ROUGE-L (XLSum).

Two scorings, chosen with ``scoring=`` (every task takes it too):

* ``"official"`` (the default): the published rules, reproduced exactly so that scores compare
  with published numbers: SQuAD v1.1 / MLQA for XQuAD, lm-eval's MGSM extraction and exact match,
  rouge-score with the XL-Sum authors' tokenisation; see ``mwork.tasks.official_scoring``.
* ``"mwork"``: mwork's own multilingual normalisation, the same in every script (below).

The ``"mwork"`` scoring. Tokenisation:

* ``CHAR_LANGS`` (zh, ja, th: no spaces between words) are scored on characters: every
  non-space character is a token (after normalisation). Korean writes spaces, so it is
  tokenised on whitespace like the other languages.
* Every other language: whitespace tokens after normalisation (NFKC, lowercase, every Unicode
  punctuation mark deleted, English articles dropped in English).

Number parsing (``extract_numbers``, and ``last_number(..., scoring="mwork")``):

* Text is NFKC-normalised (full-width ``１２，３４５．６`` -> ``12,345.6``) and every Unicode
  decimal digit (Devanagari, Bengali, Telugu, Thai, Arabic-Indic, ...) is read as its value;
  ``−`` (U+2212) is a minus sign, ``٫``/``٬`` are the Arabic decimal / group separators; a
  vulgar fraction (``½``, ``3¼``) is its value (0.5, 3.25).
* A number is a run of digits joined by ``,`` ``.`` or a no-break / thin space (in
  ``SPACE_GROUP_LANGS``, fr, ru, ..., also a plain space before a group of three digits:
  ``1 234`` is 1234); a leading ``.`` before digits is a decimal point (``.5`` is 0.5). A minus
  sign counts only when it is not preceded by a digit or letter (``5-3`` is 5 and 3; ``is -3`` is -3).
* Both ``,`` and ``.`` present: the last one is the decimal point (``1,234.5``, ``1.234,5``).
  One kind repeated: group separators (``1,234,567``, ``1.234.567``), which must then be
  followed by groups of exactly three digits, else the run is read as separate numbers
  (``1,2,3`` -> 1, 2, 3). A single ``,`` is the decimal comma in ``COMMA_DECIMAL_LANGS``
  (de, fr, es, ru, ...: ``1,500`` is 1.5 there), elsewhere a group separator before exactly
  three digits (``1,234`` -> 1234) and a decimal comma before any other count (``3,5`` -> 3.5).
  A single ``.`` before exactly three digits is a group separator in languages that write
  ``1.234`` for one thousand two hundred thirty-four (``DOT_GROUP_LANGS``: de, es, it, pt, ...),
  else a decimal point. Spaces are group separators.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from typing import Iterable, Sequence

from mwork.tasks import official_scoring as official

SCORINGS: tuple[str, ...] = ("official", "mwork")
DEFAULT_SCORING = "official"

CHAR_LANGS: frozenset[str] = frozenset({"zh", "ja", "th"})
# languages whose convention is "1.234" = 1234 and "3,5" = 3.5
DOT_GROUP_LANGS: frozenset[str] = frozenset({"de", "es", "it", "pt", "nl", "id", "tr", "vi", "el", "ro", "da"})
# languages that group digits with a space ("1 234") and write a decimal comma
SPACE_GROUP_LANGS: frozenset[str] = frozenset({"fr", "ru", "uk", "pl", "cs", "sk", "sv", "no", "nb", "fi", "bg",
                                               "hu", "et", "lt", "lv", "be", "kk"})
COMMA_DECIMAL_LANGS: frozenset[str] = DOT_GROUP_LANGS | SPACE_GROUP_LANGS

_SPACE_SEPS = "\u00a0\u202f\u2009"  # no-break, narrow no-break and thin space: digit groups
_GROUP_SPACE = "\ue000"  # private-use stand-in, so that NFKC does not turn them into spaces
_FRACTION = "\ue001"  # stand-in for a vulgar fraction's value, after its integer part
_NUMBER = re.compile(r"(?:\d+|\.(?=\d))(?:[.,\ue000]?\d+)*(?:\ue001\d+)?")
_PLAIN_SPACE_GROUP = re.compile(r"(?<![\d.,])(\d{1,3})((?: \d{3})+)(?![\d])")
_ENGLISH_ARTICLES = re.compile(r"\b(a|an|the)\b")


def check_scoring(scoring: str) -> str:
    """``scoring`` itself, or a ValueError naming the scorings."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; use one of {', '.join(SCORINGS)}")
    return scoring


# ---- numbers -------------------------------------------------------------------------------


def _fractions(text: str) -> str:
    """Vulgar fractions (``½``, ``3¼``) as a marked fractional part, before NFKC splits them."""
    out = []
    for ch in text:
        if unicodedata.category(ch) == "No" and not ch.isdecimal():
            try:
                value = unicodedata.numeric(ch)
            except ValueError:
                out.append(ch)
                continue
            if 0 < value < 1:
                out.append(("" if out and out[-1][-1:].isdigit() else "0") + _FRACTION
                           + repr(value).split(".")[1])
                continue
        out.append(ch)
    return "".join(out)


def _ascii_digits(text: str, lang: str) -> str:
    """NFKC, then every Unicode decimal digit as its ASCII digit; unify minus and Arabic separators."""
    text = _fractions(text)
    for sep in _SPACE_SEPS:
        text = text.replace(sep, _GROUP_SPACE)
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u2212", "-").replace("\u066b", ".").replace("\u066c", ",")
    text = "".join(str(unicodedata.decimal(c)) if c.isdecimal() and not c.isascii() else c for c in text)
    if lang in SPACE_GROUP_LANGS:  # "1 234" with a plain space: one number
        text = _PLAIN_SPACE_GROUP.sub(lambda m: m.group(1) + m.group(2).replace(" ", _GROUP_SPACE), text)
    return text


def _is_grouped(parts: Sequence[str]) -> bool:
    return 1 <= len(parts[0]) <= 3 and all(len(p) == 3 for p in parts[1:])


def _interpret(run: str, lang: str) -> list[float]:
    """The number(s) a matched digit run denotes (see the module docstring)."""
    if _FRACTION in run:
        whole, frac = run.split(_FRACTION)
        values = _interpret(whole, lang)
        values[-1] = values[-1] + float("0." + frac)
        return values
    if run.startswith("."):
        return [float("0" + run)] if run.count(".") == 1 and "," not in run else _interpret(run[1:], lang)
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
    if sep == "," and lang in COMMA_DECIMAL_LANGS:
        return [float(parts[0] + "." + parts[1])]
    may_group = sep == "," or lang in DOT_GROUP_LANGS
    if may_group and _is_grouped(parts):
        return [float("".join(parts))]
    return [float(parts[0] + "." + parts[1])]


def extract_numbers(text: str, lang: str = "en") -> list[float]:
    """Every number in ``text``, in order, read with ``lang``'s separator conventions (mwork's
    multilingual reading, the module docstring)."""
    text = _ascii_digits(text, lang)
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


def last_number(text: str, lang: str = "en", *, scoring: str = DEFAULT_SCORING) -> float | None:
    """The model's answer number: official, the value of lm-eval's MGSM answer (its last
    number-like span); ``scoring="mwork"``, the last number of ``extract_numbers``. None when
    there is none."""
    if check_scoring(scoring) == "official":
        return official.last_number(text)
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


def mgsm_correct(output: str, gold: float, lang: str = "en", *, scoring: str = DEFAULT_SCORING) -> bool:
    """Whether an MGSM answer is right: official, lm-eval's exact match of its extracted answer;
    ``"mwork"``, numeric equality of ``last_number``."""
    if check_scoring(scoring) == "official":
        return official.mgsm_correct(output, gold)
    return numbers_equal(last_number(output, lang, scoring="mwork"), gold)


def format_number(x: float) -> str:
    """``18.0`` -> ``"18"``, ``2.5`` -> ``"2.5"``: how gold numbers appear in prompts and records."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


# ---- SQuAD-style F1 / exact match ----------------------------------------------------------


def _is_punct(c: str) -> bool:
    return c in string.punctuation or unicodedata.category(c).startswith("P")


def normalize_answer(text: str, lang: str, *, scoring: str = DEFAULT_SCORING) -> str:
    """The normalised answer. Official: SQuAD v1.1 / MLQA (``official_scoring.qa_normalize``).
    ``"mwork"``: NFKC, lowercase, delete punctuation (ASCII and every Unicode P* character), drop
    English articles (English only), collapse whitespace."""
    if check_scoring(scoring) == "official":
        return official.qa_normalize(text, lang)
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(c for c in text if not _is_punct(c))
    if lang == "en":
        text = _ENGLISH_ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str, lang: str, *, scoring: str = DEFAULT_SCORING) -> list[str]:
    """Tokens of a normalised answer. ``"mwork"``: characters for ``CHAR_LANGS``, whitespace
    words otherwise; official: the official script's tokens."""
    if check_scoring(scoring) == "official":
        return official.qa_tokens(text, lang)
    norm = normalize_answer(text, lang, scoring="mwork")
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


def qa_f1(prediction: str, golds: str | Iterable[str], lang: str, *, scoring: str = DEFAULT_SCORING) -> float:
    """Token-overlap F1, maximised over the gold answers."""
    golds = _golds(golds)
    if check_scoring(scoring) == "official":
        return official.qa_f1(prediction, golds, lang)
    pred = answer_tokens(prediction, lang, scoring="mwork")
    return max((_f1(pred, answer_tokens(g, lang, scoring="mwork")) for g in golds), default=0.0)


def qa_exact(prediction: str, golds: str | Iterable[str], lang: str, *, scoring: str = DEFAULT_SCORING) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0 (``"mwork"``:
    spaces ignored in ``CHAR_LANGS``)."""
    golds = _golds(golds)
    if check_scoring(scoring) == "official":
        return official.qa_exact(prediction, golds, lang)
    pred = answer_tokens(prediction, lang, scoring="mwork")
    return float(any(pred == answer_tokens(g, lang, scoring="mwork") for g in golds))


# ---- ROUGE-L ---------------------------------------------------------------------------------


def rouge_tokens(text: str, lang: str, *, scoring: str = DEFAULT_SCORING) -> list[str]:
    """ROUGE tokens. Official: the XL-Sum scorer's (``official_scoring.xlsum_tokens``).
    ``"mwork"``: NFKC, lowercase; punctuation splits words and is dropped; characters for
    ``CHAR_LANGS``, whitespace words otherwise (combining marks stay inside their word)."""
    if check_scoring(scoring) == "official":
        return official.xlsum_tokens(text, lang)
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


def rouge_l(prediction: str, reference: str, lang: str, *, scoring: str = DEFAULT_SCORING) -> dict[str, float]:
    """Sentence-level ROUGE-L (Lin, 2004) with beta = 1: precision, recall and F1 of the LCS.
    Official: rouge-score's, on the XL-Sum scorer's tokens."""
    if check_scoring(scoring) == "official":
        return official.rouge_l(prediction, reference, lang)
    pred, ref = rouge_tokens(prediction, lang, scoring="mwork"), rouge_tokens(reference, lang, scoring="mwork")
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    p, r = lcs / len(pred), lcs / len(ref)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r)}
