"""What a generation says, measured against its item (:class:`~mwork.control.items.ParallelItem`).

The meaning measure (:data:`PRIMARY_MEASURE`) asks whether the content is there *in either
language*, so that it is independent of forcing (which asks only for the language): the unsteered
model answers in the source language, a lever should answer in the target's, and a measure against
the target language alone would credit any output in the target language with meaning the
unsteered model "lacked" (its chrF against a sentence of another language is near 0), which made
the relative meaning 1 for nearly every output that changed language.

* ``qa`` items: ``f1`` and ``exact``, XQuAD's official scorer (``mwork.tasks.metrics.qa_f1`` /
  ``qa_exact``, ``scoring="official"`` by default: SQuAD v1.1, MLQA's rules for zh ...) against
  the target-language gold answers, scored by the target language's rules; ``f1_source`` and
  ``exact_source`` against the source-language gold answers by the source language's rules
  (names and numbers survive translation). The meaning measure is ``f1_any``, the larger of
  ``f1`` and ``f1_source``: the answer is right in one of the two languages.
* ``text`` items: ``chrf`` and ``chrf_source``, sacrebleu's chrF (``sacrebleu.metrics.CHRF`` with
  its defaults, the same as ``sacrebleu -m chrf`` on the command line: character 6-grams, no word
  n-grams, beta = 2, case kept, whitespace left out) of the output against the target-language
  and the source-language sentence, on sacrebleu's 0-100 scale; per item the sentence score
  (:func:`chrf`), for a whole set also the corpus score (:func:`corpus_chrf`, statistics summed
  over the sentences, which is not the mean of the sentence scores). chrF rewards any text of the
  reference's language a little (common character n-grams), so the meaning measure is ``match``,
  which cancels that: 1 when, among the sentences of a :class:`ReferencePool` (the item set's
  items of the pair) in the target language or in the source language, the output is closer by
  chrF to its own item's sentence than to every other item's (a tie is no match), else 0
  (``match_target`` and ``match_source``: each language alone). A restatement or a translation of
  the sentence matches; fluent text of the right language about something else does not (chance:
  about 2 / pool size).

The output is taken as given: cut it at the prompt's stop strings before
(``mwork.tasks.generation.cut_at_stop``). Fluency is measured elsewhere and enters the row as
numbers (:func:`mwork.control.score.score_row`): distinct-2 of each output's token ids
(``mwork.experiments.steering.metrics.distinct_n(ids, 2)``, the steering sweep's definition) and
the unsteered model's perplexity of the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from sacrebleu.metrics import CHRF

from mwork.control.items import ParallelItem
from mwork.tasks.metrics import DEFAULT_SCORING, check_scoring, qa_exact, qa_f1

#: kind of item -> the measure that is the meaning axis
PRIMARY_MEASURE: dict[str, str] = {"qa": "f1_any", "text": "match"}
#: kind of item -> every measure :func:`item_measures` gives
MEASURES: dict[str, tuple[str, ...]] = {
    "qa": ("f1_any", "f1", "exact", "f1_source", "exact_source"),
    "text": ("match", "match_target", "match_source", "chrf", "chrf_source")}
#: the most items a :class:`ReferencePool` of the experiment holds (each output is compared with
#: every one of them, twice)
POOL_SIZE = 100

_CHRF = CHRF()  # sacrebleu's defaults (its command line's): see the module docstring


def chrf(output: str, reference: str | Sequence[str]) -> float:
    """Sentence chrF (0-100) of ``output`` against one reference or several (sacrebleu's
    ``CHRF().sentence_score``, = ``sacrebleu.sentence_chrf``)."""
    refs = (reference,) if isinstance(reference, str) else tuple(reference)
    return _sentence_chrf(output, refs)


@lru_cache(maxsize=1 << 18)
def _sentence_chrf(output: str, refs: tuple[str, ...]) -> float:
    """Memoised: every output is compared with a whole pool, and the unsteered outputs with it
    once per row that they are the reference of."""
    return float(_CHRF.sentence_score(output, list(refs)).score)


@dataclass(frozen=True)
class ReferencePool:
    """The sentences an output's own item competes with for ``match``: per item (``ids``) its
    source- and target-language sentence."""

    ids: tuple[str, ...]
    source: tuple[str, ...]
    target: tuple[str, ...]

    @classmethod
    def of(cls, items: Sequence[ParallelItem]) -> "ReferencePool":
        """The pool of ``items`` (text items of one pair; repeated ids kept once)."""
        seen: dict[str, ParallelItem] = {}
        for item in items:
            if item.kind != "text":
                raise ValueError(f"a reference pool holds text items; {item.id!r} is {item.kind!r}")
            seen.setdefault(item.id, item)
        kept = list(seen.values())
        return cls(tuple(i.id for i in kept), tuple(i.source_references[0] for i in kept),
                   tuple(i.references[0] for i in kept))

    def matches(self, output: str, item_id: str, side: str) -> bool:
        """Whether ``output`` is closer by chrF to item ``item_id``'s sentence in ``side``
        (``source`` or ``target``) than to every other item's."""
        if item_id not in self.ids:
            raise ValueError(f"item {item_id!r} is not in the reference pool")
        if len(self.ids) < 2:
            raise ValueError("a reference pool needs at least two items (the item and one other)")
        sentences = self.source if side == "source" else self.target
        own = self.ids.index(item_id)
        scores = [chrf(output, s) for s in sentences]
        return all(scores[own] > score for j, score in enumerate(scores) if j != own)


def corpus_chrf(outputs: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0-100) of ``outputs`` against one reference each (sacrebleu's
    ``CHRF().corpus_score``, = ``sacrebleu.corpus_chrf``, = ``sacrebleu -m chrf``)."""
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs but {len(references)} references")
    return float(_CHRF.corpus_score(list(outputs), [list(references)]).score)


def chrf_signature(n_refs: int = 1) -> str:
    """sacrebleu's signature of the chrF used here (``nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:...``)."""
    metric = CHRF()
    metric.corpus_score(["a"], [["a"]] * n_refs)
    return metric.get_signature().format()


def item_measures(item: ParallelItem, output: str, *, scoring: str = DEFAULT_SCORING,
                  pool: ReferencePool | None = None) -> dict[str, float]:
    """Every measure of ``output`` for ``item`` (:data:`MEASURES` of its kind; module docstring);
    a text item's ``match`` needs the ``pool`` its item is in."""
    if item.kind == "qa":
        check_scoring(scoring)
        f1 = qa_f1(output, item.references, item.target, scoring=scoring)
        f1_source = qa_f1(output, item.source_references, item.source, scoring=scoring)
        return {"f1_any": max(f1, f1_source), "f1": f1,
                "exact": qa_exact(output, item.references, item.target, scoring=scoring),
                "f1_source": f1_source,
                "exact_source": qa_exact(output, item.source_references, item.source, scoring=scoring)}
    if item.kind == "text":
        if pool is None:
            raise ValueError(f"text item {item.id!r}: its match needs the reference pool of its item set")
        target, source = pool.matches(output, item.id, "target"), pool.matches(output, item.id, "source")
        return {"match": float(target or source), "match_target": float(target), "match_source": float(source),
                "chrf": chrf(output, item.references), "chrf_source": chrf(output, item.source_references)}
    raise ValueError(f"item {item.id!r} has an unknown kind {item.kind!r}")
