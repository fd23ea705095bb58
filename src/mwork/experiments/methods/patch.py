"""Mean-patching: set neurons to a fixed value (their mean activation over all languages)
instead of zero, through one edit of the intervention primitive per hooked module, removed on exit.

Zeroing a neuron moves the model's activations where they never are; a shift of distribution
alone can hurt every language. Setting the neuron to its mean keeps it on the typical value and
removes only what varies with the input: if a set is really language-specific, patching it to
the mean over all languages should still hurt its language most.

Where: the neuron sites (``ffn.in``: the down projection's input; ``q.out`` / ``k.out`` /
``v.out``: the projections' outputs, fused ones through the site's feature index), the same
places deactivation zeroes. Dictionary features: each chosen feature's activation is set to its
mean over the detection texts (the same rule: the mean over the languages of each language's
token mean), through the dictionary's own edit, which keeps the reconstruction error.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from mwork.models.adapters import get_adapter
from mwork.neurons.neuronset import NeuronSet
from mwork.units.edit import Intervention, UnitEdit
from mwork.units.neurons import neuron_groups

#: the key of ``MeanPatch``'s means for a dictionary's features
FEATURES = "features"

MEAN_RULE = ("mean-patching: each neuron of the set is set, at every token, to its mean activation at its neuron site "
             "(ffn.in, q.out, k.out, v.out) over the detection corpora: the mean over the languages of each "
             "language's mean over its text tokens")


class MeanPatch(Intervention):
    """Context manager: inside it, the neurons of ``neurons`` take the values ``means[kind]``
    ((layers, neurons) per kind) at every token; the model is unchanged outside. A ``set`` edit of
    the one intervention primitive (``mwork.units.edit``), one per hooked module. For a dictionary
    subset (``mwork.units.Dictionary``), ``means["features"]`` holds one value per unit of the set,
    in its order."""

    what = "mean-patching"

    def __init__(self, model: torch.nn.Module, neurons: NeuronSet | Any, means: Mapping[str, torch.Tensor]):
        neurons.check_compatible(model)
        edits = []
        if not isinstance(neurons, NeuronSet):
            if FEATURES not in means or means[FEATURES].numel() != neurons.count():
                raise ValueError(f"mean-patching {neurons.count()} features needs one mean per feature "
                                 f"(means[{FEATURES!r}])")
            values = means[FEATURES].to(torch.float64)
            for group in neurons.groups(model):
                ids = torch.cat([ids for *_, ids in group.parts])
                edits.append(UnitEdit(group, "set", shift=values[ids]))
            self.count = neurons.count()
            super().__init__(model, edits)
            return
        for group in neuron_groups(get_adapter(model), neurons):
            missing = [kind for kind, *_ in group.parts if kind not in means]
            if missing:
                raise ValueError(f"no mean activations for {missing[0]} neurons")
            values = torch.cat([means[kind][layer, channels].to(torch.float64) for kind, layer, channels in group.parts])
            edits.append(UnitEdit(group, "set", shift=values))
        self.count = neurons.count()
        super().__init__(model, edits)
