"""Architecture adapters: the one place that knows where things live in each model family.

Every other module asks an adapter ("which module produces the Q channels of layer 3?",
"what is the attention scale?") and never branches on ``model_type`` itself. To support a
new family, subclass :class:`Adapter`, answer its structural questions (layers, attention,
projections, norms, score function) and register it with :func:`register_adapter` -- from your
own code, or from a package through the ``mwork.adapters`` entry point group; no edit of mwork.
The named hook sites (``Adapter.site``, see :mod:`mwork.hooks`) follow from those answers.
mwork's own families live in :mod:`mwork.models.families` (imported, and so registered, by the
package :mod:`mwork.models`, which runs before this module is imported from anywhere).

Neuron kinds (see DESIGN.md):

* ``ffn``: input feature k of the MLP down projection (the FFN hidden state ``h_ffn[:, k]``).
* ``q`` / ``k`` / ``v``: output channel k of W_Q / W_K / W_V, before QK-norm and RoPE. Channel
  ``c`` belongs to head ``c // head_dim``. Fused projections are split by ``channel_index``.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from mwork.hooks import NEURON_SITES, SITES, Site
from mwork.registry import Registry

KINDS: tuple[str, ...] = ("ffn", "q", "k", "v")


class UnsupportedModelError(ValueError):
    """Raised for a model family no adapter knows."""


@dataclass(frozen=True)
class ChannelSite:
    """Where the channels of one neuron kind live: ``module``'s output (or input, for ``ffn``)
    features ``index[c]`` hold channel ``c``."""

    module: nn.Module
    index: torch.Tensor  # LongTensor (n_channels,)
    on_input: bool = False  # True for ffn: the channels are the module's *input* features


@dataclass(frozen=True)
class NeuronSlice:
    """Parameters owned by neuron channels in one module: channel ``c`` owns feature
    ``index[c]`` on ``side`` -- ``"out"``: that output feature's weight row and bias element;
    ``"in"``: that input feature's weight column. ``transposed``: the weight is stored
    (in, out) (GPT-2 Conv1D) instead of (out, in) (nn.Linear)."""

    module: nn.Module
    index: torch.Tensor  # LongTensor (n_channels,)
    side: str  # "out" | "in"
    role: str  # "gate", "up", "down", "q", "k", "v"
    transposed: bool = False


@dataclass
class AttentionContext:
    """What one attention call saw, captured by a forward pre-hook on the attention module."""

    hidden_states: torch.Tensor  # (B, L, D) input of the attention block (after its pre-norm)
    cos: torch.Tensor | None = None  # RoPE tables as the model passed them (None: no RoPE here)
    sin: torch.Tensor | None = None
    alibi: torch.Tensor | None = None  # ALiBi as (B*H, 1, L), in the model's units (see score_bias)
    layer: int | None = None  # the decoder layer of this call


class Adapter:
    """Base class; one subclass per architecture family."""

    model_types: ClassVar[tuple[str, ...]] = ()
    family: ClassVar[str] = ""
    position_encoding: ClassVar[str] = "rope"  # "rope" | "alibi" | "learned" (incl. sinusoidal)
    weights_transposed: ClassVar[bool] = False  # projection weights stored (in, out) (GPT-2 Conv1D)
    #: how a decoder layer combines its parts (see ``combine``): "sequential" (attention, then the
    #: FFN on the updated stream) or "parallel" (attention and FFN both read the layer input)
    block: ClassVar[str] = "sequential"
    #: where the modules are, as dotted attribute paths: ``layers``, ``embed`` and ``final_norm``
    #: from the model; ``attention``, ``o_proj``, ``down``, ``up``, ``gate``, ``act`` and ``q`` /
    #: ``k`` / ``v`` (separate projections) from a decoder layer. They answer the structural
    #: questions below; a family overrides a method only where its layout is not a plain path.
    paths: ClassVar[dict[str, str]] = {}

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config
        self._sites: dict[tuple[str, int | None], Site] = {}

    def _module(self, key: str, layer: int | None = None) -> nn.Module:
        if key not in self.paths:
            raise NotImplementedError(f"{type(self).__name__} does not say where its {key!r} module is: set "
                                      f"paths[{key!r}] or override the method that answers it")
        module = self.model if layer is None else self.layers[layer]
        for name in self.paths[key].split("."):
            module = getattr(module, name)
        return module

    # ---- structure -------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:
        return self._module("layers")

    @property
    def embed(self) -> nn.Module:
        """The module whose output is the layer-0 hidden state (token embeddings after any
        scaling, plus positions). Families that add positions or scale the embeddings outside
        any module answer with their token embedding here and override ``embed_site``."""
        return self._module("embed")

    @property
    def embed_site(self) -> Site:
        """Where the layer-0 hidden state is, as the model computes it (after embedding scaling
        and positions): ``embed``'s output, or the first decoder layer's input where no module
        returns it (OPT, XGLM, Granite)."""
        return Site("embed", None, self.embed, "out")

    def _first_layer_input(self) -> Site:
        return Site("embed", None, self.layers[0], "in", arg="hidden_states")

    @property
    def final_norm(self) -> nn.Module:
        return self._module("final_norm")

    @property
    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    @property
    def body(self) -> nn.Module:
        """The decoder stack without the LM head: calling it returns the final hidden states
        (for analyses that never need logits, e.g. neuron importance)."""
        return self.model.base_model

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def num_kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.num_heads)

    @property
    def head_dim(self) -> int:
        return int(getattr(self.config, "head_dim", None) or self.hidden_size // self.num_heads)

    @property
    def kv_group_size(self) -> int:
        """Query heads per K/V head (1 without GQA)."""
        return self.num_heads // self.num_kv_heads

    @property
    def ffn_size(self) -> int:
        return int(self.down_weight(0).shape[1])

    def neuron_counts(self) -> dict[str, int]:
        """Neurons per layer of each kind."""
        return {
            "ffn": self.ffn_size,
            "q": self.num_heads * self.head_dim,
            "k": self.num_kv_heads * self.head_dim,
            "v": self.num_kv_heads * self.head_dim,
        }

    def total_neurons(self) -> int:
        return self.num_layers * sum(self.neuron_counts().values())

    def fingerprint(self) -> dict[str, Any]:
        """Shape facts a NeuronSet must match to be applied to this model."""
        return {
            "family": self.family,
            "model_type": self.config.model_type,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "neurons_per_layer": self.neuron_counts(),
        }

    def attention(self, layer: int) -> nn.Module:
        """The module whose call computes q, k, v and the scores (its input: ``attn.in``)."""
        return self._module("attention", layer)

    def mlp_down(self, layer: int) -> nn.Module:
        """The module whose input features are the FFN neurons."""
        return self._module("down", layer)

    def o_proj(self, layer: int) -> nn.Module:
        """The attention output projection (input: heads concatenated, head-major)."""
        return self._module("o_proj", layer)

    def down_weight(self, layer: int) -> torch.Tensor:
        """W_down as (hidden, ffn): column k is what FFN neuron k writes."""
        return self.mlp_down(layer).weight

    def o_weight(self, layer: int) -> torch.Tensor:
        """W_O as (hidden, heads * head_dim)."""
        return self.o_proj(layer).weight

    def channel_site(self, layer: int, kind: str) -> ChannelSite:
        """Where the channels of ``kind`` live in layer ``layer``."""
        if kind == "ffn":
            down = self.mlp_down(layer)
            return ChannelSite(down, torch.arange(self.ffn_size), on_input=True)
        return self._qkv_site(layer, kind)

    def _qkv_site(self, layer: int, kind: str) -> ChannelSite:
        """Separate projections (``paths["q"]`` ...): channel c is output feature c; fused ones
        override this with their layout."""
        proj = self._module(kind, layer)
        return ChannelSite(proj, torch.arange(proj.weight.shape[1 if self.weights_transposed else 0]))

    def site(self, name: str, layer: int | None = None) -> Site:
        """The hook site ``name`` (see ``mwork.hooks.SITES``) of decoder layer ``layer``
        (``final_norm.in`` has none). Built from the structural answers above, once."""
        key = (name, layer)
        if key not in self._sites:
            if name not in SITES:
                raise ValueError(f"unknown site {name!r}; sites are {', '.join(SITES)}")
            if name == "final_norm.in":
                self._sites[key] = Site(name, None, self.final_norm, "in", arg="hidden_states")
            else:
                if layer is None or not 0 <= layer < self.num_layers:
                    raise ValueError(f"site {name!r} needs a layer in 0..{self.num_layers - 1}, got {layer}")
                self._sites[key] = self._layer_site(name, layer)
        return self._sites[key]

    def neuron_site(self, kind: str, layer: int) -> Site:
        """Where the neurons of ``kind`` live in ``layer`` (``ffn.in``, ``q.out`` ...)."""
        if kind not in NEURON_SITES:
            raise ValueError(f"unknown neuron kind {kind!r}; kinds are {', '.join(KINDS)}")
        return self.site(NEURON_SITES[kind], layer)

    def _layer_site(self, name: str, layer: int) -> Site:
        if name in ("layer.in", "layer.out"):
            return Site(name, layer, self.layers[layer], name.split(".")[1], arg="hidden_states")
        if name == "attn.in":
            return Site(name, layer, self.attention(layer), "in", arg="hidden_states",
                        context=lambda args, kwargs: self.attention_context(layer, args, kwargs))
        if name == "attn.out":
            return Site(name, layer, self.attention(layer), "out")
        if name in ("q.out", "k.out", "v.out"):
            cs = self.channel_site(layer, name[0])
            identity = torch.equal(cs.index, torch.arange(len(cs.index)))
            width = getattr(cs.module, "out_features", None) or getattr(cs.module, "nf", None)
            return Site(name, layer, cs.module, "out", index=None if identity and width == len(cs.index) else cs.index)
        if name in ("attn.ctx", "o.out"):
            return Site(name, layer, self.o_proj(layer), "in" if name == "attn.ctx" else "out")
        if name == "ffn.up.out":
            up = self.ffn_in_sites(layer)["up"]
            identity = torch.equal(up.index, torch.arange(len(up.index)))
            width = getattr(up.module, "out_features", None) or getattr(up.module, "nf", None)
            return Site(name, layer, up.module, "out", index=None if identity and width == len(up.index) else up.index,
                        tokens_from=self._tokens_from(layer))
        if name == "ffn.act":
            return Site(name, layer, self.ffn_act(layer), "out", tokens_from=self._tokens_from(layer))
        if name in ("ffn.in", "ffn.out"):
            return Site(name, layer, self.mlp_down(layer), "in" if name == "ffn.in" else "out",
                        tokens_from=self._tokens_from(layer))
        raise ValueError(f"site {name!r} has no layer form")

    #: the model runs its FFN on (batch * tokens, features) (OPT): the FFN sites say so, and the
    #: hook layer gives clients (batch, tokens, features) all the same
    ffn_flattens_tokens: ClassVar[bool] = False

    def _tokens_from(self, layer: int) -> Site | None:
        return self.site("layer.in", layer) if self.ffn_flattens_tokens else None

    def ffn_act(self, layer: int) -> nn.Module:
        """The FFN's activation module (its output: act(W_gate x) for gated MLPs)."""
        return self._module("act", layer)

    def ffn_in_modules(self, layer: int) -> dict[str, nn.Module]:
        """The modules whose output feature k feeds FFN neuron k: ``{"gate": ..., "up": ...}``
        for gated MLPs, ``{"up": ...}`` otherwise."""
        return {role: self._module(role, layer) for role in ("gate", "up") if role in self.paths or role == "up"}

    def ffn_in_sites(self, layer: int) -> dict[str, ChannelSite]:
        """Like ``ffn_in_modules``, with the output features that feed each FFN neuron: feature
        k of each module by default; a fused gate_up projection (Phi-3) says which half is which."""
        idx = torch.arange(self.ffn_size)
        return {role: ChannelSite(m, idx) for role, m in self.ffn_in_modules(layer).items()}

    def neuron_slices(self, layer: int, kind: str) -> list[NeuronSlice]:
        """Which parameters belong to the neurons of ``kind`` (enhancement trains only these):
        FFN neuron k owns row k of W_gate / W_up (and bias element) and column k of W_down;
        a Q/K/V neuron owns its row of the projection (and bias element)."""
        t = self.weights_transposed
        if kind == "ffn":
            idx = torch.arange(self.ffn_size)
            rows = [NeuronSlice(cs.module, cs.index, "out", role, t) for role, cs in self.ffn_in_sites(layer).items()]
            return rows + [NeuronSlice(self.mlp_down(layer), idx, "in", "down", t)]
        site = self.channel_site(layer, kind)
        return [NeuronSlice(site.module, site.index, "out", kind, t)]

    # ---- how a layer combines its parts ----------------------------------------------
    def combine(self, layer: int, hidden: torch.Tensor, attn: torch.Tensor, ffn: torch.Tensor) -> torch.Tensor:
        """The layer's output from its input ``hidden`` (``layer.in``), the attention block's
        output ``attn`` (``o.out``) and the FFN's output ``ffn`` (``ffn.out``): the residual
        sum for pre-norm blocks, sequential or parallel. Families with post-norms (Gemma-2/3,
        OLMo-2), residual multipliers (Granite) or post-LN blocks (OPT-350m) say so here; the
        parity test checks it on every family."""
        return hidden + attn + ffn

    # ---- attention score function ----------------------------------------------------
    def qk_norms(self, layer: int) -> tuple[nn.Module | None, nn.Module | None]:
        """QK-norm modules (Qwen3, Gemma-3: per head; OLMo-2: over the whole projection, see
        ``qk_norm_scope``), applied before RoPE; else (None, None)."""
        return None, None

    def qk_norm_eps(self, layer: int) -> float | None:
        """Epsilon of the RMS-type QK-norm (y = g * x / sqrt(mean(x^2) + eps)); None without one."""
        return None

    def qk_norm_scope(self, layer: int) -> str:
        """What the QK-norm normalises: ``"head"`` (each head's channels) or ``"projection"``
        (all heads' channels together, before the head split: OLMo-2)."""
        return "head"

    def apply_qk_norm(self, layer: int, which: int, x: torch.Tensor, heads: slice | None = None) -> torch.Tensor:
        """What the model does to raw q (``which`` = 0) or k (1) channels before RoPE, or to raw v
        (2) before the attention (nothing, but for MPT's clipping): ``x`` is (..., h, n,
        head_dim) and holds the heads ``heads`` (query heads for q, KV heads for k and v; None:
        all of them). A ``"projection"``-scope norm needs every head."""
        norm = self.qk_norms(layer)[which] if which < 2 else None
        if norm is None:
            return x
        if self.qk_norm_scope(layer) == "projection":
            h, n, d = x.shape[-3:]
            flat = x.transpose(-3, -2).reshape(*x.shape[:-3], n, h * d)
            return norm(flat).reshape(*x.shape[:-3], n, h, d).transpose(-3, -2)
        return norm(x)

    def scaling(self, layer: int) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    def softcap(self, layer: int) -> float | None:
        """Attention logit soft-capping: scores -> cap * tanh(scores / cap) (Gemma-2)."""
        return None

    def sliding_window(self, layer: int) -> int | None:
        """Key j is visible from query i iff 0 <= i - j < window (None: no window)."""
        return None

    def uses_rope(self, layer: int) -> bool:
        """Whether this layer rotates q and k (False for NoPE layers: SmolLM3, Cohere-2's
        global layers, and for families without RoPE)."""
        return self.position_encoding == "rope"

    def rotary_dim(self, layer: int) -> int:
        """Leading channels of each head that RoPE rotates (the rest pass through). Which
        channels it pairs (rotate-half, or GPT-J's interleaved 2i / 2i+1) is read off the
        model's own RoPE by ``mwork.neurons.attention.Layout``."""
        return self.head_dim if self.uses_rope(layer) else 0

    def attention_context(self, layer: int, args: tuple, kwargs: dict) -> AttentionContext:
        """Pick the attention module's inputs out of a forward pre-hook call."""
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cos = sin = None
        pe = kwargs.get("position_embeddings")
        if pe is not None and self.uses_rope(layer):
            cos, sin = pe
        return AttentionContext(hidden_states=hidden, cos=cos, sin=sin, layer=layer)

    def apply_rope(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """Rotate ``x`` (B, H, L, head_dim) with the model's own RoPE function and tables; the
        channels past the tables' width pass through (partial RoPE)."""
        if self.position_encoding != "rope" or ctx.cos is None:
            return x
        return _partial(x, ctx.cos.shape[-1], lambda r: self._rope_function(r, ctx))

    def _rope_function(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        apply = self._modeling_function("apply_rotary_pos_emb")
        out, _ = apply(x, x, ctx.cos, ctx.sin)
        return out

    def score_bias(self, layer: int, ctx: AttentionContext, heads: slice | None = None) -> torch.Tensor | None:
        """Additive, content-independent score bias of shape (B, H, 1 or L, L) (ALiBi), or None;
        ``heads`` keeps only those query heads."""
        return None

    def scores(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, ctx: AttentionContext, heads: slice | None = None
    ) -> torch.Tensor:
        """Pre-mask attention scores from post-norm, post-RoPE q (B, H, L, d) and k (B, Hkv, L, d).

        Applies scaling, ALiBi bias and soft-capping, exactly as the model does; masking
        (causal, window, padding) is left to the caller (see :func:`attention_mask`).
        ``heads``: q holds only these query heads (whole KV groups) and k their KV heads, so
        callers can work one group at a time.
        """
        k = k.repeat_interleave(self.kv_group_size, dim=1)
        s = torch.matmul(q, k.transpose(-1, -2)) * self.scaling(layer)
        bias = self.score_bias(layer, ctx, heads)
        if bias is not None:
            s = s + bias.to(s.dtype)
        cap = self.softcap(layer)
        if cap:
            s = torch.tanh(s / cap) * cap
        return s

    def forward_kwargs(self, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra forward arguments that make results independent of the padding side."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return {"position_ids": position_ids}

    # ---- decoding (logit lens) -------------------------------------------------------
    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states of any layer -> logits, through the final norm and the LM head (and
        whatever the model does to its logits: scaling, soft-capping)."""
        return self.lm_head(self.final_norm(hidden))

    def _modeling_function(self, name: str) -> Callable:
        return getattr(sys.modules[type(self.model).__module__], name)


def _partial(x: torch.Tensor, rot: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn`` on the first ``rot`` channels of ``x``, the rest passed through."""
    if rot >= x.shape[-1]:
        return fn(x)
    return torch.cat([fn(x[..., :rot]), x[..., rot:]], dim=-1)


def attention_mask(
    attention_mask: torch.Tensor, window: int | None, dtype: torch.dtype = torch.bool
) -> torch.Tensor:
    """(B, 1, L, L) boolean mask, True where query i may attend key j: causal, within the
    sliding window, and j not padding."""
    L = attention_mask.shape[-1]
    i = torch.arange(L, device=attention_mask.device)
    diff = i[:, None] - i[None, :]
    allowed = diff >= 0
    if window is not None:
        allowed = allowed & (diff < window)
    return allowed[None, None] & attention_mask.bool()[:, None, None, :]


ENTRY_POINT_GROUP = "mwork.adapters"


def _register_plugin(obj: Any) -> None:
    """An entry point's object: an Adapter subclass is registered for its model types (unless it
    is already); a module registers its own adapters when it is imported."""
    if isinstance(obj, type) and issubclass(obj, Adapter) and not any(c is obj for c in REGISTRY.values()):
        register_adapter(obj)


REGISTRY: Registry[type[Adapter]] = Registry("adapter", ENTRY_POINT_GROUP, on_entry_point=_register_plugin)
"""Adapter classes by model type (``config.model_type``)."""


def register_adapter(cls: type[Adapter] | None = None, *, model_types: tuple[str, ...] | None = None,
                     replace: bool = False):
    """Register an adapter class for its ``model_types`` (or the ones given); usable as a
    decorator. ``replace=True`` overrides an adapter already registered for a model type.

    Families can also come from other packages: an entry point in the group
    ``mwork.adapters`` naming an Adapter subclass (or a module that calls this function) is
    loaded the first time a model of an unknown type is seen."""

    def add(klass: type[Adapter]) -> type[Adapter]:
        if not (isinstance(klass, type) and issubclass(klass, Adapter)):
            raise TypeError(f"register_adapter takes an Adapter subclass, got {klass!r}")
        types = tuple(model_types if model_types is not None else klass.model_types)
        if not types:
            raise ValueError(f"{klass.__name__} names no model_types; set the class attribute or pass model_types")
        taken = [t for t in types if REGISTRY.peek(t) not in (None, klass)]
        if taken and not replace:
            raise ValueError(f"model types {taken} already have an adapter ({REGISTRY.peek(taken[0]).__name__}); "
                             "pass replace=True to override it")
        for t in types:
            REGISTRY.register(t, klass, replace=True)
        return klass

    return add if cls is None else add(cls)


def supported_model_types() -> list[str]:
    return sorted(REGISTRY.names())


def supported_families() -> dict[str, list[str]]:
    """``{family: [model types]}`` of every registered adapter, families sorted."""
    out: dict[str, list[str]] = {}
    for model_type, cls in sorted(REGISTRY.items()):
        out.setdefault(cls.family, []).append(model_type)
    return dict(sorted(out.items()))


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for ``model``; cached on the model so every caller sees the same one."""
    cached = getattr(model, "_mwork_adapter", None)
    if cached is not None:
        return cached
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in REGISTRY:  # entry points are read first
        raise UnsupportedModelError(
            f"mwork has no adapter for model_type {model_type!r}. Supported: "
            f"{', '.join(supported_model_types())}. To add one, subclass Adapter (mwork/models/adapters.py) "
            f"and register it with mwork.register_adapter (see docs/ARCHITECTURE.md)."
        )
    adapter = REGISTRY.get(model_type)(model)
    object.__setattr__(model, "_mwork_adapter", adapter)
    return adapter


def model_name(model: nn.Module) -> str | None:
    """The name the model was loaded by (``load_model``'s alias, hub id or folder), else its
    config's ``_name_or_path``; None when neither is known."""
    return getattr(model, "_mwork_name", None) or getattr(getattr(model, "config", None), "_name_or_path", None) or None
