"""What a unit is: something read from and written to a hook site, one value per token.

A **unit set** holds units at named hook sites (``mwork.hooks.SITES``) of some layers. Each unit
has a *read* (how its value ``u`` is computed from the site's tensor ``x``) and a *write* (how a
change of ``u`` goes back into ``x``):

* a **neuron** is a basis vector both ways: ``u = x_j``, and changing ``u`` changes feature ``j``
  (:class:`mwork.NeuronSet`, through :mod:`mwork.units.neurons`);
* a **direction** reads ``u = x . r`` and writes along ``w``: ``x <- x + (u' - u) w``
  (residual-stream language vectors: :mod:`mwork.units.directions`);
* a **dictionary feature** (SAE, transcoder) reads through its encoder and writes through its
  decoder row; the reconstruction error stays in ``x``, so an unedited feature changes nothing.

A unit set answers where its units are in a model as :class:`UnitGroup` s, one per hooked module
(a fused q/k/v projection holds neurons of three kinds: one group), and the one intervention
primitive (:mod:`mwork.units.edit`) edits groups. A new unit kind is a :class:`UnitSet` subclass
and a :class:`UnitGroup` subclass, registered with :func:`register_unit_kind` (entry point group
``mwork.unit_kinds``); ``mwork.load_units(path)`` then reads its files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import nn

from mwork.hooks import Site
from mwork.registry import Registry

#: The ways a unit's value is changed (see :class:`mwork.units.edit.UnitEdit`).
OPS: tuple[str, ...] = ("affine", "zero", "set")


class UnitGroup(ABC):
    """The units of one set that sit at one hooked point (a module's input or output): ``site``,
    ``count`` units, in the set's order. :meth:`editor` turns a change of their values into a
    function of the site's tensor, precomputing what it can (index and scale vectors) once."""

    site: Site
    #: (kind, layer, unit ids) of what this group holds, for statistics and messages
    parts: list[tuple[str, int, torch.Tensor]]

    @property
    def module(self) -> nn.Module:
        """The module whose input or output the group's hook edits."""
        return self.site.module

    @property
    def count(self) -> int:
        return sum(int(ids.numel()) for *_, ids in self.parts)

    @abstractmethod
    def read(self, x: torch.Tensor) -> torch.Tensor:
        """The units' values ``u`` (..., count) from the site's tensor ``x`` (..., features)."""

    @abstractmethod
    def editor(self, op: str, keep: float | torch.Tensor, shift: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x -> x'`` where every unit's value becomes ``keep * u + shift`` (``op="affine"``;
        ``keep`` a number or one per unit, ``shift`` None or one per unit), exactly 0 (``"zero"``)
        or ``shift`` (``"set"``); everything else in ``x`` is kept. Out of place."""


def widen(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 or wider: where edits of directions and features are computed."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class RowGroup(UnitGroup):
    """Units written back along rows: a change of the values ``u`` becomes ``x + (u' - u) W`` with
    ``W = write_rows`` (count, features) -- directions (``w``) and dictionary features (decoder
    rows, so the reconstruction error stays in ``x``). Computed in float32 or wider and cast back;
    ``add`` (keep 1) needs no read."""

    @abstractmethod
    def write_rows(self, like: torch.Tensor) -> torch.Tensor:
        """``W`` (count, features) in ``like``'s dtype and device."""

    def editor(self, op: str, keep: float | torch.Tensor = 1.0,
               shift: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        if op not in OPS:
            raise ValueError(f"unknown edit {op!r}; edits are {', '.join(OPS)}")
        keep_t = torch.as_tensor(keep, dtype=torch.float64).reshape(-1)
        shift_t = None if shift is None else torch.as_tensor(shift, dtype=torch.float64).reshape(-1)
        needs_read = op in ("zero", "set") or bool((keep_t != 1.0).any())

        def edit(x: torch.Tensor) -> torch.Tensor:
            wide = widen(x)
            u = self.read(x).to(wide) if needs_read else None
            if op == "zero":
                delta = -u
            elif op == "set":
                delta = shift_t.to(wide) - u
            else:
                delta = ((keep_t.to(wide) - 1.0) * u if needs_read
                         else torch.zeros(*wide.shape[:-1], self.count, dtype=wide.dtype, device=wide.device))
                if shift_t is not None:
                    delta = delta + shift_t.to(wide)
            return (wide + delta @ self.write_rows(wide)).to(x.dtype)

        return edit


class UnitSet(ABC):
    """Units of one kind at named sites of a model (see the module docstring)."""

    #: the kind's registered name ("neurons", "directions", ...)
    kind: ClassVar[str]

    @abstractmethod
    def groups(self, model: nn.Module) -> list[UnitGroup]:
        """The set's units in ``model``, one group per hooked point, in a fixed order."""

    @abstractmethod
    def count(self) -> int:
        """How many units the set holds."""

    @abstractmethod
    def check_compatible(self, model: nn.Module) -> None:
        """Raise a ValueError that says what differs when the set does not fit ``model``."""

    @abstractmethod
    def restrict(self, layers: Iterable[int] | None = None, kinds: Iterable[str] | None = None) -> "UnitSet":
        """The units in ``layers`` (and of ``kinds``, where the kind has sub-kinds)."""

    def statistic(self, name: str, group: UnitGroup) -> torch.Tensor:
        """The stored statistic ``name`` (e.g. the target language's mean value) of each unit of
        ``group``, float64 (count,); a ValueError that says how to measure it when absent."""
        raise ValueError(f"{type(self).__name__} stores no statistic {name!r}")

    @abstractmethod
    def save(self, path: str | Path) -> Path:
        """Write the set (safetensors + JSON metadata) and return the safetensors path."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> "UnitSet":
        """Read a set written by :meth:`save` (checked against ``model`` when given)."""


class LayeredUnits(UnitSet):
    """A unit set whose unit ``j`` sits at layer ``layers[j]`` of one ``site`` (directions,
    dictionary features), with per-unit ``stats`` and free ``meta``; subclasses give
    :meth:`subset` and say what a unit is called (``noun``, e.g. "directions")."""

    noun: ClassVar[str] = "units"
    site: str
    layers: torch.Tensor
    stats: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @abstractmethod
    def subset(self, ids: torch.Tensor) -> "LayeredUnits":
        """The units ``ids`` (positions in this set), with their statistics."""

    @abstractmethod
    def group(self, site: Site, layer: int, ids: torch.Tensor) -> UnitGroup:
        """The group of units ``ids`` (all at ``layer``) at ``site``."""

    def groups(self, model: nn.Module) -> list[UnitGroup]:
        """One group per layer, in layer order."""
        from mwork.models.adapters import get_adapter

        adapter = get_adapter(model)
        return [self.group(adapter.site(self.site, layer), layer, (self.layers == layer).nonzero().flatten())
                for layer in sorted(set(self.layers.tolist()))]

    def count(self) -> int:
        return int(self.layers.numel())

    def restrict(self, layers: Iterable[int] | None = None, kinds: Iterable[str] | None = None) -> "LayeredUnits":
        if kinds is not None and set(kinds) - {self.kind}:
            raise ValueError(f"{self.noun} have no neuron kinds; drop kinds={sorted(set(kinds))}")
        if layers is None:
            return self
        keep = torch.isin(self.layers, torch.tensor(sorted(set(int(i) for i in layers)), dtype=torch.long))
        return self.subset(keep.nonzero().flatten())

    def statistic(self, name: str, group: UnitGroup) -> torch.Tensor:
        if name not in self.stats:
            have = ", ".join(sorted(self.stats)) or "none"
            raise ValueError(f"these {self.noun} carry no {name!r} statistic (they have: {have}); measure it on the "
                             "target language's texts (e.g. mwork vectors) or use mode 'add'")
        return torch.cat([self.stats[name][ids] for *_, ids in group.parts])

    def check_fits(self, model: nn.Module, width: int | None, residual_sites: Iterable[str]) -> None:
        """The checks every layered set makes: its layers exist, its width is the hidden size at a
        residual-stream site, and the model type it was made for (``meta["fingerprint"]``)."""
        from mwork.models.adapters import get_adapter

        adapter = get_adapter(model)
        fp = adapter.fingerprint()
        bad = sorted({i for i in self.layers.tolist() if not 0 <= i < adapter.num_layers})
        if bad:
            raise ValueError(f"{self.noun} at layers {bad}, and the model has layers 0..{adapter.num_layers - 1}")
        if self.site in residual_sites and width is not None and width != fp["hidden_size"]:
            raise ValueError(f"these {self.noun} have {width} features and this model's hidden size is "
                             f"{fp['hidden_size']}: they were made for another model or site")
        mine = self.meta.get("fingerprint") or {}
        if mine.get("model_type") and mine["model_type"] != fp["model_type"]:
            raise ValueError(f"these {self.noun} were made for a {mine['model_type']} model "
                             f"({self.meta.get('model_id', 'another model')}), and this model is a {fp['model_type']}")

    def write_file(self, path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
        """Save ``tensors`` (plus the statistics) and ``meta`` (plus the kind and site) as a unit set file."""
        import json

        from mwork.files import save_safetensors, write_text
        from mwork.neurons.neuronset import set_path

        st = set_path(path)
        if st.is_dir():
            raise ValueError(f"cannot write the {self.noun} to {st}: it is a folder; choose another path")
        tensors = {**tensors, **{f"stat.{k}": v.contiguous() for k, v in self.stats.items()}}
        meta = dict(self.meta, **meta, unit_kind=self.kind, site=self.site, count=self.count())
        save_safetensors(st, tensors, metadata={"mwork": json.dumps(meta, sort_keys=True, default=str)})
        write_text(st.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        return st


def _register_plugin(cls: Any) -> None:
    register_unit_kind(cls)


#: Unit kinds by name: mwork's own and those of installed packages (entry point group ``mwork.unit_kinds``).
UNIT_KINDS: Registry[type[UnitSet]] = Registry("unit kind", "mwork.unit_kinds", on_entry_point=_register_plugin)


def register_unit_kind(cls: type[UnitSet], replace: bool = False) -> type[UnitSet]:
    """Register a :class:`UnitSet` subclass under its ``kind`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, UnitSet)):
        raise TypeError(f"a unit kind must be a UnitSet subclass, got {cls!r}")
    UNIT_KINDS.register(cls.kind, cls, replace=replace)
    return cls
