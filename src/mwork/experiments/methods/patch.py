"""Mean-patching: set neurons to a fixed value (their mean activation over all languages)
instead of zero, through one ``mwork.hooks`` edit per hooked module, removed on exit.

Zeroing a neuron moves the model's activations where they never are; a shift of distribution
alone can hurt every language. Setting the neuron to its mean keeps it on the typical value and
removes only what varies with the input: if a set is really language-specific, patching it to
the mean over all languages should still hurt its language most.

Where: the neuron sites (``ffn.in``: the down projection's input; ``q.out`` / ``k.out`` /
``v.out``: the projections' outputs, fused ones through the site's feature index), the same
places deactivation zeroes.
"""

from __future__ import annotations

from typing import Mapping

import torch

from mwork.hooks import DeviceCache, Hooks
from mwork.models.adapters import get_adapter
from mwork.neurons.neuronset import NeuronSet

MEAN_RULE = ("mean-patching: each neuron of the set is set, at every token, to its mean activation at its neuron site "
             "(ffn.in, q.out, k.out, v.out) over the detection corpora: the mean over the languages of each "
             "language's mean over its text tokens")


class _SetFeatures:
    """An edit that writes fixed values into some features of a site's tensor (out of place)."""

    def __init__(self, index: torch.Tensor, values: torch.Tensor):
        self.index = DeviceCache(index)
        self.values = DeviceCache(values, keep_dtype=False)
        self.n = len(index)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        source = self.values.on(x).expand(*x.shape[:-1], self.n)
        return x.index_copy(-1, self.index.on(x), source)


class MeanPatch:
    """Context manager: inside it, the neurons of ``neurons`` take the values ``means[kind]``
    ((layers, neurons) per kind) at every token; the model is unchanged outside."""

    def __init__(self, model: torch.nn.Module, neurons: NeuronSet, means: Mapping[str, torch.Tensor]):
        neurons.check_compatible(model)
        adapter = get_adapter(model)
        per_module: dict[int, tuple] = {}
        for kind in neurons.kinds:
            for layer in range(neurons.num_layers):
                channels = neurons.indices(kind, layer)
                if channels.numel() == 0:
                    continue
                if kind not in means:
                    raise ValueError(f"no mean activations for {kind} neurons")
                site = adapter.neuron_site(kind, layer)
                entry = per_module.setdefault(id(site.module), (site, [], []))
                entry[1].append(site.features(channels))
                entry[2].append(means[kind][layer, channels].to(torch.float64))
        self.count = neurons.count()
        self.hooks = Hooks()
        for site, features, values in per_module.values():
            self.hooks.edit(site, _SetFeatures(torch.cat(features), torch.cat(values)))

    def __enter__(self) -> "MeanPatch":
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.__exit__(*exc)
