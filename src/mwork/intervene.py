"""Switch neurons off (or scale them) at run time, through hooks, never by editing weights.

The paper's reference code zeroed weights in place and forgot to restore them, so one
experiment leaked into the next. Here a :func:`deactivate` context registers one hook per
affected module and removes it in ``finally``: on exit the model computes bit-identically to
before, whatever happened inside.

Where the hooks sit (the adapter says, see ``Adapter.channel_site``):

* ``q`` / ``k`` / ``v``: a forward hook on the projection scales output features
  ``site.index[channels]`` (fused GPT-2 / BLOOM / NeoX projections included). Zeroing the
  output equals zeroing the weight row and its bias; with a KV cache the cached keys and
  values are computed already zeroed, which is what weight-zeroing would give.
* ``ffn``: a forward pre-hook on the MLP down projection scales its input features.

Hooks are out-of-place (autograd-safe, usable with gradients) and cheap: the feature indices
and per-feature scale vectors are computed once per context, not per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

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


@dataclass
class _Site:
    """One hooked module: the features to scale (output features, or input for ``ffn``)."""

    module: nn.Module
    on_input: bool
    features: list[torch.Tensor] = field(default_factory=list)
    index: torch.Tensor | None = None  # unique feature indices, on the module's device
    vector: torch.Tensor | None = None  # per-feature scale (only when scale != 0)
    _cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = field(default_factory=dict)

    def finalize(self, scale: float, width: int) -> None:
        device = _module_device(self.module)
        self.index = torch.unique(torch.cat(self.features)).to(device)
        if scale != 0.0:
            vec = torch.ones(width, device=device)
            vec[self.index] = scale
            self.vector = vec

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"mwork.deactivate: expected a tensor at {type(self.module).__name__}, got {type(x)}")
        if self.vector is None:  # zeroing: exact zeros even where the input is inf/nan
            index = self.index if self.index.device == x.device else self.index.to(x.device)
            return x.index_fill(-1, index, 0)
        key = (x.device, x.dtype)
        vec = self._cache.get(key)
        if vec is None:
            vec = self._cache[key] = self.vector.to(device=x.device, dtype=x.dtype)
        return x * vec


def _module_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: accelerate's execution device when it has one (under a
    device_map its weights may be offloaded, i.e. on the meta device), else its weights'."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", [hook]):  # accelerate's SequentialHook holds several
        where = getattr(h, "execution_device", None)
        if where is not None:
            return torch.device("cuda", where) if isinstance(where, int) else torch.device(where)
    for p in (*module.parameters(recurse=False), *module.parameters()):
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


def _feature_width(site_module: nn.Module, on_input: bool) -> int:
    """Number of input (or output) features of a Linear-like module."""
    for attr in ("in_features" if on_input else "out_features", "nx" if on_input else "nf"):
        if hasattr(site_module, attr):
            return int(getattr(site_module, attr))
    w = site_module.weight  # fall back: Linear stores (out, in)
    return int(w.shape[1] if on_input else w.shape[0])


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
        self.active = False
        self._handles: list[Any] = []
        self._sites = self._build_sites(adapter, ns, scale)

    @staticmethod
    def _build_sites(adapter, ns: NeuronSet, scale: float) -> list[_Site]:
        sites: dict[int, _Site] = {}
        for kind in ns.kinds:
            for layer in range(ns.num_layers):
                channels = ns.indices(kind, layer)
                if channels.numel() == 0:
                    continue
                site = adapter.channel_site(layer, kind)
                entry = sites.setdefault(id(site.module), _Site(site.module, site.on_input))
                entry.features.append(site.index[channels])
        for entry in sites.values():
            entry.finalize(scale, _feature_width(entry.module, entry.on_input))
        return list(sites.values())

    def __enter__(self) -> "Deactivation":
        if self.active:
            raise RuntimeError("this deactivation context is already active; create a new one to nest")
        try:
            for site in self._sites:
                if site.on_input:
                    self._handles.append(site.module.register_forward_pre_hook(_pre_hook(site), with_kwargs=True))
                else:
                    self._handles.append(site.module.register_forward_hook(_post_hook(site)))
        except BaseException:
            self._remove()
            raise
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def _remove(self) -> None:
        try:
            while self._handles:
                self._handles.pop().remove()
        finally:
            self.active = False

    def __repr__(self) -> str:
        return f"Deactivation({self.neurons!r}, scale={self.scale}, active={self.active})"


def _pre_hook(site: _Site):
    def hook(module: nn.Module, args: tuple, kwargs: dict):
        if args:
            return (site.apply(args[0]), *args[1:]), kwargs
        if len(kwargs) == 1:  # called as module(input=x)
            (name, x), = kwargs.items()
            return args, {name: site.apply(x)}
        raise TypeError(f"mwork.deactivate: cannot find the input of {type(module).__name__}")

    return hook


def _post_hook(site: _Site):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor):
        return site.apply(output)

    return hook


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
