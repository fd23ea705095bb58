"""Which neurons an evaluation switches off, in one place for ``mwork ppl`` and ``mwork eval``
(and the ``lm_eval --model mwork`` backend): the options (a NeuronSet, or random neurons like
one, restricted to layers and kinds, zeroed or scaled, on a model with a delta merged) and the
set they name."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from mwork.config import option
from mwork.intervene import parse_kinds, parse_layers
from mwork.jobs import ModelOptions
from mwork.neurons.neuronset import NeuronSet, require_neurons


@dataclass(frozen=True, kw_only=True)
class SwitchOffOptions(ModelOptions):
    """The model (a delta merged at load) and what to switch off in it: the fields every
    evaluation config starts with."""

    neurons: str | None = option(None, "NeuronSet to switch off")
    random_like: str | None = option(None, "switch off random neurons, same count per layer and kind as this "
                                     "NeuronSet (never its own neurons where enough others remain)")
    seed: int | None = option(None, "seed of --random-like (default 0)")
    layers: str | None = option(None, "restrict the set to these layers, e.g. 0-5 or 0,3,7-9")
    kinds: str | None = option(None, "restrict the set to these kinds: ffn,q,k,v (attn = q,k,v)")
    scale: float = option(0.0, "multiply the neurons by this instead of zeroing")
    delta: str | None = option(None, "merge this enhancement delta (a folder written by `mwork enhance`) into the model")

    def __post_init__(self) -> None:
        """The options' rules, checked before anything is loaded."""
        if self.neurons and self.random_like:
            raise ValueError("give --neurons or --random-like, not both")
        if (self.layers or self.kinds) and not (self.neurons or self.random_like):
            raise ValueError("--layers/--kinds restrict a neuron set: give --neurons or --random-like too")
        if self.seed is not None and not self.random_like:
            raise ValueError("--seed applies only with --random-like")
        if not math.isfinite(self.scale):
            raise ValueError(f"--scale must be a finite number, got {self.scale}")
        if abs(self.scale) > 3.4028234663852886e38:  # torch.finfo(torch.float32).max
            raise ValueError(f"--scale {self.scale:g} is beyond float32's range (|scale| <= 3.4e+38): the scaled "
                             "activations could not be represented")
        if self.scale != 0.0 and not (self.neurons or self.random_like):
            raise ValueError(f"--scale {self.scale:g} scales a neuron set: give --neurons or --random-like too")
        parse_layers(self.layers), parse_kinds(self.kinds)  # a bad spec fails here, before any loading

    def load(self) -> tuple[Any, Any]:
        """The model with ``delta`` merged (it can only be merged at load)."""
        from mwork.models.loading import load_model, parse_device_map

        self.check_model_options()
        return load_model(self.model, dtype=self.dtype, device=self.device, delta=self.delta,
                          device_map=parse_device_map(self.device_map))

    def check_given_model(self, model: Any, tokenizer: Any) -> None:
        """A model passed in instead of loaded: it comes with its tokenizer, and without a delta
        to merge (that happens at load)."""
        if self.delta:
            raise ValueError("a delta is merged when the model is loaded: pass no model, or one with the delta merged")
        if tokenizer is None:
            raise ValueError("give the tokenizer with the model (or neither, to load the config's model)")

    def check_set(self) -> None:
        """The set's rules that need no model (``require_neurons``: a set with no neuron in the
        chosen layers and kinds is refused), for a run to check before anything slow is loaded;
        ``neurons_to_switch_off`` applies the same rule again with the model."""
        spec = self.neurons or self.random_like
        if spec:
            layer_list, kind_list = parse_layers(self.layers), parse_kinds(self.kinds)
            restricted = layer_list is not None or kind_list is not None
            ns = NeuronSet.load(spec)
            require_neurons(ns.restrict(layer_list, kind_list) if restricted else ns, "switch off", str(spec),
                            restricted)


def neurons_to_switch_off(model: torch.nn.Module, neurons: str | NeuronSet | None = None,
                          random_like: str | NeuronSet | None = None, seed: int | None = None,
                          layers: Any = None, kinds: Any = None) -> tuple[NeuronSet | None, dict[str, Any]]:
    """The set to switch off and what to record about it: a set (``neurons``) or random neurons
    like one (``random_like``, ``seed`` default 0, never the source's own neurons where enough
    others remain), restricted to ``layers`` / ``kinds``; ``(None, {})`` when neither is given."""
    if neurons is not None and random_like is not None:
        raise ValueError("give neurons or random_like, not both")
    if (layers is not None or kinds is not None) and neurons is None and random_like is None:
        raise ValueError("layers/kinds restrict a neuron set: give neurons or random_like too")
    if seed is not None and random_like is None:
        raise ValueError("seed applies only with random_like")
    layer_list, kind_list = parse_layers(layers), parse_kinds(kinds)
    source_spec = neurons if neurons is not None else random_like
    if source_spec is None:
        return None, {}
    source = source_spec if isinstance(source_spec, NeuronSet) else NeuronSet.load(source_spec, model)
    restricted = layer_list is not None or kind_list is not None
    chosen = source.restrict(layer_list, kind_list) if restricted else source
    # the one rule of steer, eval and ppl: a set with no neuron is refused, not run as the unchanged model
    require_neurons(chosen, "switch off", None if isinstance(source_spec, NeuronSet) else str(source_spec), restricted)
    info: dict[str, Any] = {}
    if random_like is not None:
        seed = 0 if seed is None else int(seed)
        chosen = chosen.random_like(seed, exclude=source)
        info.update(random_like=str(random_like) if not isinstance(random_like, NeuronSet) else "NeuronSet", seed=seed)
    else:
        info["neurons"] = str(neurons) if not isinstance(neurons, NeuronSet) else "NeuronSet"
    info.update(deactivated=chosen.count(), deactivated_per_kind={k: chosen.count(k) for k in chosen.kinds},
                layers=layer_list, kinds=kind_list)
    return chosen, info
