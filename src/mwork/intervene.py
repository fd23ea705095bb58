"""Switch neurons off (or scale them) at run time, through hooks, never by editing weights.

The paper's reference code zeroed weights in place and forgot to restore them, so one
experiment leaked into the next. Here a :func:`deactivate` context registers one hook per
affected module and removes it in ``finally``: on exit the model computes bit-identically to
before, whatever happened inside.

Where the hooks sit (the adapter's neuron sites, registered through ``mwork.hooks``):

* ``q`` / ``k`` / ``v``: a forward hook on the projection scales output features
  ``site.index[channels]`` (fused GPT-2 / BLOOM / NeoX projections included). Zeroing the
  output equals zeroing the weight row and its bias; with a KV cache the cached keys and
  values are computed already zeroed, which is what weight-zeroing would give.
* ``ffn``: a forward pre-hook on the MLP down projection scales its input features.

Edits are out-of-place (autograd-safe, usable with gradients) and cheap: the feature indices
and per-feature scale vectors are computed once per context, not per call; the kinds of one
fused projection share one edit. Any unit set works the same way (``mwork.units``): a set of
directions is switched off by removing each one's component (``scale``: multiplying it). The
edits are placed by the one intervention primitive, :class:`mwork.units.edit.Intervention`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

from torch import nn

from mwork.models.adapters import KINDS, get_adapter
from mwork.neurons.neuronset import NeuronSet
from mwork.units.base import UnitSet
from mwork.units.edit import Intervention, UnitEdit, check_layers
from mwork.units.files import as_units
from mwork.units.neurons import NeuronUnits


def parse_layers(spec: str | Iterable[int] | None) -> list[int] | None:
    """``"0-5"``, ``"0,3,7-9"`` or an iterable of ints -> sorted unique layer list (None: all)."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        return sorted({int(x) for x in spec})
    layers: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                a, b = int(lo), int(hi)
                if a > b:
                    raise ValueError
                layers.update(range(a, b + 1))
            else:
                layers.add(int(part))
        except ValueError:
            raise ValueError(f"bad layer spec {spec!r}: use e.g. '0-5' or '0,3,7-9' (non-negative, ascending ranges)")
    if not layers:
        raise ValueError(f"layer spec {spec!r} names no layer")
    return sorted(layers)


def parse_kinds(spec: str | Iterable[str] | None) -> list[str] | None:
    """``"ffn,q"`` or an iterable of kinds -> validated list (None: all). ``attn`` means q,k,v."""
    if spec is None:
        return None
    items = spec.replace(" ", "").split(",") if isinstance(spec, str) else list(spec)
    kinds: list[str] = []
    for item in items:
        if not item:
            continue
        expanded = ["q", "k", "v"] if item == "attn" else [item]
        for k in expanded:
            if k not in KINDS:
                raise ValueError(f"unknown neuron kind {k!r}; kinds are {', '.join(KINDS)} (or 'attn' for q,k,v)")
            if k not in kinds:
                kinds.append(k)
    if not kinds:
        raise ValueError(f"kind spec {spec!r} names no kind")
    return kinds


class Deactivation(Intervention):
    """Context manager returned by :func:`deactivate`; see there.

    Attributes: ``units`` (the unit set actually switched off, after restriction), ``neurons``
    (the same as a NeuronSet, for neurons; None for other unit kinds), ``scale``, ``count`` (units
    affected), ``active`` (inside the context)."""

    what = "deactivation"

    def __init__(
        self,
        model: nn.Module,
        neurons: UnitSet | NeuronSet | str | Path,
        layers: str | Iterable[int] | None = None,
        kinds: str | Iterable[str] | None = None,
        scale: float = 0.0,
    ):
        scale = float(scale)
        if not math.isfinite(scale):
            raise ValueError(f"scale must be a finite number, got {scale}")
        adapter = get_adapter(model)
        units = as_units(neurons, model)
        layer_list = parse_layers(layers)
        kind_list = parse_kinds(kinds)
        check_layers(adapter.num_layers, layer_list)
        if layer_list is not None or kind_list is not None:
            units = units.restrict(layer_list, kind_list)
        self.units = units
        self.neurons = units.neurons if isinstance(units, NeuronUnits) else None
        self.scale = scale
        self.count = units.count()
        op = "zero" if scale == 0.0 else "affine"
        self._sites = units.groups(model)  # one group per hooked module
        super().__init__(model, [UnitEdit(g, op, keep=scale) for g in self._sites])

    def __repr__(self) -> str:
        return f"Deactivation({self.units!r}, scale={self.scale}, active={self.active})"


def deactivate(
    model: nn.Module,
    neurons: UnitSet | NeuronSet | str | Path,
    layers: str | Iterable[int] | None = None,
    kinds: str | Iterable[str] | None = None,
    scale: float = 0.0,
) -> Deactivation:
    """Context manager: inside it, ``neurons`` of ``model`` are zeroed (or multiplied by ``scale``).

    ``neurons`` is a NeuronSet, any unit set (``mwork.load_units``: directions lose their
    component) or a path to one (checked against the model's shape).
    ``layers`` ("0-5", [0, 1, 2]) and ``kinds`` ("ffn,q", ["v"], "attn") restrict the set.
    Works in plain forward passes, with gradients, and in ``generate`` (KV cache, batches,
    left padding). Contexts nest: both sets are switched off, scales multiply. Weights are
    never touched and the hooks are removed on exit, even after an exception::

        with mwork.deactivate(model, "neurons/zh.safetensors", kinds="ffn"):
            out = model.generate(**batch)
    """
    return Deactivation(model, neurons, layers=layers, kinds=kinds, scale=scale)
