"""From the measured cells and the drawn sets to the comparison's tables.

Every number of selectivity is a ln(ppl ratio): ln(ppl with the set switched off (or
mean-patched) / ppl of the unmodified model) on one language's held-out texts (nats per token;
0: no effect, > 0: worse). For a method, size and language l (whose set is used):

* ``own``: on l's texts; ``others``: the mean over the other languages' texts;
* ``random``: the mean over the seeds of random sets with the same count per layer and kind as
  l's set, on l's texts (``random_std``: their sample standard deviation, empty for one seed);
* ``selectivity = own - others`` (how much more the set hurts its own language than the others)
  and ``own_minus_random = own - random`` (how much more than random neurons of the same layers
  and kinds).

Stability: the Jaccard overlap of the sets detected on the even and on the odd documents of
each corpus, beside ``chance``, the Jaccard that two random sets with those counts per layer
and kind would have in expectation (E|A and B| / E|A or B|). Agreement: the Jaccard between two
methods' sets of one language and size, over all layers and per layer (empty where neither
set has a neuron in the layer).

Unit kinds (``--units``): every row names its arm's kind in ``units`` (``neurons``, or
``sae:DIR``); the runner leaves the column out when only neurons are compared, so those files
are as before. Agreement compares methods on the same kind only.
"""

from __future__ import annotations

import math
import statistics
from itertools import combinations
from typing import Any, Mapping, Sequence

from dataclasses import dataclass

from mwork.experiments.kernel import CellKey
from mwork.experiments.methods.units import NEURONS, Arm, feature_chance_jaccard, kinds_text, overlap
from mwork.neurons.neuronset import NeuronSet

ORIGINAL = "original"


@dataclass(frozen=True)
class MethodsKey(CellKey):
    """What one comparison cell measures: ``eval_lang``'s held-out perplexity with the ``variant``
    (``set`` or ``random<seed>``) of ``neurons_of``'s ``size`` set by ``method`` on ``units``
    (``neurons`` or ``sae:DIR``) switched off by ``intervention`` (``zero`` or ``mean``); the
    unmodified model's cells have only ``eval_lang``. A key of neurons is written without
    ``units`` (as before unit kinds were compared), so older folders stay resumable."""

    intervention: str | None
    method: str | None
    size: str | None
    variant: str
    neurons_of: str | None
    eval_lang: str
    units: str = NEURONS

    def to_json(self) -> dict[str, Any]:
        value = super().to_json()
        if value["units"] == NEURONS:
            del value["units"]
        return value

    @classmethod
    def from_json(cls, value: Any) -> "MethodsKey":
        if isinstance(value, dict) and "units" not in value:
            value = {**value, "units": NEURONS}
        key = super().from_json(value)
        assert isinstance(key, MethodsKey)
        return key

    @classmethod
    def original(cls, lang: str) -> "MethodsKey":
        return cls(None, None, None, ORIGINAL, None, lang)

    @classmethod
    def from_older(cls, value: Any) -> "MethodsKey | None":
        """The keys of mwork before named fields: the grid's key, its region "zero|plnd|1%"."""
        if not isinstance(value, dict) or set(value) != {"region", "variant", "neurons_of", "eval_lang"}:
            return None
        if value["region"] == ORIGINAL:
            return cls.original(value["eval_lang"])
        parts = str(value["region"]).split("|")
        return cls(*parts, value["variant"], value["neurons_of"], value["eval_lang"]) if len(parts) == 3 else None


Results = Mapping[MethodsKey, Mapping[str, Any]]


def cell_key(intervention: str, method: str, size: str, variant: str, neurons_of: str, eval_lang: str,
             units: str = NEURONS) -> MethodsKey:
    """The key of a comparison cell."""
    return MethodsKey(intervention, method, size, variant, neurons_of, eval_lang, units)


Sets = Mapping[tuple[Arm, str, str], Any]


def _std(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def log_ratio(results: Results, key: MethodsKey) -> float:
    original = results[MethodsKey.original(key.eval_lang)]["score"]
    return math.log(results[key]["score"] / original)


def selectivity_rows(results: Results, sets: Sets, *, interventions: Sequence[str], arms: Sequence[Arm],
                     sizes: Sequence[str], langs: Sequence[str], seeds: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    for iv in interventions:
        for arm in arms:
            u, m = arm
            for size in sizes:
                for lang in langs:
                    ns = sets[arm, size, lang]
                    own = log_ratio(results, cell_key(iv, m, size, "set", lang, lang, u))
                    others = [log_ratio(results, cell_key(iv, m, size, "set", lang, e, u)) for e in langs if e != lang]
                    rand = [log_ratio(results, cell_key(iv, m, size, f"random{s}", lang, lang, u)) for s in seeds]
                    others_mean = statistics.fmean(others)
                    random_mean = statistics.fmean(rand)
                    rows.append({
                        "units": u, "intervention": iv, "method": m, "size": size, "lang": lang, "neurons": ns.count(),
                        "own": own, "others": others_mean, "random": random_mean, "random_std": _std(rand),
                        "selectivity": own - others_mean, "own_minus_random": own - random_mean,
                        "random_max": max(rand), "beyond_rule": ns.meta.get("beyond_rule", 0),
                        "kinds": kinds_text(ns),
                    })
    return rows


def summary_rows(selectivity: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per intervention, method and size: the means over the languages (and the spread of
    selectivity and own - random over the languages)."""
    groups: dict[tuple[str, str, str, str], list[Mapping[str, Any]]] = {}
    for r in selectivity:
        groups.setdefault((r.get("units", NEURONS), r["intervention"], r["method"], r["size"]), []).append(r)
    rows = []
    for (u, iv, m, size), rs in groups.items():
        sel = [r["selectivity"] for r in rs]
        vs_random = [r["own_minus_random"] for r in rs]
        rows.append({
            "units": u, "intervention": iv, "method": m, "size": size, "neurons": rs[0]["neurons"], "langs": len(rs),
            "own": statistics.fmean(r["own"] for r in rs), "others": statistics.fmean(r["others"] for r in rs),
            "random": statistics.fmean(r["random"] for r in rs),
            "selectivity": statistics.fmean(sel), "selectivity_std": _std(sel),
            "own_minus_random": statistics.fmean(vs_random), "own_minus_random_std": _std(vs_random),
            "langs_above_random": sum(r["own"] > r["random_max"] for r in rs),
            "beyond_rule": sum(r["beyond_rule"] for r in rs),
        })
    return rows


def matrix_rows(results: Results, *, interventions: Sequence[str], arms: Sequence[Arm], sizes: Sequence[str],
                langs: Sequence[str]) -> list[dict[str, Any]]:
    """The full matrix: every language's set, every language's held-out texts."""
    return [{"units": u, "intervention": iv, "method": m, "size": size, "neurons_of": t, "eval_lang": e,
             "ln_ppl_ratio": log_ratio(results, cell_key(iv, m, size, "set", t, e, u))}
            for iv in interventions for u, m in arms for size in sizes for t in langs for e in langs]


def chance_jaccard(a: NeuronSet, b: NeuronSet) -> float:
    """Expected |A and B| / expected |A or B| for random sets with the counts of ``a`` and ``b``
    in each layer and kind."""
    inter = union = 0.0
    for kind in sorted(set(a.kinds) | set(b.kinds)):  # a fixed order: the same float sum every run
        for layer in range(a.num_layers):
            na, nb = a.count(kind, layer), b.count(kind, layer)
            size = (a.masks.get(kind) if kind in a.masks else b.masks[kind]).shape[1]
            both = na * nb / size
            inter += both
            union += na + nb - both
    return inter / union if union else 1.0


def set_chance_jaccard(a: Any, b: Any) -> float:
    """``chance_jaccard`` for two sets of one kind: neurons, or a dictionary's features."""
    return chance_jaccard(a, b) if isinstance(a, NeuronSet) else feature_chance_jaccard(a, b)


def stability_rows(halves: Mapping[tuple[Arm, str, str], tuple[Any, Any]], *, arms: Sequence[Arm],
                   sizes: Sequence[str], langs: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for arm in arms:
        for size in sizes:
            for lang in langs:
                a, b = halves[arm, size, lang]
                inter, union = overlap(a, b)
                rows.append({"units": arm.units, "method": arm.method, "size": size, "lang": lang,
                             "neurons": a.count(), "jaccard": a.jaccard(b) if isinstance(a, NeuronSet)
                             else (inter / union if union else 1.0), "chance": set_chance_jaccard(a, b),
                             "intersection": inter})
    return rows


def agreement_rows(sets: Sets, *, arms: Sequence[Arm], sizes: Sequence[str], langs: Sequence[str],
                   num_layers: int) -> list[dict[str, Any]]:
    """Between every two methods on the same unit kind."""
    rows = []
    for size in sizes:
        for lang in langs:
            for arm_a, arm_b in combinations(arms, 2):
                if arm_a.units != arm_b.units:
                    continue
                ma, mb = arm_a.method, arm_b.method
                a, b = sets[arm_a, size, lang], sets[arm_b, size, lang]
                layers: list[Any] = ["all", *range(num_layers)]
                for layer in layers:
                    if layer == "all":
                        la, lb = a, b
                    else:
                        la, lb = a.restrict([layer]), b.restrict([layer])
                    inter, union = overlap(la, lb)
                    rows.append({"units": arm_a.units, "size": size, "lang": lang, "method_a": ma, "method_b": mb,
                                 "layer": layer,
                                 "count_a": la.count(), "count_b": lb.count(), "intersection": inter,
                                 "jaccard": inter / union if union else None})
    return rows
