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
fused projection share one edit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from mwork.hooks import ChannelScale, Hooks, Site, site_width
from mwork.models.adapters import KINDS, get_adapter
from mwork.neurons.neuronset import NeuronSet, as_neuron_set


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


class Deactivation:
    """Context manager returned by :func:`deactivate`; see there.

    Attributes: ``neurons`` (the NeuronSet actually switched off, after restriction),
    ``scale``, ``count`` (neurons affected), ``active`` (inside the context)."""

    def __init__(
        self,
        model: nn.Module,
        neurons: NeuronSet | str | Path,
        layers: str | Iterable[int] | None = None,
        kinds: str | Iterable[str] | None = None,
        scale: float = 0.0,
    ):
        scale = float(scale)
        if not math.isfinite(scale):
            raise ValueError(f"scale must be a finite number, got {scale}")
        adapter = get_adapter(model)
        ns = as_neuron_set(neurons, model)
        layer_list = parse_layers(layers)
        kind_list = parse_kinds(kinds)
        if layer_list is not None:
            bad = [i for i in layer_list if not 0 <= i < adapter.num_layers]
            if bad:
                raise ValueError(f"layers {bad} out of range: the model has layers 0..{adapter.num_layers - 1}")
        if layer_list is not None or kind_list is not None:
            ns = ns.restrict(layer_list, kind_list)
        self.model = model
        self.neurons = ns
        self.scale = scale
        self.count = ns.count()
        self._sites = self._edits(adapter, ns, scale)
        self._hooks = Hooks()
        for edit in self._sites:
            self._hooks.edit(edit.site, edit)

    @property
    def active(self) -> bool:
        return self._hooks.active

    @staticmethod
    def _edits(adapter, ns: NeuronSet, scale: float) -> list[ChannelScale]:
        """One edit per hooked module: the features of every kind and layer it holds."""
        return [ChannelScale(site, torch.cat([f for *_, f in parts]), scale, site_width(site))
                for site, parts in sites_of(adapter, ns)]


    def __enter__(self) -> "Deactivation":
        if self.active:
            raise RuntimeError("this deactivation context is already active; create a new one to nest")
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    def __repr__(self) -> str:
        return f"Deactivation({self.neurons!r}, scale={self.scale}, active={self.active})"


def deactivate(
    model: nn.Module,
    neurons: NeuronSet | str | Path,
    layers: str | Iterable[int] | None = None,
    kinds: str | Iterable[str] | None = None,
    scale: float = 0.0,
) -> Deactivation:
    """Context manager: inside it, ``neurons`` of ``model`` are zeroed (or multiplied by ``scale``).

    ``neurons`` is a NeuronSet or a path to one (checked against the model's shape).
    ``layers`` ("0-5", [0, 1, 2]) and ``kinds`` ("ffn,q", ["v"], "attn") restrict the set.
    Works in plain forward passes, with gradients, and in ``generate`` (KV cache, batches,
    left padding). Contexts nest: both sets are switched off, scales multiply. Weights are
    never touched and the hooks are removed on exit, even after an exception::

        with mwork.deactivate(model, "neurons/zh.safetensors", kinds="ffn"):
            out = model.generate(**batch)
    """
    return Deactivation(model, neurons, layers=layers, kinds=kinds, scale=scale)


def sites_of(adapter, ns: NeuronSet) -> list[tuple[Site, list[tuple[str, int, torch.Tensor, torch.Tensor]]]]:
    """The set's neurons grouped by the module their hook sits on: per module its site and the
    (kind, layer, channels, features) it holds, in kind and layer order (features: the channels'
    positions in the module's tensor, which for a fused projection depend on the kind). One edit per module, because a
    fused projection holds several kinds (deactivation and steering both place edits so)."""
    grouped: dict[int, tuple[Site, list]] = {}
    for kind in ns.kinds:
        for layer in range(ns.num_layers):
            channels = ns.indices(kind, layer)
            if channels.numel():
                site = adapter.neuron_site(kind, layer)
                part = (kind, layer, channels, site.features(channels))
                grouped.setdefault(id(site.module), (site, []))[1].append(part)
    return list(grouped.values())
