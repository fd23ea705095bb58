"""Parallel items for the control experiment: for a (source, target) language pair, what the
model reads in the source language and what it should say in the target language.

Three item sets, each read through the task loaders (``get_task("xquad")`` / ``get_task("mgsm")``,
so the data come from where every task's data come from: a local file or folder, ``$MWORK_DATA``,
else the hub; see :mod:`mwork.data_sources`):

* ``xquad-qa`` (kind ``qa``): an XQuAD question. Input: the paragraph and the question in the
  source language (``fields["context"]``, ``fields["question"]``). References: the gold answers in
  the target language (``references``) and in the source language (``source_references``: names
  and numbers survive translation, so an answer left in the source language can still be right).
* ``xquad-text`` (kind ``text``): the first sentence of an XQuAD paragraph
  (:func:`first_sentence`) in the source language (``fields["text"]``); the reference is the
  first sentence of the same paragraph in the target language (``source_references``: the
  source sentence itself). Translators sometimes split or merge sentences, so a pair of first
  sentences is kept only when each is about the same share of its paragraph (characters; the two
  shares differ by at most ``max_share_gap``, default :data:`MAX_SHARE_GAP`): on the 48 test
  paragraphs this drops the few pairs where one side's first sentence is half of the other's.
  Thai writes no sentence marks (:data:`NO_SENTENCE_MARKS`): refused.
* ``mgsm-text`` (kind ``text``): an MGSM problem in the source language, the same problem in the
  target language as the reference.

Pairing: XQuAD question ids are the same in every language; MGSM problems are parallel by line
(the task's ids ``mgsm-<lang>-<line>``). An item's ``id`` carries no language, so it is the same
item for every pair: ``xquad:<question id>``, ``xquad-text:<id of the paragraph's first
question>``, ``mgsm:<line>``. XQuAD items of one paragraph share a ``group``
(``xquad-paragraph:<id of its first question>``); the dev/test split (:mod:`mwork.control.split`)
hashes the group, so the questions of one paragraph and its sentence are never split between
dev and test. An MGSM item's group is its id. (The line numbers of an MGSM subset restart, see
tests/data/README.md, so a subset's ``mgsm:`` ids are not the full set's; XQuAD ids are.)

XQuAD items come from the evaluation articles 24-47 by default (``articles``), never from the
articles 0-23 that detection and language vectors read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from mwork.data_sources import XQUAD_LANGS
from mwork.tasks.mgsm import MGSM_LANGS
from mwork.tasks.registry import get_task
from mwork.texts import EVALUATION_ARTICLES

#: item set name -> kind of item (which meaning measure applies, :mod:`mwork.control.meaning`)
ITEM_SETS: dict[str, str] = {"xquad-qa": "qa", "xquad-text": "text", "mgsm-text": "text"}
KINDS: tuple[str, ...] = ("qa", "text")
#: languages with no sentence marks: no first sentence (``xquad-text`` refuses them)
NO_SENTENCE_MARKS: frozenset[str] = frozenset({"th"})
#: the most the shares of the two first sentences in their paragraphs may differ (``xquad-text``)
MAX_SHARE_GAP = 0.15

_MARKS = ".!?\u061f\u0964"  # . ! ? and the Arabic question mark, the Devanagari danda
_WIDE_MARKS = "\u3002\uff01\uff1f"  # 。！？ : end a sentence with or without a space after
_CLOSERS = "\"'\u201d\u2019\u00bb\u300d\u300f)]\uff09"  # closing quotes and brackets after a mark


@dataclass(frozen=True)
class ParallelItem:
    """One item of a (source, target) pair.

    ``fields``: the source-language input (``context`` and ``question`` for ``qa``, ``text`` for
    ``text``); ``references``: the target-language reference(s) (gold answers, or the parallel
    sentence / problem); ``source_references``: the same in the source language; ``group``: the
    split key (module docstring); ``meta``: where it came from (article, paragraph, line, answer)."""

    id: str
    item_set: str
    kind: str
    group: str
    source: str
    target: str
    fields: dict[str, str]
    references: tuple[str, ...]
    source_references: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "item_set": self.item_set, "kind": self.kind, "group": self.group,
                "source": self.source, "target": self.target, "fields": dict(self.fields),
                "references": list(self.references), "source_references": list(self.source_references),
                "meta": dict(self.meta)}


def item_languages(item_set: str) -> tuple[str, ...]:
    """The languages an item set has (as far as its data set reaches)."""
    _check_set(item_set)
    if item_set == "mgsm-text":
        return MGSM_LANGS
    if item_set == "xquad-text":
        return tuple(lang for lang in XQUAD_LANGS if lang not in NO_SENTENCE_MARKS)
    return XQUAD_LANGS


def load_items(item_set: str, source: str, target: str, data: str | Path | None = None, **options: Any
               ) -> list[ParallelItem]:
    """The items of ``item_set`` (:data:`ITEM_SETS`) for ``source`` -> ``target``, in the source
    data's order. ``data``: a local file or folder, ``"hub"``, or None (``$MWORK_DATA``, else the
    hub). ``options``: ``articles`` (XQuAD), ``max_share_gap`` (``xquad-text``)."""
    _check_set(item_set)
    loader = {"xquad-qa": parallel_qa, "xquad-text": parallel_xquad_text, "mgsm-text": parallel_mgsm_text}[item_set]
    return loader(source, target, data, **options)


def _check_set(item_set: str) -> None:
    if item_set not in ITEM_SETS:
        raise ValueError(f"unknown item set {item_set!r}; use one of {', '.join(ITEM_SETS)}")


def _xquad_examples(lang: str, data: str | Path | None, articles: Iterable[int] | tuple[int, int] | None) -> list:
    return get_task("xquad").load(lang, data, articles=articles)


def _paired(source_examples: Sequence[Any], target_examples: Sequence[Any], key: Any) -> list[tuple[Any, Any]]:
    """(source, target) examples with the same key, in the source's order."""
    by_key = {key(e): e for e in target_examples}
    return [(e, by_key[key(e)]) for e in source_examples if key(e) in by_key]


def parallel_qa(source: str, target: str, data: str | Path | None = None, *,
                articles: Iterable[int] | tuple[int, int] | None = EVALUATION_ARTICLES) -> list[ParallelItem]:
    """``xquad-qa`` items (module docstring): every question of the chosen articles that both
    languages have."""
    src = _xquad_examples(source, data, articles)
    tgt = src if target == source else _xquad_examples(target, data, articles)
    first_question = _first_questions(src)
    items = []
    for s, t in _paired(src, tgt, key=lambda e: e.id):
        group = f"xquad-paragraph:{first_question[s.meta['paragraph']]}"
        items.append(ParallelItem(
            id=f"xquad:{s.id}", item_set="xquad-qa", kind="qa", group=group, source=source, target=target,
            fields={"context": s.fields["context"], "question": s.fields["question"]},
            references=tuple(t.target), source_references=tuple(s.target),
            meta={"article": s.meta["article"], "paragraph": s.meta["paragraph"]}))
    return items


def _first_questions(examples: Sequence[Any]) -> dict[int, str]:
    """paragraph number -> the id of its first question."""
    first: dict[int, str] = {}
    for e in examples:
        first.setdefault(e.meta["paragraph"], e.id)
    return first


def _paragraphs(examples: Sequence[Any]) -> list[tuple[str, Any]]:
    """(id of the first question, that question's example) per paragraph, in order."""
    first = _first_questions(examples)
    return [(e.id, e) for e in examples if first[e.meta["paragraph"]] == e.id]


def parallel_xquad_text(source: str, target: str, data: str | Path | None = None, *,
                        articles: Iterable[int] | tuple[int, int] | None = EVALUATION_ARTICLES,
                        max_share_gap: float | None = MAX_SHARE_GAP) -> list[ParallelItem]:
    """``xquad-text`` items (module docstring): per paragraph of the chosen articles, its first
    sentence; pairs whose first sentences are unequal shares of their paragraphs (by more than
    ``max_share_gap``; None keeps every pair) are left out."""
    for lang in (source, target):
        if lang in NO_SENTENCE_MARKS:
            raise ValueError(f"{lang!r} writes no sentence marks: XQuAD has no first sentence in it "
                             "(use the item set mgsm-text where MGSM has the language)")
    src = _paragraphs(_xquad_examples(source, data, articles))
    tgt = src if target == source else _paragraphs(_xquad_examples(target, data, articles))
    items = []
    for (qid, s), (_, t) in _paired(src, tgt, key=lambda p: p[0]):
        s_text, t_text = s.fields["context"].strip(), t.fields["context"].strip()
        s_first, t_first = first_sentence(s_text), first_sentence(t_text)
        s_share, t_share = len(s_first) / len(s_text), len(t_first) / len(t_text)
        if max_share_gap is not None and abs(s_share - t_share) > max_share_gap:
            continue
        items.append(ParallelItem(
            id=f"xquad-text:{qid}", item_set="xquad-text", kind="text", group=f"xquad-paragraph:{qid}",
            source=source, target=target, fields={"text": s_first}, references=(t_first,),
            source_references=(s_first,),
            meta={"article": s.meta["article"], "paragraph": s.meta["paragraph"],
                  "source_share": round(s_share, 4), "target_share": round(t_share, 4)}))
    return items


def parallel_mgsm_text(source: str, target: str, data: str | Path | None = None) -> list[ParallelItem]:
    """``mgsm-text`` items (module docstring): every problem both languages have, paired by line."""
    task = get_task("mgsm")
    src = task.load(source, data)
    tgt = src if target == source else task.load(target, data)
    line = _mgsm_line
    items = []
    for s, t in _paired(src, tgt, key=line):
        items.append(ParallelItem(
            id=f"mgsm:{line(s)}", item_set="mgsm-text", kind="text", group=f"mgsm:{line(s)}",
            source=source, target=target, fields={"text": s.fields["question"]},
            references=(t.fields["question"],), source_references=(s.fields["question"],),
            meta={"line": int(line(s)), "answer": s.target, "target_answer": t.target}))
    return items


def _mgsm_line(example: Any) -> str:
    """The line part of an MGSM id (``mgsm-en-0007`` -> ``0007``; the hub's train split keeps its
    ``train-`` prefix so that it never pairs with a test problem)."""
    prefix = f"mgsm-{example.lang}-"
    if not example.id.startswith(prefix):
        raise ValueError(f"unexpected MGSM id {example.id!r} (expected {prefix}<line>)")
    return example.id[len(prefix):]


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (stripped), by one rule for every language: it ends at a
    full-width mark (``。！？``), or at ``. ! ? ؟ ।`` followed by a space and then anything but
    a lower-case letter, except a ``.`` after a lone letter that is not lower-case (an initial:
    ``William E. Simon``, ``فريديريك و.``); closing quotes and brackets after the mark belong to the sentence. A text with no
    such end is one sentence."""
    text = text.strip()
    n = len(text)
    for i, ch in enumerate(text):
        if ch not in _MARKS and ch not in _WIDE_MARKS:
            continue
        end = i + 1
        while end < n and text[end] in _CLOSERS:
            end += 1
        if ch in _WIDE_MARKS or end == n:
            return text[:end].strip()
        if not text[end].isspace():
            continue
        nxt = end
        while nxt < n and text[nxt].isspace():
            nxt += 1
        if nxt == n:
            return text[:end].strip()
        if text[nxt].islower():
            continue
        before = text[i - 1:i]
        if ch == "." and before.isalpha() and not before.islower() and (i < 2 or not text[i - 2].isalpha()):
            continue  # an initial: a lone capital (or a lone letter of a script without case)
        return text[:end].strip()
    return text
