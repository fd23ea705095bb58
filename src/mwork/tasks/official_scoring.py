"""The published scoring rules of our tasks, reproduced exactly (``scoring="official"``, the default
of ``mwork.tasks.metrics``), so that mwork's numbers can be compared with published ones.

XQuAD (``qa_tokens``, ``qa_normalize``):

* space-separated languages: the SQuAD v1.1 evaluation script (``evaluate-v1.1.py``), which the
  XQuAD authors prescribe for every language: lowercase, delete ASCII punctuation
  (``string.punctuation`` only), delete the English articles a / an / the, split on whitespace.
  F1 is 0 when nothing is shared, also when both answers normalise to nothing (``"the"``).
* zh: the MLQA evaluation script (``mlqa_evaluation_v1.py``): lowercase, delete every Unicode
  punctuation character (``P*``) and ASCII punctuation, then *mixed segmentation*: each CJK
  character (U+4E00-U+9FA5) and punctuation mark is a token, runs of anything else (digits,
  Latin letters) are split on whitespace, so ``1999年`` is ``1999 年``.
* ja, th (no published XQuAD rule; MLQA has neither language): MLQA's normalisation and F1 with
  the segmentation of the MKQA evaluation (apple/ml-mkqa, the published QA script that scores
  ja and th), in which every non-space character is a token.

MGSM (``mgsm_answer``, ``mgsm_correct``, ``answer_value``): lm-eval's ``mgsm`` extraction
("flexible-extract": the last match of ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, ``[invalid]`` when there is
none) and its ``exact_match`` with ``ignore_case`` and ``ignore_punctuation`` against the gold
number written as an integer when it is one. The *value* of the extracted answer (what
``last_number`` returns): ``$`` and ``,`` dropped (``,`` is a thousands separator, as lm-eval's
punctuation stripping and OpenAI's simple-evals read it, in every language: German ``1,500`` is
1500), ``.`` the decimal point (``.5`` is 0.5), trailing dots dropped, several dots read as
thousands separators; no ASCII digit (``½``, ``１８``) means no answer, as in lm-eval.

XLSum (``XLSumTokenizer``, ``rouge_l``): ROUGE-L of the ``rouge-score`` package with the
language handling of the XL-Sum authors' multilingual scorer (csebuetnlp/xl-sum,
``multilingual_rouge_scoring``): lowercase; control characters dropped; text split at every
punctuation mark (Unicode ``P*`` and every ASCII non-alphanumeric), which is dropped; then their
fallback segmentation (OpenNMT's "aggressive" mode: runs of letters with their combining marks,
runs of decimal digits, every other character alone, so ``€20`` is ``€ 20`` and ``50°c`` is
``50 ° c``; CJK ideographs one per token). zh, ja and th are scored on characters: the authors
segment them with jieba / MeCab / PyThaiNLP, which mwork does not install, so those three are not
comparable with their published numbers. No stemming (lm-eval's XLSum tasks do not stem either;
they call ``evaluate``'s ``rouge`` with rouge-score's default tokenizer, which deletes every
non-ASCII letter, so their non-Latin ROUGE is meaningless).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Sequence

MIXED_SEGMENTATION_LANGS: frozenset[str] = frozenset({"zh"})  # MLQA
CHARACTER_LANGS: frozenset[str] = frozenset({"ja", "th"})  # MKQA's segmentation, MLQA's normalisation
ROUGE_CHARACTER_LANGS: frozenset[str] = frozenset({"zh", "ja", "th"})

_ASCII_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CJK = re.compile(r"[\u4e00-\u9fa5]")


# ---- XQuAD: SQuAD v1.1, MLQA ------------------------------------------------------------------


def mlqa_punct(ch: str) -> bool:
    """MLQA's PUNCT set: every Unicode punctuation character and ASCII punctuation."""
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def squad_normalize(text: str) -> str:
    """SQuAD v1.1 ``normalize_answer``: lower, ASCII punctuation out, articles out, whitespace fixed."""
    text = "".join(ch for ch in text.lower() if ch not in _ASCII_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def mixed_segmentation(text: str) -> list[str]:
    """MLQA's segmentation: CJK characters and punctuation one per token, other runs split on spaces."""
    out: list[str] = []
    run = ""
    for ch in text:
        if _CJK.search(ch) or mlqa_punct(ch):
            if run:
                out.extend(run.split())
                run = ""
            out.append(ch)
        else:
            run += ch
    if run:
        out.extend(run.split())
    return out


def qa_normalize(text: str, lang: str) -> str:
    """The normalised answer the official script compares (tokens joined by single spaces)."""
    if lang not in MIXED_SEGMENTATION_LANGS and lang not in CHARACTER_LANGS:
        return squad_normalize(text)
    text = "".join(ch for ch in text.lower() if not mlqa_punct(ch))  # no articles in zh / ja / th
    tokens = mixed_segmentation(text) if lang in MIXED_SEGMENTATION_LANGS else list(text)
    return " ".join(t for t in tokens if t.strip())


def qa_tokens(text: str, lang: str) -> list[str]:
    return qa_normalize(text, lang).split()


def token_f1(pred: Sequence[str], gold: Sequence[str]) -> float:
    """SQuAD v1.1 / MLQA F1: 0 when nothing is shared (both empty included)."""
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, golds: Sequence[str], lang: str) -> float:
    pred = qa_tokens(prediction, lang)
    return max((token_f1(pred, qa_tokens(g, lang)) for g in golds), default=0.0)


def qa_exact(prediction: str, golds: Sequence[str], lang: str) -> float:
    pred = qa_normalize(prediction, lang)
    return float(any(pred == qa_normalize(g, lang) for g in golds))


# ---- MGSM: lm-eval's extraction and exact match ----------------------------------------------

MGSM_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
MGSM_FALLBACK = "[invalid]"
_STRIP_PUNCT = str.maketrans("", "", string.punctuation)


def mgsm_answer(text: str) -> str:
    """lm-eval's flexible-extract answer: the last match (first non-empty group), stripped."""
    matches = MGSM_PATTERN.findall(text)
    if not matches:
        return MGSM_FALLBACK
    groups = [g for g in matches[-1] if g]
    return groups[0].strip() if groups else MGSM_FALLBACK


def gold_string(gold: float) -> str:
    """The gold number as lm-eval's ``answer_number|string`` writes it (``18``, ``2.5``)."""
    return str(int(gold)) if float(gold).is_integer() else repr(float(gold))


def mgsm_correct(text: str, gold: float) -> bool:
    """lm-eval's ``exact_match`` (ignore_case, ignore_punctuation) of the extracted answer."""
    pred = mgsm_answer(text).lower().translate(_STRIP_PUNCT)
    return pred == gold_string(gold).lower().translate(_STRIP_PUNCT)


def answer_value(span: str) -> float | None:
    """The number an extracted answer denotes (module docstring), or None."""
    if span == MGSM_FALLBACK:
        return None
    body = span.replace("$", "").replace(",", "")
    negative = body.startswith("-")
    body = body.lstrip("-").rstrip(".")
    if body.count(".") > 1:
        body = body.replace(".", "")
    if not any(c.isdigit() for c in body):
        return None
    value = float(body)
    return -value if negative else value


def last_number(text: str) -> float | None:
    return answer_value(mgsm_answer(text))


# ---- XLSum: the XL-Sum authors' tokenisation for rouge-score ---------------------------------


def _xlsum_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def sanitize(text: str) -> list[str]:
    """The XL-Sum scorer's ``BasicTokenizer``: control characters out, whitespace unified, words
    split at punctuation, which is dropped."""
    cleaned = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD:
            continue
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            cleaned.append(" ")
        elif unicodedata.category(ch).startswith("C"):
            continue
        else:
            cleaned.append(ch)
    pieces: list[str] = []
    for word in "".join(cleaned).split():
        current = ""
        for ch in word:
            if _xlsum_punct(ch):
                if current:
                    pieces.append(current)
                current = ""
            else:
                current += ch
        if current:
            pieces.append(current)
    return pieces


def aggressive_split(word: str) -> list[str]:
    """OpenNMT's "aggressive" pre-tokenisation of one word: letter runs (with their combining
    marks), decimal-digit runs, every other character alone."""
    out: list[str] = []
    kind = None
    for ch in word:
        cat = unicodedata.category(ch)
        if cat.startswith("M") and kind == "L":
            out[-1] += ch
            continue
        new = "L" if cat.startswith("L") else "N" if cat == "Nd" else None
        if new is not None and new == kind:
            out[-1] += ch
        else:
            out.append(ch)
        kind = new
    return out


def xlsum_tokens(text: str, lang: str) -> list[str]:
    """The tokens ROUGE compares (module docstring)."""
    words = sanitize(text.lower())
    if lang in ROUGE_CHARACTER_LANGS:
        return [ch for w in words for ch in w]
    tokens: list[str] = []
    for word in words:
        for piece in aggressive_split(word):
            run = ""
            for ch in piece:
                if _is_cjk(ord(ch)):
                    if run:
                        tokens.append(run)
                        run = ""
                    tokens.append(ch)
                else:
                    run += ch
            if run:
                tokens.append(run)
    return tokens


class XLSumTokenizer:
    """A ``rouge_score`` tokenizer (an object with ``tokenize``) for language ``lang``."""

    def __init__(self, lang: str):
        self.lang = lang

    def tokenize(self, text: str) -> list[str]:
        return xlsum_tokens(text, self.lang)


_SCORERS: dict[str, object] = {}


def rouge_l(prediction: str, reference: str, lang: str) -> dict[str, float]:
    """rouge-score's ROUGE-L (precision, recall, F1) on the XL-Sum tokens of ``lang``."""
    if lang not in _SCORERS:
        from rouge_score import rouge_scorer

        _SCORERS[lang] = rouge_scorer.RougeScorer(["rougeL"], tokenizer=XLSumTokenizer(lang))
    score = _SCORERS[lang].score(reference, prediction)["rougeL"]  # type: ignore[attr-defined]
    return {"precision": float(score.precision), "recall": float(score.recall), "f1": float(score.fmeasure)}
