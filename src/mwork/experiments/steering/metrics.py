"""What one steered generation, and a set of them, is worth: did the language change, by how much
below the top-1, and what was lost.

Per generation (:func:`item_metrics`), from its generated token ids and text:

* ``detected_language``: the sentence-level identifier's label of the text (``mwork.sentence_langid``);
* ``token_target_share``: of the generated tokens with a language label (token-level ID,
  ``mwork.lens.langid``; unknown tokens such as punctuation and sub-word pieces left out), the share
  labelled as the target (None when no token has a label);
* ``distinct_1`` / ``distinct_2``: distinct token uni- / bigrams over all of them (None for too
  few tokens): low values are repetition;
* ``f1``: XQuAD F1 (``mwork.tasks.metrics.qa_f1``) of the answer (the text cut at the prompt's
  stop strings) against the target language's gold answers, when the prompt has them;
* the next-token measures of ``generation`` and the unsteered model's ``nll`` / ``scored``.

Per row of ``steer.csv`` (:func:`aggregate`): ``target_rate`` (share of generations detected as
the target), ``token_target_share`` (pooled over tokens), ``target_prob_mass`` (mean over
generations of the mass at the first generated position), ``target_prob_mass_mean`` (mean of
each generation's mean over positions), ``target_rank`` (median rank of the best target token at
the first position), ``target_lang_rank`` (mean rank of the target among languages at the first
position), ``damage_ppl`` (exp of the unsteered model's token-weighted mean NLL of the generated
tokens given the prompt), ``distinct_1`` / ``distinct_2`` (means), ``f1`` (mean over prompts
with gold answers), ``empty`` (generations with no text), ``nonfinite`` (generations that met
non-finite logits, ``mwork.numerics``: when it is above 0 the row's measures are left empty).
"""

from __future__ import annotations

import math
import statistics as pystats
from typing import Any, Sequence

from mwork.lens.langid import UNKNOWN
from mwork.tasks.generation import cut_at_stop
from mwork.tasks.metrics import qa_f1

METRIC_COLUMNS: tuple[str, ...] = (
    "target_rate", "target_prob_mass", "damage_ppl", "target_prob_mass_mean", "target_rank", "target_lang_rank",
    "token_target_share", "distinct_1", "distinct_2", "f1", "n_f1", "empty", "nonfinite",
)


def distinct_n(ids: Sequence[int], n: int) -> float | None:
    """Distinct n-grams over all n-grams of ``ids`` (None when there is no n-gram)."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def item_metrics(gen: dict[str, Any], prompt: Any, target: str, vocab: Any, identifier: Any) -> dict[str, Any]:
    """The per-generation measures (module docstring) of ``gen`` (from ``generate_measured``)."""
    ids = list(gen["ids"])
    text = gen["text"]
    label, score = identifier.scored(text) if hasattr(identifier, "scored") else (identifier.label(text), None)
    labels = [vocab.names[int(vocab.index[t])] if t < len(vocab.index) else UNKNOWN for t in ids]
    known = [x for x in labels if x != UNKNOWN]
    f1 = None
    if prompt.answers:
        f1 = qa_f1(cut_at_stop(text, prompt.stop), list(prompt.answers), target)
    return {"detected_language": label, "lid_score": score,
            "token_target_share": (sum(x == target for x in known) / len(known)) if known else None,
            "labelled_tokens": len(known), "distinct_1": distinct_n(ids, 1), "distinct_2": distinct_n(ids, 2),
            "f1": f1, "generated_tokens": len(ids)}


def _mean(values: Sequence[float | None]) -> float | None:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(v) / len(v) if v else None


def is_nonfinite(item: dict[str, Any]) -> bool:
    """Whether a generation met non-finite logits (``mwork.numerics``): steered (no measures) or
    when the unsteered model scored it (no NLL)."""
    nll = item.get("nll")
    return bool(item.get("nonfinite")) or item.get("rank_first") is None or nll is None or not math.isfinite(nll)


def aggregate(items: Sequence[dict[str, Any]], target: str) -> dict[str, Any]:
    """One ``steer.csv`` row's measures from its generations' records (module docstring). A row
    with any generation that met non-finite logits is not measured: its measures are None (empty
    cells) and ``nonfinite`` counts those generations -- text generated from NaN logits is no
    result, and averaging over the rest would hide the overflow."""
    n = len(items)
    if n == 0:
        raise ValueError("no generations to aggregate")
    bad = sum(is_nonfinite(it) for it in items)
    if bad:
        return {"n": n, **{c: None for c in METRIC_COLUMNS}, "n_f1": 0, "nonfinite": bad}
    nll = sum(it["nll"] for it in items)
    scored = sum(it["scored"] for it in items)
    labelled = sum(it["labelled_tokens"] for it in items)
    target_tokens = sum(round((it["token_target_share"] or 0.0) * it["labelled_tokens"]) for it in items)
    f1s = [it["f1"] for it in items if it["f1"] is not None]
    return {
        "n": n,
        "target_rate": sum(it["detected_language"] == target for it in items) / n,
        "target_prob_mass": _mean([it["mass_first"] for it in items]),
        "damage_ppl": math.exp(nll / scored) if scored else None,
        "target_prob_mass_mean": _mean([it["mass_mean"] for it in items]),
        "target_rank": pystats.median([it["rank_first"] for it in items]),
        "target_lang_rank": _mean([it["lang_rank_first"] for it in items]),
        "token_target_share": target_tokens / labelled if labelled else None,
        "distinct_1": _mean([it["distinct_1"] for it in items]),
        "distinct_2": _mean([it["distinct_2"] for it in items]),
        "f1": _mean(f1s),
        "n_f1": len(f1s),
        "empty": sum(not it["text"].strip() for it in items),
        "nonfinite": 0,
    }
