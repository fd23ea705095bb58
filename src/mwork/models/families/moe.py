"""Mixture-of-experts families: Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, PhiMoE, GraniteMoE.

Their attention is a Llama-family attention (answered by the dense adapters they derive from);
their FFN is a sparse block: a router picks ``k`` of ``E`` experts per token, each a gated MLP
of ``I`` channels, and the block sums the chosen experts' outputs times their routing weights
(Qwen2-MoE adds a shared expert every token goes through, times a sigmoid gate).

**An FFN neuron is (layer, expert, channel).** It is addressed as FFN channel ``e * I + k`` of its
layer (the shared expert's ``S`` channels last), so NeuronSets, deactivation, steering,
statistics and the neuron sites keep their shapes: ``neuron_counts()["ffn"] == E * I + S`` and
``fingerprint()["experts"]`` records the layout. The experts' weights are 3-D parameters of one
module, so the FFN sites (``ffn.up.out``, ``ffn.act``, ``ffn.in``, ``ffn.out``) and the MoE-only
``ffn.gate.out`` and ``ffn.route`` are points of the block's computation
(:mod:`mwork.models.families.moe_block`): a client that reads or edits them makes the hook layer
compute the block a second time, from its input, with the edits applied.

Enhancement: an expert neuron owns row ``k`` of expert ``e``'s gate and up projections and column
``k`` of its down projection (:class:`ExpertSlice`); deltas act at ``ffn.gate.out`` /
``ffn.up.out`` (adding ``x @ dW.T``) and at ``ffn.out`` (adding ``(r h) @ dW.T``, r the routing
weight), which is what the merged weights compute.

Layers that are dense MLPs in a MoE model (Qwen-MoE's ``mlp_only_layers``,
``decoder_sparse_step`` > 1) are refused: a NeuronSet needs one FFN width for every layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mwork.hooks import MOE_SITES, Site
from mwork.models.adapters import ChannelSite, NeuronSlice, UnsupportedModelError
from mwork.models.families.llama import GraniteAdapter, LlamaAdapter, Olmo2Adapter
from mwork.models.families.moe_block import MoeComputation, MoeParts, Routing

__all__ = ["ExpertSlice", "MoeParts", "Routing", "MixtralAdapter", "Qwen2MoeAdapter", "Qwen3MoeAdapter",
           "OlmoeAdapter", "PhimoeAdapter", "GraniteMoeAdapter", "ParamPart"]

#: sites of a MoE layer that are points of the block's computation
_COMPUTED = ("ffn.gate.out", "ffn.up.out", "ffn.act", "ffn.in", "ffn.out", "ffn.route")
#: enhancement: where each role's delta acts, and on which side of the virtual linear map
_ROLES = {"gate": ("ffn.gate.out", "out"), "up": ("ffn.up.out", "out"), "down": ("ffn.out", "in")}


@dataclass(frozen=True)
class ExpertSlice(NeuronSlice):
    """Parameters owned by expert FFN channels: the slice of a virtual linear map over every
    expert channel (gate / up: (C, D) rows; down: (D, C) columns), reached through the point
    ``site`` of the block's computation rather than a module of its own. ``index``: channel c
    is feature ``index[c]`` of the site's tensor (the identity). ``in_features`` /
    ``out_features``: the virtual map's shape in nn.Linear terms."""

    site: str = ""
    in_features: int = 0
    out_features: int = 0


@dataclass(frozen=True)
class ParamPart:
    """Where rows ``rows`` of an expert slice's delta live in the model: ``param[index]`` is a
    (len(rows), D) block of the parameter ``name`` (``transposed``: (D, len(rows)))."""

    name: str
    param: nn.Parameter
    index: tuple
    rows: torch.Tensor
    transposed: bool = False


class MoeAdapterMixin:
    """What a MoE family adds to its attention family's adapter (see the module docstring).
    Subclasses say where the block, router and shared expert are (``moe_block`` / ``router_name``
    / ``shared_name``)."""

    moe_block: ClassVar[str] = "mlp"  # the decoder layer's attribute holding the sparse block
    router_name: ClassVar[str] = "gate"
    shared_name: ClassVar[str | None] = None  # the block's shared expert (and "<name>_gate")

    def __init__(self, model: nn.Module):
        super().__init__(model)  # type: ignore[call-arg]
        self._parts: dict[int, MoeParts] = {}
        self._computations: dict[int, MoeComputation] = {}
        shapes = {(p.num_experts, p.expert_size, p.shared_size) for p in map(self.moe_parts, range(self.num_layers))}
        if len(shapes) != 1:
            raise UnsupportedModelError(f"the MoE layers of this {self.config.model_type} model differ in shape "
                                        f"({sorted(shapes)}); mwork needs one FFN width for every layer")

    # ---- where the parts are ---------------------------------------------------------
    def moe_parts(self, layer: int) -> MoeParts:
        """The block, router, experts and shared expert of ``layer``."""
        if layer not in self._parts:
            block = getattr(self.layers[layer], self.moe_block)
            if not hasattr(block, "experts"):
                raise UnsupportedModelError(
                    f"layer {layer} of this {self.config.model_type} model is a dense MLP, not a mixture-of-experts "
                    f"block (mlp_only_layers / decoder_sparse_step): mwork needs every layer's FFN to have the same "
                    f"neurons; use a config whose layers are all sparse")
            shared = getattr(block, self.shared_name) if self.shared_name else None
            gate = getattr(block, f"{self.shared_name}_gate") if self.shared_name else None
            self._parts[layer] = MoeParts(block, getattr(block, self.router_name), block.experts, shared, gate)
        return self._parts[layer]

    def computation(self, layer: int) -> MoeComputation:
        if layer not in self._computations:
            self._computations[layer] = MoeComputation(self.moe_parts(layer))
        return self._computations[layer]

    @property
    def num_experts(self) -> int:
        return self.moe_parts(0).num_experts

    @property
    def expert_size(self) -> int:
        return self.moe_parts(0).expert_size

    @property
    def shared_expert_size(self) -> int:
        return self.moe_parts(0).shared_size

    @property
    def experts_per_token(self) -> int:
        return self.moe_parts(0).top_k

    @property
    def ffn_size(self) -> int:
        return self.moe_parts(0).channels

    def expert_channels(self) -> torch.Tensor:
        """(C,) the expert of each FFN channel (``num_experts`` for the shared expert's)."""
        E, I, S = self.num_experts, self.expert_size, self.shared_expert_size
        return torch.cat([torch.arange(E).repeat_interleave(I), torch.full((S,), E, dtype=torch.long)])

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()  # type: ignore[misc]
        fp["experts"] = {"num_experts": self.num_experts, "experts_per_token": self.experts_per_token,
                         "expert_size": self.expert_size, "shared_expert_size": self.shared_expert_size,
                         "ffn_channel": "expert * expert_size + channel; the shared expert's channels last"}
        return fp

    # ---- the FFN as the sites see it -------------------------------------------------
    def mlp_down(self, layer: int) -> nn.Module:
        """The sparse block: no module reads the expert channels, the block computes them."""
        return self.moe_parts(layer).block

    def down_weight(self, layer: int) -> torch.Tensor:
        """W_down over every expert channel, (hidden, C): column e * I + k is what expert e's
        channel k writes (before its routing weight); the shared expert's columns last."""
        p = self.moe_parts(layer)
        w = p.experts.down_proj  # (E, D, I)
        cols = [w.permute(1, 0, 2).reshape(w.shape[1], -1)]
        if p.shared is not None:
            cols.append(p.shared.down_proj.weight)
        return torch.cat(cols, dim=1)

    def channel_site(self, layer: int, kind: str) -> ChannelSite:
        if kind == "ffn":
            return ChannelSite(self.mlp_down(layer), torch.arange(self.ffn_size), on_input=True)
        return super().channel_site(layer, kind)  # type: ignore[misc]

    def ffn_act(self, layer: int) -> nn.Module:
        return self.moe_parts(layer).experts.act_fn

    def ffn_in_modules(self, layer: int) -> dict[str, nn.Module]:
        raise NotImplementedError("the expert channels of a mixture-of-experts layer are rows of 3-D expert "
                                  "parameters, not a module's outputs: use the ffn.gate.out / ffn.up.out sites "
                                  "and Adapter.neuron_slices")

    def ffn_in_sites(self, layer: int) -> dict[str, ChannelSite]:
        return self.ffn_in_modules(layer)  # type: ignore[return-value]

    def site(self, name: str, layer: int | None = None) -> Site:
        if name not in MOE_SITES:
            return super().site(name, layer)  # type: ignore[misc]
        if layer is None or not 0 <= layer < self.num_layers:
            raise ValueError(f"site {name!r} needs a layer in 0..{self.num_layers - 1}, got {layer}")
        key = (name, layer)
        if key not in self._sites:
            self._sites[key] = self._computed_site(name, layer)
        return self._sites[key]

    def _layer_site(self, name: str, layer: int) -> Site:
        if name in _COMPUTED:
            return self._computed_site(name, layer)
        return super()._layer_site(name, layer)  # type: ignore[misc]

    def _computed_site(self, name: str, layer: int) -> Site:
        comp = self.computation(layer)
        width = None if name == "ffn.route" else self.hidden_size if name == "ffn.out" else self.ffn_size
        port = "in" if name == "ffn.in" else "out"  # as the dense sites: ffn.in is the down projection's input
        return Site(name, layer, comp.module, port, computation=comp, width=width)

    # ---- enhancement slices ----------------------------------------------------------
    def neuron_slices(self, layer: int, kind: str) -> list[NeuronSlice]:
        if kind != "ffn":
            return super().neuron_slices(layer, kind)  # type: ignore[misc]
        C, D, block = self.ffn_size, self.hidden_size, self.moe_parts(layer).block
        idx = torch.arange(C)
        return [ExpertSlice(block, idx, side, role, False, site=site,
                            in_features=D if side == "out" else C, out_features=C if side == "out" else D)
                for role, (site, side) in _ROLES.items()]

    def expert_parameters(self, layer: int, role: str, channels: torch.Tensor) -> list[ParamPart]:
        """Where the delta rows of expert channels ``channels`` (of one ``role``: gate, up, down)
        live in the model's parameters (``ParamPart``); a delta's merge and its element masks
        follow from these."""
        p = self.moe_parts(layer)
        E, I = p.num_experts, p.expert_size
        names = {id(q): n for n, q in self.model.named_parameters()}
        channels = torch.as_tensor(channels, dtype=torch.long)
        rows = torch.arange(len(channels))
        routed = channels < E * I
        parts = []
        if bool(routed.any()):
            e, k = channels[routed] // I, channels[routed] % I
            if role == "down":
                param, index = p.experts.down_proj, (e, slice(None), k)
            else:
                param, index = p.experts.gate_up_proj, (e, k if role == "gate" else k + I)
            parts.append(ParamPart(names[id(param)], param, index, rows[routed]))
        if bool((~routed).any()):
            k = channels[~routed] - E * I
            if p.shared is None or int(k.max()) >= p.shared_size:
                raise ValueError(f"FFN channel {int(channels.max())} is out of range: layer {layer} has "
                                 f"{p.channels} expert channels")
            lin = {"gate": p.shared.gate_proj, "up": p.shared.up_proj, "down": p.shared.down_proj}[role]
            index = (slice(None), k) if role == "down" else (k,)
            parts.append(ParamPart(names[id(lin.weight)], lin.weight, index, rows[~routed], transposed=role == "down"))
        return parts


# ---- the families -------------------------------------------------------------------------------


class MixtralAdapter(MoeAdapterMixin, LlamaAdapter):
    """Mixtral: Mistral attention (a sliding window when the config has one), ``k`` of ``E``
    experts with their softmax weights renormalised over the chosen ones."""

    model_types = ("mixtral",)
    family = "mixtral"


class Qwen2MoeAdapter(MoeAdapterMixin, LlamaAdapter):
    """Qwen2-MoE (Qwen1.5-MoE): Qwen2 attention (q/k/v biases, a sliding window on the layers
    ``layer_types`` says), softmax routing weights (renormalised if ``norm_topk_prob``), and a
    shared expert times sigmoid(``shared_expert_gate``) whose channels come after the experts'."""

    model_types = ("qwen2_moe",)
    family = "qwen2_moe"
    shared_name = "shared_expert"

    def sliding_window(self, layer: int) -> int | None:
        return getattr(self.attention(layer), "sliding_window", None)  # only sliding layers have one


class Qwen3MoeAdapter(MoeAdapterMixin, LlamaAdapter):
    """Qwen3-MoE: Qwen3 attention (per-head RMS QK-norm), softmax routing weights
    (renormalised if ``norm_topk_prob``)."""

    model_types = ("qwen3_moe",)
    family = "qwen3_moe"


class OlmoeAdapter(MoeAdapterMixin, Olmo2Adapter):
    """OLMoE: OLMo-2's RMS QK-norm over the whole q (k) projection, then ``clip_qkv`` clamps the
    normed q, k and the raw v (so Q/K take the generic path when it is set)."""

    model_types = ("olmoe",)
    family = "olmoe"

    def apply_qk_norm(self, layer: int, which: int, x: torch.Tensor, heads: slice | None = None) -> torch.Tensor:
        y = super().apply_qk_norm(layer, which, x, heads)
        clip = getattr(self.config, "clip_qkv", None)
        return y if clip is None else y.clamp(min=-clip, max=clip)


class PhimoeAdapter(MoeAdapterMixin, LlamaAdapter):
    """PhiMoE: LayerNorms, biased attention and LM head, top-2 routing by ``sparsemixer`` (in
    eval mode the two best experts, each weighted by its softmax over the experts within
    the jitter threshold)."""

    model_types = ("phimoe",)
    family = "phimoe"
    router_name = "router"


class GraniteMoeAdapter(MoeAdapterMixin, GraniteAdapter):
    """GraniteMoE: Granite's multipliers (embeddings, attention scores, residuals, logits) around
    a sparse block ``block_sparse_moe`` whose weights are the softmax over the chosen experts'
    logits."""

    model_types = ("granitemoe",)
    family = "granitemoe"
    moe_block = "block_sparse_moe"
    router_name = "router"


MOE_FAMILIES = (MixtralAdapter, Qwen2MoeAdapter, Qwen3MoeAdapter, OlmoeAdapter, PhimoeAdapter, GraniteMoeAdapter)
