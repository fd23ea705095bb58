"""Steer the output language: turn a language's neurons *on*, at run time, through hooks.

``with mwork.steer(model, neurons, mode="set", strength=1.0): model.generate(...)`` edits, at
each neuron ``j`` of the set (the neuron sites of ``mwork.hooks``: ``ffn.in``, ``q.out``,
``k.out``, ``v.out``), its value ``x_j`` at the chosen token positions, with the strength
``alpha`` and ``s_j``, a statistic of the *target language's* activations of that neuron
(``mean``, ``median`` or a quantile ``q0.9``, named with the mode: ``"set"`` is ``"set:mean"``,
``"set:median"``; measured once from a corpus, stored with the set:
:mod:`mwork.neurons.statistics`):

* ``set``:   ``x_j <- (1 - alpha) * x_j + alpha * s_j`` (alpha 1: replaced by ``s_j``; alpha 0:
  unchanged; alpha > 1 goes past the statistic);
* ``add``:   ``x_j <- x_j + alpha * s_j``;
* ``scale``: ``x_j <- alpha * x_j`` (needs no statistic; alpha 1: unchanged; 0: switched off).

What the papers did, in these terms: Kojima et al. (2024) fixed their neurons to the median of
the target language's activations (``set:median``, alpha 1); LAPE (Tang et al. 2024) switches
the source language's neurons off (``off=``) and, in the paper, replaces the target's neurons by
their mean activation (``set``, ``mean``, alpha 1; its released code only zeroes neurons);
Gurgurov et al. (2025, "Language Arithmetics") add a multiple of the target language's mean
activation (``add``, ``mean``, alpha = their strength) and switch the source language off at the
same time; their "replacement" baseline is ``set`` with alpha 1. All three intervene on the FFN
activation (the SiLU output); mwork's FFN neurons are the down projection's input,
``act(gate) * up`` (``ffn.in``), and Q/K/V neurons are raw projection channels.

**Positions.** ``positions="all"`` (default), ``"prompt"`` or ``"generated"``. The context
reads each forward call of ``model`` (its ``input_ids``, ``attention_mask`` and cache): a call
that starts a sequence is the prompt pass; a cached step (one token on a cache) and a call that
repeats the previous sequence plus one token (``generate(use_cache=False)``) continue it, so
the positions, and the generations, are the same with and without the KV cache. Generated
tokens are the columns past the (left-padded) prompt; padding (``attention_mask == 0``) is never
steered.

**Switching off at the same time.** ``off``: neurons (e.g. the source language's) set to exactly
zero at the same positions, layers and kinds; their edits are registered after the steering
edits, so a neuron in both sets is off. An ``off`` set holding every steered neuron (e.g. the
steered set itself) would cancel the steering entirely: it is refused (``steered_and_off``).

**Order.** Edits at one site run in registration order (``mwork.hooks``): inside
``mwork.deactivate`` the deactivation edits first, then these; in the other nesting, these
first. Leaving the context removes every hook: the model computes bit-identically to before.
Strength 0 in ``set`` / ``add`` and 1 in ``scale`` register no steering edit at all (the edit
would be the identity).

**Units.** Any unit set steers the same way (``mwork.units``): for a set of directions (e.g.
residual-stream language vectors, ``mwork.load_units``) ``add`` is ``x <- x + alpha * v`` for each
direction ``v``, ``set`` moves the coordinate along ``v`` toward the stored statistic, ``scale``
multiplies it, and ``off`` removes the component. ``keep_norm=True`` rescales each steered value
to its norm before the edit (ReCoVeR's norm restoration). Every edit is placed by the one
intervention primitive, :class:`mwork.units.edit.Intervention`, which also follows the positions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from mwork.corpus_statistics import parse_stat
from mwork.intervene import parse_kinds, parse_layers
from mwork.models.adapters import get_adapter
from mwork.neurons.neuronset import NeuronSet
from mwork.units.base import UnitSet
from mwork.units.edit import POSITIONS, Intervention, UnitEdit, check_layers
from mwork.units.files import as_units
from mwork.units.neurons import NeuronUnits

MODES: tuple[str, ...] = ("set", "add", "scale")
NEEDS_STATISTIC = ("set", "add")


def split_mode(mode: str, stat: str | None = None) -> tuple[str, str]:
    """``(mode, statistic)`` from a mode that may name its statistic (``"set:median"``, ``"add:q0.9"``;
    ``"set"``: ``stat``, else the mean), so one argument says how each value moves. The statistic is
    returned as given (``parse_stat`` checks it where it is read)."""
    name, named, suffix = str(mode).partition(":")
    if name not in MODES:
        raise ValueError(f"unknown steering mode {mode!r}; use one of {', '.join(MODES)}")
    if not named:
        return name, "mean" if stat is None else stat
    if name not in NEEDS_STATISTIC:
        raise ValueError(f"mode {name} uses no statistic: give mode={name!r}, not {mode!r}")
    if stat is not None:
        raise ValueError(f"mode {mode!r} names the statistic already: drop stat={stat!r}")
    return name, suffix


def is_identity(mode: str, strength: float) -> bool:
    """Whether ``mode`` at ``strength`` leaves every value unchanged (no edit is registered)."""
    return float(strength) == (1.0 if mode == "scale" else 0.0)


FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max


def strength_problem(values: Iterable[float]) -> str | None:
    """Why strengths cannot be used (None when they can): not finite, or beyond what float32 can
    hold -- the activations would overflow before anything is measured."""
    values = [float(v) for v in values]
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        return f"{bad[0]!r} is not a finite number: give finite strengths"
    huge = [v for v in values if abs(v) > FLOAT32_MAX]
    if huge:
        return (f"{huge[0]:g} is beyond float32's range (|strength| <= {FLOAT32_MAX:.3g}): the edited activations "
                "could not be represented; give sensible strengths (e.g. 0,1,2,4)")
    return None


def steered_and_off(neurons: NeuronSet, off: NeuronSet | None) -> int:
    """How many steered neurons are also in ``off`` (its zeros come after the steering edits: those
    neurons are switched off, not steered). A ValueError when that is every steered neuron (e.g.
    ``off`` is the steered set itself): the off edit would cancel the steering entirely while the
    results are labelled as steering."""
    if off is None or neurons.count() == 0:
        return 0
    both = (neurons & off).count()
    if both == neurons.count():
        raise ValueError(f"every steered neuron ({both}) is also in the off set, whose zeros come after the steering "
                         "edits and cancel it: the results would be the switched-off model labelled as steering; "
                         "give --off another language's set (e.g. the source language's)")
    return both


# ---- the steering context --------------------------------------------------------------------


class Steering(Intervention):
    """Context manager returned by :func:`steer`; see there and the module docstring. It takes
    every option: also ``stat`` (the statistic, when ``mode`` names none; default the mean) and
    ``kinds`` ("ffn", "attn", "q,k": only those neuron kinds are steered, and switched off), and
    ``rows`` (only these rows of each batch: several settings, each its own context on its own
    rows, share one batched ``generate``).

    Attributes: ``units`` (the steered unit set, after restriction), ``neurons`` (the same as a
    NeuronSet, for neurons; else None), ``off`` (the switched-off set or None: a NeuronSet for
    neurons, else a unit set), ``mode``, ``strength``, ``stat``, ``positions``, ``keep_norm``,
    ``count`` (units steered), ``active``."""

    what = "steering"

    def __init__(self, model: nn.Module, units: UnitSet | NeuronSet | str | Path, mode: str = "set",
                 strength: float = 1.0, *, stat: str | None = None, layers: str | Iterable[int] | None = None,
                 kinds: str | Iterable[str] | None = None, positions: str = "all",
                 off: UnitSet | NeuronSet | str | Path | None = None, keep_norm: bool = False,
                 rows: Iterable[int] | None = None):
        mode, stat = split_mode(mode, stat)
        strength = float(strength)
        problem = strength_problem([strength])
        if problem:
            raise ValueError(f"strength {problem}")
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        adapter = get_adapter(model)
        full = as_units(units, model)
        layer_list, kind_list = parse_layers(layers), parse_kinds(kinds)
        check_layers(adapter.num_layers, layer_list)
        restricted = layer_list is not None or kind_list is not None
        steered = full.restrict(layer_list, kind_list) if restricted else full
        off_units = None
        if off is not None:
            off_units = as_units(off, model)
            off_units = off_units.restrict(layer_list, kind_list) if restricted else off_units
        self.units, self.mode, self.strength = steered, mode, strength
        self.neurons = steered.neurons if isinstance(steered, NeuronUnits) else None
        self.off = off_units.neurons if isinstance(off_units, NeuronUnits) else off_units
        self.keep_norm = bool(keep_norm)
        self.stat = parse_stat(stat)
        self.count = steered.count()
        self.identity = is_identity(mode, strength)
        if not self.identity and isinstance(steered, NeuronUnits) and isinstance(off_units, NeuronUnits):
            steered_and_off(steered.neurons, off_units.neurons)
        edits = [] if self.identity else self._steer_edits(model, full, steered)
        if off_units is not None:
            edits += [UnitEdit(g, "zero") for g in off_units.groups(model)]
        super().__init__(model, edits, positions=positions, keep_norm=self.keep_norm, rows=rows)

    def _steer_edits(self, model: nn.Module, full: UnitSet, units: UnitSet) -> list[UnitEdit]:
        """Per group: ``set`` keeps 1 - alpha of the value and adds alpha times the statistic,
        ``add`` adds alpha times the statistic (for directions: alpha times the direction),
        ``scale`` multiplies by alpha."""
        a = self.strength
        neurons = isinstance(units, NeuronUnits)
        stats = full if neurons else units  # a restricted NeuronSet keeps no statistics; its full set does
        edits = []
        for group in units.groups(model):
            if self.mode == "set" or (self.mode == "add" and neurons):
                s = stats.statistic(self.stat, group)
            else:
                s = torch.ones(group.count, dtype=torch.float64)  # a direction's own length
            if self.mode == "set":
                edits.append(UnitEdit(group, "affine", keep=1.0 - a, shift=a * s))
            elif self.mode == "add":
                edits.append(UnitEdit(group, "affine", keep=1.0, shift=a * s))
            else:
                edits.append(UnitEdit(group, "affine", keep=a))
        return edits

    def __repr__(self) -> str:
        off = f", off={self.off.count()}" if self.off is not None else ""
        return (f"Steering({self.units!r}, mode={self.mode}, strength={self.strength}, stat={self.stat}, "
                f"positions={self.positions}{off}, active={self.active})")


def steer(model: nn.Module, units: UnitSet | NeuronSet | str | Path, mode: str = "set", strength: float = 1.0,
          *, layers: str | Iterable[int] | None = None, positions: str = "all",
          off: UnitSet | NeuronSet | str | Path | None = None, keep_norm: bool = False) -> Steering:
    """Context manager: inside it, ``units`` of ``model`` are steered (module docstring)::

        with mwork.steer(model, "neurons/zh.safetensors", mode="set", strength=1.0):
            out = model.generate(**batch, max_new_tokens=24)

    ``units``: a NeuronSet, any unit set (directions: module docstring) or a path to one.
    ``mode``: ``set``, ``add`` or ``scale``; ``set`` and ``add`` move toward a stored statistic of
    the target language, the mean unless the mode names another (``"set:median"``,
    ``"add:q0.9"``; see :func:`mwork.neurons.statistics.add_statistics`); ``strength``: alpha;
    ``layers`` ("0-5") restricts the set, and ``off``; ``positions``: ``all``, ``prompt`` or
    ``generated``; ``off``: units switched off at the same time (e.g. the source language's);
    ``keep_norm``: restore each steered value's norm. Works in plain forward passes and in
    ``generate`` with or without the KV cache, batched with left padding. Steering some neuron
    kinds only (``kinds="ffn"``) or with the statistic apart from the mode (``stat=``): the
    :class:`Steering` this returns takes every option."""
    return Steering(model, units, mode, strength, layers=layers, positions=positions, off=off, keep_norm=keep_norm)
