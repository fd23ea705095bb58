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
