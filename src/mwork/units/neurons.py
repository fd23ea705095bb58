"""Neurons as units: features of a neuron site's tensor, read and written as themselves.

A :class:`mwork.NeuronSet` (masks per kind: ``ffn``, ``q``, ``k``, ``v``) is the unit set;
:class:`NeuronUnits` is its view for the intervention primitive. Its groups are per *module*: a
fused projection (GPT-2's ``c_attn``, BLOOM's ``query_key_value``) holds the q, k and v neurons of
a layer, whose features of the module's tensor come from ``Site.features``; one edit per module.
The edits are the exact forms deactivation and steering always used: ``zero`` is
``index_fill`` (exact zeros even where a value is inf or NaN), ``set`` is ``index_copy``, and
``affine`` multiplies and adds whole-width vectors (1 and 0 at the other features, which keep
their values bit for bit), so a step costs no gather or scatter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from mwork.hooks import DeviceCache, Site, module_device, site_width
from mwork.models.adapters import get_adapter
from mwork.neurons.neuronset import NeuronSet, as_neuron_set
from mwork.units.base import OPS, UnitGroup, UnitSet, register_unit_kind


class FeatureGroup(UnitGroup):
    """Neurons at one module: channels of ``site`` given as features of the module's tensor."""

    def __init__(self, site: Site, parts: list[tuple[str, int, torch.Tensor, torch.Tensor]]):
        self.site = site
        self.parts = [(kind, layer, channels) for kind, layer, channels, _ in parts]
        self.features = torch.cat([f for *_, f in parts]) if parts else torch.zeros(0, dtype=torch.long)
        self.index = self.features.to(module_device(site.module))  # where the module computes

    def read(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.features.to(x.device)]

    def editor(self, op: str, keep: float | torch.Tensor = 1.0,
               shift: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        if op not in OPS:
            raise ValueError(f"unknown edit {op!r}; edits are {', '.join(OPS)}")
        device = self.index.device
        index = DeviceCache(self.index)
        if op == "zero":
            return lambda x: x.index_fill(-1, index.on(x), 0)
        if op == "set":
            values = DeviceCache(torch.as_tensor(shift, dtype=torch.float64).reshape(-1).to(device), keep_dtype=False)
            n = int(self.features.numel())
            return lambda x: x.index_copy(-1, index.on(x), values.on(x).expand(*x.shape[:-1], n))
        width = site_width(self.site)
        keep_vec = shift_vec = None
        keep_t = torch.as_tensor(keep, dtype=torch.float64)
        if bool((keep_t != 1.0).any()):
            vec = torch.ones(width, dtype=torch.float64)
            vec[self.features] = keep_t
            keep_vec = DeviceCache(vec.to(device), keep_dtype=False)
        if shift is not None:
            vec = torch.zeros(width, dtype=torch.float64)
            vec[self.features] = torch.as_tensor(shift).to(torch.float64)
            shift_vec = DeviceCache(vec.to(device), keep_dtype=False)

        def affine(x: torch.Tensor) -> torch.Tensor:
            new = x if keep_vec is None else x * keep_vec.on(x)
            return new if shift_vec is None else new + shift_vec.on(x)

        return affine


def neuron_groups(adapter, ns: NeuronSet) -> list[FeatureGroup]:
    """The set's neurons grouped by the module their hook sits on, in kind and layer order."""
    grouped: dict[int, tuple[Site, list]] = {}
    for kind in ns.kinds:
        for layer in range(ns.num_layers):
            channels = ns.indices(kind, layer)
            if channels.numel():
                site = adapter.neuron_site(kind, layer)
                part = (kind, layer, channels, site.features(channels))
                grouped.setdefault(id(site.module), (site, []))[1].append(part)
    return [FeatureGroup(site, parts) for site, parts in grouped.values()]


@register_unit_kind
class NeuronUnits(UnitSet):
    """A NeuronSet seen as units (its file format is the NeuronSet's: ``NeuronSet.save``)."""

    kind = "neurons"

    def __init__(self, neurons: NeuronSet):
        self.neurons = neurons

    def groups(self, model: nn.Module) -> list[FeatureGroup]:
        return neuron_groups(get_adapter(model), self.neurons)

    def count(self) -> int:
        return self.neurons.count()

    def check_compatible(self, model: nn.Module) -> None:
        self.neurons.check_compatible(model)

    def restrict(self, layers: Iterable[int] | None = None, kinds: Iterable[str] | None = None) -> "NeuronUnits":
        return NeuronUnits(self.neurons.restrict(layers, kinds))

    def statistic(self, name: str, group: UnitGroup) -> torch.Tensor:
        values = []
        for kind, layer, channels in group.parts:
            stored = self.neurons.statistic(name, kind)
            if stored is None:
                have = ", ".join(self.neurons.statistic_names()) or "none"
                raise ValueError(f"this needs the target language's {name} activation of every neuron, and this "
                                 f"NeuronSet carries no {name!r} statistic for {kind} (it has: {have}); measure it "
                                 "with mwork.neurons.statistics.add_statistics(...) or give `mwork steer --corpus TEXTS`")
            v = stored[layer, channels].to(torch.float64)
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"the {name} statistic of some {kind} neurons of layer {layer} was not measured "
                                 "(NaN): measure the statistics for this set again")
            values.append(v)
        return torch.cat(values)

    def save(self, path: str | Path) -> Path:
        return self.neurons.save(path)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> "NeuronUnits":
        return cls(as_neuron_set(path, model))

    def __repr__(self) -> str:
        return f"NeuronUnits({self.neurons!r})"
