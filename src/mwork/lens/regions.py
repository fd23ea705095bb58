"""Estimate the understanding / task-solving / generation layer split from a lens result.

The paper's picture: for non-English input the decoded tokens are non-English in the first
layers (understanding), English in the middle (task-solving) and the input language again at
the end (generation). From the per-layer English share of non-English inputs (mean over those
input languages) ``c[0..n]`` over lens layers (0 = embeddings, i = output of decoder layer
i - 1), with ``lo = min c``, ``hi = max c`` and ``t = lo + rel_threshold * (hi - lo)``:

* ``r`` = first lens layer with ``c[r] >= t``; ``s`` = last lens layer with ``c[s] >= t``;
* understanding = decoder layers ``0 .. r-1`` (``U = r``: up to and including the layer whose
  output first leans to English, since converting to English is part of understanding);
* generation = decoder layers ``s .. n-1`` (``G = n - s``: from the layer whose output first
  leaves English after the last English-leaning layer);
* task-solving = the layers in between.

If ``hi - lo < min_rise`` the curve has no clear English phase: nothing is estimated
(``found`` is False and ``reason`` says why); callers should then ask the user for U and G.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from mwork.layer_regions import GENERATION, TASK_SOLVING, UNDERSTANDING, region_layers
from mwork.lens.langid import ENGLISH


@dataclass
class RegionEstimate:
    found: bool
    understanding: int | None  # U: number of first decoder layers
    generation: int | None  # G: number of last decoder layers
    num_layers: int  # decoder layers
    curve: list[float]  # English share of non-English inputs per lens layer (0 .. num_layers)
    languages: list[str]
    threshold: float | None
    rel_threshold: float
    min_rise: float
    rise_layer: int | None  # r: first lens layer >= threshold
    fall_layer: int | None  # s: last lens layer >= threshold
    reason: str = ""

    def layer_regions(self) -> dict[str, list[int]]:
        """Decoder-layer indices of each region (empty dict when nothing was found)."""
        if not self.found:
            return {}
        spans = region_layers(self.num_layers, self.understanding, self.generation)
        # lens.json's keys (a file format): task_solving, with an underscore
        return {"understanding": list(spans[UNDERSTANDING]), "task_solving": list(spans[TASK_SOLVING]),
                "generation": list(spans[GENERATION])}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["curve"] = [None if math.isnan(x) else round(x, 6) for x in self.curve]
        d["regions"] = self.layer_regions()
        d["rule"] = ("t = min + rel_threshold * (max - min) of the curve; r = first lens layer >= t, "
                     "s = last lens layer >= t; U = r, G = num_layers - s (lens layer i = output of "
                     "decoder layer i-1)")
        return d

    def describe(self) -> str:
        """Human-readable estimate with its evidence (the curve, marked at r and s)."""
        lines = [f"English share of non-English inputs ({', '.join(self.languages)}) per layer:"]
        for i, x in enumerate(self.curve):
            bar = "" if math.isnan(x) else "#" * round(40 * x)
            mark = " <- r (rise)" if i == self.rise_layer else ""
            mark += " <- s (last English-leaning)" if i == self.fall_layer else ""
            lines.append(f"  layer {i:3d}  {'  nan' if math.isnan(x) else f'{x:5.3f}'}  {bar}{mark}")
        if self.found:
            lines.append(
                f"threshold {self.threshold:.3f} (min + {self.rel_threshold} x range): understanding U = "
                f"{self.understanding} first layers, generation G = {self.generation} last layers, "
                f"task-solving = {self.num_layers - self.understanding - self.generation} layers in between"
            )
        else:
            lines.append(f"no estimate: {self.reason}")
        return "\n".join(lines)


def _value(row: Any, key: str) -> float:
    v = row[key] if isinstance(row, Mapping) else getattr(row, key)
    return math.nan if v is None else float(v)


def english_curve(shares: Mapping[str, Sequence[Any]], langs: Sequence[str]) -> list[float]:
    """Mean English share over ``langs`` at each lens layer (NaNs skipped)."""
    n = max(len(shares[lang]) for lang in langs)
    curve = []
    for layer in range(n):
        vals = [_value(shares[lang][layer], "english_share") for lang in langs if layer < len(shares[lang])]
        vals = [v for v in vals if not math.isnan(v)]
        curve.append(sum(vals) / len(vals) if vals else math.nan)
    return curve


def estimate_regions(
    source: str | Path | Mapping[str, Sequence[Any]],
    langs: Sequence[str] | None = None,
    rel_threshold: float = 0.5,
    min_rise: float = 0.1,
) -> RegionEstimate:
    """Estimate U and G from a lens result: a ``lens.json`` / ``lens.csv`` path, a folder
    holding one, or the shares mapping itself (input language -> per-layer rows). ``langs``
    defaults to every non-English input language present."""
    if not 0.0 < rel_threshold < 1.0:
        raise ValueError(f"rel_threshold must be in (0, 1), got {rel_threshold}")
    if isinstance(source, (str, Path)):
        from mwork.lens.shares import read_shares

        shares = read_shares(source)
    else:
        shares = source
    available = [lang for lang in shares if lang != ENGLISH]
    langs = list(langs) if langs else available
    missing = [lang for lang in langs if lang not in shares]
    if missing:
        raise ValueError(f"the lens result has no input language {', '.join(missing)}; it has {', '.join(shares)}")
    if not langs:
        raise ValueError("the lens result has no non-English input language; run `mwork lens` with e.g. --langs zh,ru")
    curve = english_curve(shares, langs)
    n = len(curve) - 1
    common = dict(num_layers=n, curve=curve, languages=langs, rel_threshold=rel_threshold, min_rise=min_rise)
    finite = [x for x in curve if not math.isnan(x)]
    if not finite:
        return RegionEstimate(False, None, None, threshold=None, rise_layer=None, fall_layer=None,
                              reason="no layer has tokens of known language", **common)
    lo, hi = min(finite), max(finite)
    if hi - lo < min_rise:
        return RegionEstimate(False, None, None, threshold=None, rise_layer=None, fall_layer=None,
                              reason=f"the English share varies by only {hi - lo:.3f} < min_rise {min_rise} "
                                     "over the layers: no clear English phase", **common)
    t = lo + rel_threshold * (hi - lo)
    above = [i for i, x in enumerate(curve) if not math.isnan(x) and x >= t]
    r, s = above[0], above[-1]
    return RegionEstimate(True, understanding=r, generation=n - s, threshold=t, rise_layer=r, fall_layer=s,
                          **common)


class RegionEstimateError(ValueError):
    """No usable estimate from a lens result; ``estimate`` holds the evidence (its ``describe()``)."""

    def __init__(self, message: str, estimate: RegionEstimate):
        super().__init__(message)
        self.estimate = estimate


def check_region_options(lens: Any, understanding: int | None, generation: int | None) -> None:
    """The layer-region options, before any model is loaded: U and G not negative, and ``--lens``
    only where it is read (given U and G win over it, so with both it would be ignored)."""
    for name, value in (("understanding", understanding), ("generation", generation)):
        if value is not None and value < 0:
            raise ValueError(f"--{name} must be >= 0, got {value}")
    if lens is not None and understanding is not None and generation is not None:
        raise ValueError("--lens estimates the missing --understanding / --generation, but both are given: "
                         "drop --lens (or one of them)")
    if isinstance(lens, (str, Path)) and not Path(lens).exists():
        raise FileNotFoundError(f"--lens {lens}: no such lens result (a `mwork lens` output folder, or its lens.json)")


def resolve_regions(
    num_layers: int,
    lens: str | Path | Mapping[str, Sequence[Any]] | None = None,
    understanding: int | None = None,
    generation: int | None = None,
) -> tuple[int, int, RegionEstimate | None]:
    """U and G for a model of ``num_layers`` decoder layers, and the estimate they came from.

    Given values win; the missing ones are estimated from ``lens`` (a ``mwork lens`` folder, its
    ``lens.json`` / ``lens.csv``, or the shares mapping; see :func:`estimate_regions`), which must
    describe a model of ``num_layers`` layers. Without both values and without a lens result, or
    when the lens curve shows no English phase, a ValueError says what to give instead."""
    if understanding is not None and generation is not None:
        return understanding, generation, None
    if lens is None:
        raise ValueError("give --understanding U and --generation G, or --lens DIR (a `mwork lens` result) "
                         "to estimate them")
    est = estimate_regions(lens)
    where = lens if isinstance(lens, (str, Path)) else "the lens shares"
    if not est.found:
        raise RegionEstimateError(f"could not estimate the layer regions from {where} ({est.reason}); give "
                                  "--understanding and --generation", est)
    if est.num_layers != num_layers:
        raise RegionEstimateError(f"the lens result {where} has {est.num_layers} layers but the model has "
                                  f"{num_layers}: run `mwork lens` on this model, or give --understanding and "
                                  "--generation", est)
    return (understanding if understanding is not None else est.understanding,
            generation if generation is not None else est.generation, est)
