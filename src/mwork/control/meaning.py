"""What a generation says, measured against its item (:class:`~mwork.control.items.ParallelItem`).

* ``qa`` items: ``f1`` and ``exact``, XQuAD's official scorer (``mwork.tasks.metrics.qa_f1`` /
  ``qa_exact``, ``scoring="official"`` by default: SQuAD v1.1, MLQA's rules for zh ...) against
  the target-language gold answers, scored by the target language's rules; ``f1_source`` and
  ``exact_source`` against the source-language gold answers by the source language's rules,
  reported beside them (names and numbers survive translation). ``f1`` is the meaning measure.
* ``text`` items: ``chrf``, sacrebleu's chrF (``sacrebleu.metrics.CHRF`` with its defaults, the
  same as ``sacrebleu -m chrf`` on the command line: character 6-grams, no word n-grams,
  beta = 2, case kept, whitespace left out) of the output against the target-language reference,
  on sacrebleu's 0-100 scale; per item the sentence score (:func:`chrf`), for a whole set also
  the corpus score (:func:`corpus_chrf`, statistics summed over the sentences, which is not the
  mean of the sentence scores). ``chrf`` is the meaning measure.

The output is taken as given: cut it at the prompt's stop strings before
(``mwork.tasks.generation.cut_at_stop``). Fluency is measured elsewhere and enters the row as
numbers (:func:`mwork.control.score.score_row`): distinct-2 of each output's token ids
(``mwork.experiments.steering.metrics.distinct_n(ids, 2)``, the steering sweep's definition) and
the unsteered model's perplexity of the outputs.
"""

from __future__ import annotations

from typing import Sequence

from sacrebleu.metrics import CHRF

from mwork.control.items import ParallelItem
from mwork.tasks.metrics import DEFAULT_SCORING, check_scoring, qa_exact, qa_f1

#: kind of item -> the measure that is the meaning axis
PRIMARY_MEASURE: dict[str, str] = {"qa": "f1", "text": "chrf"}
#: kind of item -> every measure :func:`item_measures` gives
MEASURES: dict[str, tuple[str, ...]] = {"qa": ("f1", "exact", "f1_source", "exact_source"), "text": ("chrf",)}

_CHRF = CHRF()  # sacrebleu's defaults (its command line's): see the module docstring


def chrf(output: str, reference: str | Sequence[str]) -> float:
    """Sentence chrF (0-100) of ``output`` against one reference or several (sacrebleu's
    ``CHRF().sentence_score``, = ``sacrebleu.sentence_chrf``)."""
    refs = [reference] if isinstance(reference, str) else list(reference)
    return float(_CHRF.sentence_score(output, refs).score)


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


def item_measures(item: ParallelItem, output: str, *, scoring: str = DEFAULT_SCORING) -> dict[str, float]:
    """Every measure of ``output`` for ``item`` (:data:`MEASURES` of its kind; module docstring)."""
    if item.kind == "qa":
        check_scoring(scoring)
        return {"f1": qa_f1(output, item.references, item.target, scoring=scoring),
                "exact": qa_exact(output, item.references, item.target, scoring=scoring),
                "f1_source": qa_f1(output, item.source_references, item.source, scoring=scoring),
                "exact_source": qa_exact(output, item.source_references, item.source, scoring=scoring)}
    if item.kind == "text":
        return {"chrf": chrf(output, item.references)}
    raise ValueError(f"item {item.id!r} has an unknown kind {item.kind!r}")
