"""The unit kinds a comparison draws its sets from (``--units``): the model's neurons, and the
features of sparse dictionaries (``sae:DIR``), each compared at the same set sizes.

A *kind* is one entry of ``--units``; an *arm* is one method on one kind (PLND scores neurons
only, monolinguality features only, LAPE and AP both). Everything about sets that differs
between kinds lives here: their random baselines (random features of the same count per layer,
seeded, as ``NeuronSet.random_like`` for neurons), content digests for the cell store, the
units as (kind, layer) -> ids for language identification, overlaps for stability and agreement.

Why no ``vectors`` kind: a language's DiffMean vector is one direction per layer, so a language
has at most as many such units as the model has layers (18 on gemma-3-270m) -- sets at matched
counts (hundreds of units at 0.1 % of the neurons) cannot be drawn from them, and "random
directions of the same count" would be the whole pool. Residual vectors are compared as levers
in ``mwork experiment control`` instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import torch

from mwork.fingerprints import neurons_digest
from mwork.neurons.methods import get_detection_method
from mwork.neurons.neuronset import NeuronSet

NEURONS = "neurons"
SAE_PREFIX = "sae:"
UNITS_HELP = ("unit kinds compared at the same set sizes, comma-separated: neurons, sae:DIR (the features of the "
              "dictionary in DIR, a folder written by mwork sae train / load or its dictionary.safetensors)")


class Arm(NamedTuple):
    """One method on one unit kind (``units``: the ``--units`` entry, e.g. ``neurons``)."""

    units: str
    method: str


@dataclass(frozen=True)
class UnitKind:
    """One ``--units`` entry: its ``label`` (as given), a file-safe ``tag`` (``neurons``,
    ``sae1``, ``sae2`` ...) and the dictionary (None for neurons)."""

    label: str
    tag: str
    dictionary: Any = None

    @property
    def is_neurons(self) -> bool:
        return self.dictionary is None


def parse_units(specs: Sequence[str]) -> tuple[str, ...]:
    """``--units`` checked as text: each ``neurons`` or ``sae:DIR``, each once."""
    specs = tuple(s.strip() for s in specs if s.strip())
    if not specs:
        raise ValueError("--units names no unit kind; give neurons and/or sae:DIR")
    for s in specs:
        if s == "vectors":
            raise ValueError("--units vectors is not offered: a language's DiffMean vectors are one unit per layer, "
                             "too few for sets of matched counts (see mwork experiment control for vectors as levers)")
        if s != NEURONS and not (s.startswith(SAE_PREFIX) and s[len(SAE_PREFIX):]):
            raise ValueError(f"--units takes neurons or sae:DIR (a dictionary folder or file), not {s!r}")
    if len(set(specs)) != len(specs):
        raise ValueError(f"--units names a unit kind twice: {','.join(specs)}")
    return specs


def read_unit_kinds(specs: Sequence[str]) -> list[UnitKind]:
    """The kinds ``specs`` names, dictionaries read (no model needed; a clear error for a missing
    folder or a unit file of another kind)."""
    from mwork.neurons.detect_job import read_dictionary_units

    kinds, n = [], 0
    for s in parse_units(specs):
        if s == NEURONS:
            kinds.append(UnitKind(s, NEURONS))
        else:
            n += 1
            kinds.append(UnitKind(s, f"sae{n}", read_dictionary_units(s)))
    return kinds


def scores_kind(method: str, kind: UnitKind) -> bool:
    """Whether ``method`` scores units of ``kind``."""
    return ("neurons" if kind.is_neurons else "dictionary") in get_detection_method(method).unit_kinds


def arms_of(kinds: Sequence[UnitKind], methods: Sequence[str]) -> list[Arm]:
    """Every method on every kind it scores, kind by kind (``--units`` order), then ``--methods`` order;
    a kind no method scores is refused."""
    arms = []
    for kind in kinds:
        mine = [Arm(kind.label, m) for m in methods if scores_kind(m, kind)]
        if not mine:
            what = "neurons" if kind.is_neurons else "dictionary features"
            able = [m for m in ("plnd", "lape", "ap", "monolinguality")
                    if ("neurons" if kind.is_neurons else "dictionary") in get_detection_method(m).unit_kinds]
            raise ValueError(f"--units {kind.label}: none of --methods {','.join(methods)} scores {what} "
                             f"({', '.join(able)} do)")
        arms += mine
    return arms


def feature_settings(method: str, config: Any, dictionary: Any) -> Any:
    """A method's settings for a dictionary's features: AP's own-rule sizes (``top`` / ``bottom``,
    1000 each by default, made for ~10^5 neurons) at most half the dictionary each. They only say
    which units the method's own rule keeps (``eligible``); every AP unit is eligible and the
    comparison's sets are the n best by score, so the sets do not depend on them."""
    fields = getattr(type(config), "__dataclass_fields__", {})
    if method == "ap" and "top" in fields:
        import dataclasses

        half = dictionary.count() // 2
        return dataclasses.replace(config, top=min(config.top, half),
                                   bottom=min(config.bottom, dictionary.count() - min(config.top, half)))
    return config


# ---- random baselines ------------------------------------------------------------------------


def random_like(units: Any, seed: int) -> Any:
    """Random units of ``units``' kind with the same count per layer (and neuron kind), seeded:
    ``NeuronSet.random_like`` / ``Dictionary.random_like``."""
    return units.random_like(seed)


# ---- digests ---------------------------------------------------------------------------------

def dictionary_digest(units: Any) -> str:
    """sha256 of a dictionary's weights (every layer), its sites and which features are chosen
    (``Dictionary.digest``)."""
    return units.digest()


def units_digest(units: Any) -> str:
    """What a cell switches off, by content (``neurons_digest`` for a NeuronSet)."""
    return neurons_digest(units) if isinstance(units, NeuronSet) else dictionary_digest(units)


def tensor_digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.to(torch.float64).contiguous().numpy().tobytes()).hexdigest()


# ---- the units as parts, counts and overlaps -------------------------------------------------


def feature_parts(units: Any, tag: str) -> dict[tuple[str, int], torch.Tensor]:
    """A dictionary subset as (tag, layer) -> its sorted feature ids (language identification's parts)."""
    return {(tag, layer): torch.unique(units.features[units.layers == layer])
            for layer in sorted(set(units.layers.tolist()))}


def kinds_text(units: Any) -> str:
    """``kinds`` of selectivity.csv: counts per neuron kind, or per dictionary layer (``L6=13``)."""
    if isinstance(units, NeuronSet):
        return ",".join(f"{k}={units.count(k)}" for k in units.kinds if units.count(k))
    return ",".join(f"L{layer}={int((units.layers == layer).sum())}" for layer in sorted(set(units.layers.tolist())))


def _keys(units: Any) -> set[tuple[int, int]]:
    return set(zip(units.layers.tolist(), units.features.tolist()))


def overlap(a: Any, b: Any) -> tuple[int, int]:
    """(|A and B|, |A or B|) of two sets of one kind."""
    if isinstance(a, NeuronSet):
        return (a & b).count(), (a | b).count()
    ka, kb = _keys(a), _keys(b)
    return len(ka & kb), len(ka | kb)


def in_layer(units: Any, layer: int) -> Any:
    return units.restrict([layer])


def feature_chance_jaccard(a: Any, b: Any) -> float:
    """Expected |A and B| / expected |A or B| of random feature sets with the counts of ``a`` and
    ``b`` per layer, out of each layer's dictionary width."""
    inter = union = 0.0
    for layer in sorted(set(a.layers.tolist()) | set(b.layers.tolist())):
        na, nb = int((a.layers == layer).sum()), int((b.layers == layer).sum())
        both = na * nb / a.books[layer].width
        inter += both
        union += na + nb - both
    return inter / union if union else 1.0


def aligned_means(full: Any, means: torch.Tensor, units: Any) -> torch.Tensor:
    """The entries of ``means`` (one per unit of the whole dictionary ``full``) of the features of
    ``units``, in ``units``' order."""
    index = {key: i for i, key in enumerate(zip(full.layers.tolist(), full.features.tolist()))}
    try:
        ids = [index[key] for key in zip(units.layers.tolist(), units.features.tolist())]
    except KeyError as err:
        raise ValueError(f"feature {err.args[0][1]} of layer {err.args[0][0]} is not in the dictionary") from None
    return means[torch.tensor(ids, dtype=torch.long)]


__all__ = ["Arm", "NEURONS", "SAE_PREFIX", "UnitKind", "aligned_means", "arms_of", "feature_chance_jaccard",
           "dictionary_digest", "feature_parts", "feature_settings", "in_layer", "kinds_text", "overlap",
           "parse_units", "random_like", "read_unit_kinds", "scores_kind", "tensor_digest", "units_digest"]
