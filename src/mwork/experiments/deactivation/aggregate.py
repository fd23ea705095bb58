"""From the cells to the tables: the headline, the grid rows and the cross-language matrix.

Columns (the paper's definitions, averaged over the non-English languages T):

* ``Eng``: English performance with T's neurons off; ``n-Eng``: T's performance with T's off.
* ``ΔEng`` / ``Δn-Eng``: change of performance against the unmodified model; positive means
  better. For accuracy-like metrics it is ``after - before`` (metric units); for perplexity it
  is ``-ln(ppl_after / ppl_before)``, the change in mean log-likelihood per token (nats), so a
  perplexity multiplied by ``r`` gives ``-ln r``. ``Eng``/``n-Eng`` of perplexity are geometric
  means.
* ``Δ = ΔEng - Δn-Eng``: large when non-English suffers much more than English.

Random rows are the mean over the seeds, with the sample standard deviation (None for one seed).
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

from mwork.experiments.deactivation.plan import ALL_LAYERS, CellKey, GridSpec, Region

Results = Mapping[CellKey, Mapping[str, Any]]


def performance_delta(before: float, after: float, higher_is_better: bool) -> float:
    """Change of performance, positive = better (see module docstring)."""
    if higher_is_better:
        return after - before
    return -math.log(after / before)


def mean_score(scores: Sequence[float], higher_is_better: bool) -> float:
    """Mean of scores (geometric for lower-is-better metrics such as perplexity)."""
    if not scores:
        return math.nan
    if higher_is_better:
        return statistics.fmean(scores)
    return math.exp(statistics.fmean(math.log(s) for s in scores))


def sample_std(values: Sequence[float]) -> float | None:
    """Sample standard deviation over the random seeds; None (not 0) for a single seed."""
    return statistics.stdev(values) if len(values) > 1 else None


def originals(spec: GridSpec, results: Results) -> dict[str, float]:
    """Each language's score on the unmodified model."""
    return {lang: results[CellKey.original(lang)]["score"] for lang in spec.langs}


def headline_rows(spec: GridSpec, results: Results, total_neurons: int) -> list[dict[str, Any]]:
    """Per language, all layers: original, random (mean, std) and language-specific neurons off."""
    orig = originals(spec, results)
    rows = []
    for lang in spec.langs:
        rand = [results[CellKey(ALL_LAYERS, f"random{s}", lang, lang)]["score"] for s in spec.seeds]
        spec_cell = results[CellKey(ALL_LAYERS, "specific", lang, lang)]
        rows.append({
            "lang": lang, "original": orig[lang],
            "random_mean": statistics.fmean(rand) if rand else math.nan,
            "random_std": sample_std(rand),
            "specific": spec_cell["score"],
            "neurons_off": spec_cell["off"],
            "share_off": spec_cell["off"] / total_neurons,
        })
    return rows


def grid_rows(spec: GridSpec, regions: Sequence[Region], results: Results, total_neurons: int,
              kinds_off: Mapping[str, Sequence[str]], higher: bool) -> list[dict[str, Any]]:
    """The unmodified model's row, then per region a language-specific and a random row.

    ``kinds``: what the region really switched off (``kinds_off[region.name]``, "none" if nothing)."""
    orig = originals(spec, results)
    english, targets = spec.english, spec.targets
    rows = []
    for region in regions:
        for kind in ("specific", "random"):
            variants = ["specific"] if kind == "specific" else [f"random{s}" for s in spec.seeds]
            per_variant = []
            for v in variants:
                eng = [results[CellKey(region.name, v, t, english)]["score"] for t in targets]
                neng = [results[CellKey(region.name, v, t, t)]["score"] for t in targets]
                d_eng = statistics.fmean(performance_delta(orig[english], e, higher) for e in eng)
                d_neng = statistics.fmean(performance_delta(orig[t], s, higher) for t, s in zip(targets, neng))
                off = statistics.fmean(results[CellKey(region.name, v, t, english)]["off"] for t in targets)
                per_variant.append({"Eng": mean_score(eng, higher), "n-Eng": mean_score(neng, higher),
                                    "ΔEng": d_eng, "Δn-Eng": d_neng, "Δ": d_eng - d_neng, "neurons": off})
            row = {"region": region.name, "kinds": "+".join(kinds_off[region.name]) or "none",
                   "layers": f"{region.layers[0]}-{region.layers[-1]}", "neurons_off": kind}
            for col in ("Eng", "n-Eng", "ΔEng", "Δn-Eng", "Δ"):
                vals = [p[col] for p in per_variant]
                row[col] = statistics.fmean(vals)
                row[f"{col}_std"] = sample_std(vals)
            row["mean_neurons"] = statistics.fmean(p["neurons"] for p in per_variant)
            row["share_off"] = row["mean_neurons"] / total_neurons
            rows.append(row)
    original_row = {"region": "none (original)", "kinds": "", "layers": "", "neurons_off": "none",
                    "Eng": orig[english], "n-Eng": mean_score([orig[t] for t in targets], higher),
                    "ΔEng": 0.0, "Δn-Eng": 0.0, "Δ": 0.0, "mean_neurons": 0, "share_off": 0.0}
    rows.insert(0, original_row)
    return rows


def matrix_rows(spec: GridSpec, results: Results, higher: bool) -> list[dict[str, Any]]:
    """Every language evaluated with every language's neurons off (all layers); [] without the matrix."""
    if not spec.matrix:
        return []
    orig = originals(spec, results)
    cross = []
    for t in spec.langs:
        for ev in spec.langs:
            rand = [results[CellKey(ALL_LAYERS, f"random{s}", t, ev)]["score"] for s in spec.seeds]
            spec_score = results[CellKey(ALL_LAYERS, "specific", t, ev)]["score"]
            rm = statistics.fmean(rand) if rand else math.nan
            cross.append({"neurons_of": t, "eval_lang": ev, "original": orig[ev], "random_mean": rm,
                          "random_std": sample_std(rand), "specific": spec_score,
                          "specific_change": performance_delta(orig[ev], spec_score, higher),
                          "random_change": performance_delta(orig[ev], rm, higher)})
    return cross
