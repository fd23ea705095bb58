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
"""

from __future__ import annotations

import math
import statistics
from itertools import combinations
from typing import Any, Mapping, Sequence

from dataclasses import dataclass

from mwork.experiments.kernel import CellKey
from mwork.neurons.neuronset import NeuronSet

ORIGINAL = "original"


@dataclass(frozen=True)
class MethodsKey(CellKey):
    """What one comparison cell measures: ``eval_lang``'s held-out perplexity with the ``variant``
    (``set`` or ``random<seed>``) of ``neurons_of``'s ``size`` set by ``method`` switched off by
    ``intervention`` (``zero`` or ``mean``); the unmodified model's cells have only ``eval_lang``."""

    intervention: str | None
    method: str | None
    size: str | None
    variant: str
    neurons_of: str | None
    eval_lang: str

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


def cell_key(intervention: str, method: str, size: str, variant: str, neurons_of: str, eval_lang: str) -> MethodsKey:
    """The key of a comparison cell."""
    return MethodsKey(intervention, method, size, variant, neurons_of, eval_lang)


def _std(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def log_ratio(results: Results, key: MethodsKey) -> float:
    original = results[MethodsKey.original(key.eval_lang)]["score"]
    return math.log(results[key]["score"] / original)


def selectivity_rows(results: Results, sets: Mapping[tuple[str, str, str], NeuronSet], *, interventions: Sequence[str],
                     methods: Sequence[str], sizes: Sequence[str], langs: Sequence[str],
                     seeds: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    for iv in interventions:
        for m in methods:
            for size in sizes:
                for lang in langs:
                    ns = sets[m, size, lang]
                    own = log_ratio(results, cell_key(iv, m, size, "set", lang, lang))
                    others = [log_ratio(results, cell_key(iv, m, size, "set", lang, e)) for e in langs if e != lang]
                    rand = [log_ratio(results, cell_key(iv, m, size, f"random{s}", lang, lang)) for s in seeds]
                    others_mean = statistics.fmean(others)
                    random_mean = statistics.fmean(rand)
                    rows.append({
                        "intervention": iv, "method": m, "size": size, "lang": lang, "neurons": ns.count(),
                        "own": own, "others": others_mean, "random": random_mean, "random_std": _std(rand),
                        "selectivity": own - others_mean, "own_minus_random": own - random_mean,
                        "random_max": max(rand), "beyond_rule": ns.meta.get("beyond_rule", 0),
                        "kinds": ",".join(f"{k}={ns.count(k)}" for k in ns.kinds if ns.count(k)),
                    })
    return rows


def summary_rows(selectivity: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per intervention, method and size: the means over the languages (and the spread of
    selectivity and own - random over the languages)."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in selectivity:
        groups.setdefault((r["intervention"], r["method"], r["size"]), []).append(r)
    rows = []
    for (iv, m, size), rs in groups.items():
        sel = [r["selectivity"] for r in rs]
        vs_random = [r["own_minus_random"] for r in rs]
        rows.append({
            "intervention": iv, "method": m, "size": size, "neurons": rs[0]["neurons"], "langs": len(rs),
            "own": statistics.fmean(r["own"] for r in rs), "others": statistics.fmean(r["others"] for r in rs),
            "random": statistics.fmean(r["random"] for r in rs),
            "selectivity": statistics.fmean(sel), "selectivity_std": _std(sel),
            "own_minus_random": statistics.fmean(vs_random), "own_minus_random_std": _std(vs_random),
            "langs_above_random": sum(r["own"] > r["random_max"] for r in rs),
            "beyond_rule": sum(r["beyond_rule"] for r in rs),
        })
    return rows


def matrix_rows(results: Results, *, interventions: Sequence[str], methods: Sequence[str], sizes: Sequence[str],
                langs: Sequence[str]) -> list[dict[str, Any]]:
    """The full matrix: every language's set, every language's held-out texts."""
    return [{"intervention": iv, "method": m, "size": size, "neurons_of": t, "eval_lang": e,
             "ln_ppl_ratio": log_ratio(results, cell_key(iv, m, size, "set", t, e))}
            for iv in interventions for m in methods for size in sizes for t in langs for e in langs]


def chance_jaccard(a: NeuronSet, b: NeuronSet) -> float:
    """Expected |A and B| / expected |A or B| for random sets with the counts of ``a`` and ``b``
    in each layer and kind."""
    inter = union = 0.0
    for kind in set(a.kinds) | set(b.kinds):
        for layer in range(a.num_layers):
            na, nb = a.count(kind, layer), b.count(kind, layer)
            size = (a.masks.get(kind) if kind in a.masks else b.masks[kind]).shape[1]
            both = na * nb / size
            inter += both
            union += na + nb - both
    return inter / union if union else 1.0


def stability_rows(halves: Mapping[tuple[str, str, str], tuple[NeuronSet, NeuronSet]], *, methods: Sequence[str],
                   sizes: Sequence[str], langs: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for m in methods:
        for size in sizes:
            for lang in langs:
                a, b = halves[m, size, lang]
                rows.append({"method": m, "size": size, "lang": lang, "neurons": a.count(),
                             "jaccard": a.jaccard(b), "chance": chance_jaccard(a, b),
                             "intersection": (a & b).count()})
    return rows


def agreement_rows(sets: Mapping[tuple[str, str, str], NeuronSet], *, methods: Sequence[str], sizes: Sequence[str],
                   langs: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        for lang in langs:
            for ma, mb in combinations(methods, 2):
                a, b = sets[ma, size, lang], sets[mb, size, lang]
                layers: list[Any] = ["all", *range(a.num_layers)]
                for layer in layers:
                    if layer == "all":
                        la, lb = a, b
                    else:
                        la, lb = a.restrict([layer]), b.restrict([layer])
                    inter, union = (la & lb).count(), (la | lb).count()
                    rows.append({"size": size, "lang": lang, "method_a": ma, "method_b": mb, "layer": layer,
                                 "count_a": la.count(), "count_b": lb.count(), "intersection": inter,
                                 "jaccard": inter / union if union else None})
    return rows
