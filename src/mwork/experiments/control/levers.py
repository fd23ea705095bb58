"""The levers of the control experiment: each turns (source, target, setting) into a change of
the model (a context manager around generation) and of its prompt (an instruction or none).

A setting is ``variant, layers, positions, strength`` (:class:`Setting`); the variant says how
the lever acts:

* ``neurons``: the target language's neurons (any detection method's set) steered by
  ``mwork.steer`` with the target language's mean activation: variants ``set`` and ``add``;
* ``features``: the target language's dictionary features (``mwork detect --units sae:DIR``: a
  Dictionary of the language's features, each with its mean activation on the language)
  steered like neurons, toward that mean: variants ``set`` and ``add`` (the reconstruction error
  kept: only the decoded change is added);
* ``vectors``: the target language's residual vector added (``add``: ``x <- x + a v``), with
  each edited hidden state's norm restored (``add-norm``, ReCoVeR's), or with the source
  language's direction removed first (``swap``, ``swap-norm``);
* ``random``: the same edits with random units: neurons of the same count per layer and kind
  (``neurons-set``, ``neurons-add``; steered with their own mean activations on the target's
  texts), features of the same dictionaries, the same count per layer (``features-set`` ...,
  likewise), directions of the same norm per layer (``vectors-add`` ...), seeded;
* ``prompt``: no edit; an instruction naming the target language before the prompt, in the
  source language (``source``) or in English (``en``);
* ``prompt+vector``: both, variant ``<instruction>+<vector variant>`` (``en+add``);
* ``unsteered`` (always run, never asked for): the model as it is, the reference of every row.

Every edit goes through ``mwork.steering.Steering`` (``mwork.steer``'s context; the one intervention
primitive), on given rows of a batch when settings are stacked; the registry
:data:`LEVERS` finds a lever by name. A new lever is a :class:`Lever` registered there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, ContextManager, Mapping, Sequence

from torch import nn

from mwork.experiments.control.prompts import instruction, instruction_variants
from mwork.registry import Registry

NEURON_MODES: tuple[str, ...] = ("set", "add")
VECTOR_MODES: tuple[str, ...] = ("add", "add-norm", "swap", "swap-norm")
UNSTEERED = "unsteered"


@dataclass(frozen=True)
class Setting:
    """One setting of a lever (``layers``, ``positions``, ``strength`` None for a lever with no edit)."""

    lever: str
    variant: str
    layers: str | None = None
    positions: str | None = None
    strength: float | None = None


@dataclass(frozen=True)
class LeverUnits:
    """The unit sets the levers steer with, by language: the language neurons and dictionary
    features (with the target language's mean activation), the language vectors, and their
    random baselines."""

    neurons: Mapping[str, Any] = field(default_factory=dict)
    vectors: Mapping[str, Any] = field(default_factory=dict)
    random_neurons: Mapping[str, Any] = field(default_factory=dict)
    random_vectors: Mapping[str, Any] = field(default_factory=dict)
    features: Mapping[str, Any] = field(default_factory=dict)
    random_features: Mapping[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        """A set by its name, ``<family>:<lang>`` (``neurons:es``, ``random-vectors:en``)."""
        family, _, lang = name.partition(":")
        return getattr(self, family.replace("-", "_"))[lang]


@dataclass(frozen=True)
class Plan:
    """What a lever's variants may be: the neuron modes and vector modes to sweep, the
    instruction languages, and which unit families were given."""

    modes: Sequence[str] = NEURON_MODES
    vector_modes: Sequence[str] = ("add",)
    instructions: Sequence[str] = ("source", "en")
    has_neurons: bool = False
    has_vectors: bool = False
    has_features: bool = False


class Lever:
    """A way to change the output language (module docstring). ``needs``: the unit families it
    steers with; ``steers``: whether it edits the model (then layers, positions and strengths
    are swept)."""

    name: str = ""
    needs: tuple[str, ...] = ()
    steers: bool = True

    def variants(self, plan: Plan, source: str, target: str) -> list[str]:
        raise NotImplementedError

    def instruction(self, variant: str, source: str, target: str) -> str | None:
        """The instruction put before the prompt (None: none)."""
        return None

    def units(self, variant: str, source: str, target: str) -> list[str]:
        """The names of the unit sets a variant reads (:meth:`LeverUnits.get`)."""
        return []

    def family(self, variant: str) -> str | None:
        """Which units a variant edits (``neurons``, ``vectors``; None: none), for its strengths."""
        return None

    def edit(self, model: nn.Module, units: LeverUnits, setting: Setting, source: str, target: str,
             layers: list[int] | None, rows: Sequence[int] | None = None) -> ContextManager[Any]:
        """The context the variant generates in (``layers``: the setting's layers, resolved;
        ``rows``: only these rows of each batch are edited, None: every row), so that settings
        stacked into one batch each edit their own rows."""
        return contextlib.nullcontext()


def _neuron_edit(model: nn.Module, ns: Any, mode: str, setting: Setting, layers: list[int] | None,
                 rows: Sequence[int] | None) -> ContextManager:
    from mwork.steering import Steering

    return Steering(model, ns, f"{mode}:mean", float(setting.strength), layers=layers,
                    positions=str(setting.positions), rows=rows)


def _vector_edit(model: nn.Module, add: Any, remove: Any, mode: str, setting: Setting,
                 layers: list[int] | None, rows: Sequence[int] | None) -> ContextManager:
    from mwork.steering import Steering

    swap, norm = mode.startswith("swap"), mode.endswith("-norm")
    return Steering(model, add, "add", float(setting.strength), layers=layers, positions=str(setting.positions),
                    off=remove if swap else None, keep_norm=norm, rows=rows)


def _vector_units(family: str, mode: str, source: str, target: str) -> list[str]:
    return [f"{family}:{target}"] + ([f"{family}:{source}"] if mode.startswith("swap") else [])


class Unsteered(Lever):
    name, steers = UNSTEERED, False

    def variants(self, plan: Plan, source: str, target: str) -> list[str]:
        return [""]


class Neurons(Lever):
    name, needs = "neurons", ("neurons",)

    def variants(self, plan: Plan, source: str, target: str) -> list[str]:
        return list(plan.modes)

    def units(self, variant: str, source: str, target: str) -> list[str]:
        return [f"neurons:{target}"]

    def family(self, variant: str) -> str | None:
        return "neurons"

    def edit(self, model, units, setting, source, target, layers, rows=None):
        return _neuron_edit(model, units.neurons[target], setting.variant, setting, layers, rows)


class Features(Lever):
    name, needs = "features", ("features",)

    def variants(self, plan: Plan, source: str, target: str) -> list[str]:
        return list(plan.modes)

    def units(self, variant: str, source: str, target: str) -> list[str]:
        return [f"features:{target}"]

    def family(self, variant: str) -> str | None:
        return "features"

    def edit(self, model, units, setting, source, target, layers, rows=None):
        return _neuron_edit(model, units.features[target], setting.variant, setting, layers, rows)


class Vectors(Lever):
    name, needs = "vectors", ("vectors",)

    def variants(self, plan: Plan, source: str, target: str) -> list[str]:
        return list(plan.vector_modes)

    def units(self, variant: str, source: str, target: str) -> list[str]:
        return _vector_units("vectors", variant, source, target)

    def family(self, variant: str) -> str | None:
        return "vectors"

    def edit(self, model, units, setting, source, target, layers, rows=None):
        remove = units.vectors.get(source) if setting.variant.startswith("swap") else None
        return _vector_edit(model, units.vectors[target], remove, setting.variant, setting, layers, rows)


class Random(Lever):
    name, needs = "random", ()

    def variants(self, plan: Plan, source: str, target: str) -> list[str]:
        return ([f"neurons-{m}" for m in plan.modes] if plan.has_neurons else []) + \
               ([f"features-{m}" for m in plan.modes] if plan.has_features else []) + \
               ([f"vectors-{m}" for m in plan.vector_modes] if plan.has_vectors else [])

    def units(self, variant: str, source: str, target: str) -> list[str]:
        family, _, mode = variant.partition("-")
        if family in ("neurons", "features"):
            return [f"random-{family}:{target}"]
        return _vector_units("random-vectors", mode, source, target)

    def family(self, variant: str) -> str | None:
        return variant.partition("-")[0]

    def edit(self, model, units, setting, source, target, layers, rows=None):
        family, _, mode = setting.variant.partition("-")
        if family in ("neurons", "features"):
            return _neuron_edit(model, units.get(f"random-{family}:{target}"), mode, setting, layers, rows)
        remove = units.random_vectors.get(source) if mode.startswith("swap") else None
        return _vector_edit(model, units.random_vectors[target], remove, mode, setting, layers, rows)


class Prompting(Lever):
    name, steers = "prompt", False

    def variants(self, plan: Plan, source: str, target: str) -> list[str]:
        return instruction_variants(plan.instructions, source, target)

    def instruction(self, variant: str, source: str, target: str) -> str | None:
        return instruction(variant, source, target)


class PromptAndVector(Lever):
    name, needs = "prompt+vector", ("vectors",)

    def variants(self, plan: Plan, source: str, target: str) -> list[str]:
        return [f"{i}+{m}" for i in instruction_variants(plan.instructions, source, target) for m in plan.vector_modes]

    def instruction(self, variant: str, source: str, target: str) -> str | None:
        return instruction(variant.partition("+")[0], source, target)

    def units(self, variant: str, source: str, target: str) -> list[str]:
        return _vector_units("vectors", variant.partition("+")[2], source, target)

    def family(self, variant: str) -> str | None:
        return "vectors"

    def edit(self, model, units, setting, source, target, layers, rows=None):
        mode = setting.variant.partition("+")[2]
        remove = units.vectors.get(source) if mode.startswith("swap") else None
        return _vector_edit(model, units.vectors[target], remove, mode, setting, layers, rows)


LEVERS: Registry[Lever] = Registry("control lever")
for _lever in (Unsteered(), Neurons(), Features(), Vectors(), Random(), Prompting(), PromptAndVector()):
    LEVERS.register(_lever.name, _lever)

#: the levers a user may ask for (``--levers``), in the order rows are written
CHOICES: tuple[str, ...] = ("neurons", "features", "vectors", "random", "prompt", "prompt+vector")


def lever(name: str) -> Lever:
    """The lever registered under ``name``."""
    return LEVERS.get(name)


def settings(name: str, plan: Plan, source: str, target: str, layers: Sequence[str] | Mapping[str, Sequence[str]],
             positions: Sequence[str], strengths: Mapping[str, Sequence[float]]) -> list[Setting]:
    """Every setting of lever ``name`` for ``source`` -> ``target``: its variants, and for a lever
    that edits the model each layer range, position choice and strength (``layers`` and
    ``strengths`` per unit family, :meth:`Lever.family`; ``layers`` may be one list for both)."""
    lv = lever(name)
    out = []
    for variant in lv.variants(plan, source, target):
        if not lv.steers:
            out.append(Setting(name, variant))
            continue
        family = lv.family(variant) or "neurons"
        specs = layers[family] if isinstance(layers, Mapping) else layers
        out += [Setting(name, variant, spec, pos, float(s)) for spec in specs for pos in positions
                for s in strengths[family]]
    return out
