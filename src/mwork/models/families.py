"""mwork's own model families: one :class:`~mwork.models.adapters.Adapter` subclass per
architecture, each answering where things live in that family's modules (registered when
``mwork.models.adapters`` is imported). Every family has a tiny seeded model in
``mwork.models.tiny`` and gets every parametrised test (attention recomputed from the named
pieces, importance against brute force, deactivation against zeroed weights, layer parity).

Families with rotary positions and separate q/k/v projections derive from
:class:`LlamaAdapter`; the others (fused projections, learned or sinusoidal positions, ALiBi)
answer each question themselves.
"""

from __future__ import annotations

import torch
from torch import nn

from mwork.hooks import Site
from mwork.models.adapters import Adapter, AttentionContext, ChannelSite, _partial, register_adapter


def _arange(start: int, n: int) -> torch.Tensor:
    return torch.arange(start, start + n)


def _per_head_fused_index(adapter: Adapter, kind: str) -> torch.Tensor:
    """Fused projections whose output is viewed as (heads, 3, head_dim): q, k, v per head."""
    H, d = adapter.num_heads, adapter.head_dim
    slot = {"q": 0, "k": 1, "v": 2}[kind]
    head = torch.arange(H)[:, None]
    return (head * 3 * d + slot * d + torch.arange(d)[None, :]).reshape(-1)


def _concat_fused_index(adapter: Adapter, kind: str) -> torch.Tensor:
    """Fused projections laid out as [Q (all heads) | K | V] (GPT-2, Phi-3, MPT, MQA)."""
    q, kv = adapter.num_heads * adapter.head_dim, adapter.num_kv_heads * adapter.head_dim
    return {"q": _arange(0, q), "k": _arange(q, kv), "v": _arange(q + kv, kv)}[kind]


def _alibi_context(hidden: torch.Tensor, alibi: torch.Tensor, layer: int) -> AttentionContext:
    return AttentionContext(hidden_states=hidden, alibi=alibi, layer=layer)


def _alibi_bias(adapter: Adapter, ctx: AttentionContext, heads: slice | None, factor: float = 1.0) -> torch.Tensor:
    """ALiBi stored as (B*H, 1, L) -> (B, H, 1, L) score bias (times ``factor``)."""
    B = ctx.hidden_states.shape[0]
    bias = ctx.alibi.view(B, adapter.num_heads, 1, -1)
    if factor != 1.0:
        bias = bias * factor
    return bias if heads is None else bias[:, heads]


# ---- rotary families with separate q/k/v projections -------------------------------------------


class LlamaAdapter(Adapter):
    """Llama-style decoders: separate q/k/v/o projections, gated MLP, RoPE (rotate-half).

    Covers Llama 2/3 (and Vicuna), Mistral, Qwen2, Qwen3 (QK-norm), Gemma, Gemma-2
    (soft-capping, sliding windows, post-norms) and Gemma-3 text (QK-norm, sliding windows,
    post-norms)."""

    model_types = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
    family = "llama"

    @property
    def _base(self) -> nn.Module:
        return self.model.model

    @property
    def layers(self) -> nn.ModuleList:
        return self._base.layers

    @property
    def embed(self) -> nn.Module:
        return self._base.embed_tokens  # Gemma's scaled embedding module multiplies inside

    @property
    def final_norm(self) -> nn.Module:
        return self._base.norm

    def attention(self, layer: int) -> nn.Module:
        return self.layers[layer].self_attn

    def mlp_down(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp.down_proj

    def ffn_in_modules(self, layer: int) -> dict[str, nn.Module]:
        mlp = self.layers[layer].mlp
        return {"gate": mlp.gate_proj, "up": mlp.up_proj}

    def ffn_act(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp.act_fn

    def o_proj(self, layer: int) -> nn.Module:
        return self.attention(layer).o_proj

    def _qkv_site(self, layer: int, kind: str) -> ChannelSite:
        proj = getattr(self.attention(layer), f"{kind}_proj")
        return ChannelSite(proj, torch.arange(proj.out_features))

    def qk_norms(self, layer: int) -> tuple[nn.Module | None, nn.Module | None]:
        attn = self.attention(layer)
        return getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)

    def qk_norm_eps(self, layer: int) -> float | None:
        norm = self.qk_norms(layer)[0]
        if norm is None:
            return None
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))  # RMSNorm | Gemma-3, LayerNorm
        return None if eps is None else float(eps)

    def scaling(self, layer: int) -> float:
        return float(self.attention(layer).scaling)

    def softcap(self, layer: int) -> float | None:
        return getattr(self.attention(layer), "attn_logit_softcapping", None)

    def sliding_window(self, layer: int) -> int | None:
        attn = self.attention(layer)
        if hasattr(attn, "sliding_window"):
            return attn.sliding_window
        return getattr(self.config, "sliding_window", None)  # Mistral, Phi-3, Starcoder2: every layer

    def combine(self, layer: int, hidden: torch.Tensor, attn: torch.Tensor, ffn: torch.Tensor) -> torch.Tensor:
        block = self.layers[layer]
        post_ffn = getattr(block, "post_feedforward_layernorm", None)
        if post_ffn is not None:  # Gemma-2/3, OLMo-2: a norm on each block's output
            return hidden + block.post_attention_layernorm(attn) + post_ffn(ffn)
        return hidden + attn + ffn

    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().decode(hidden)
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


class OlmoAdapter(LlamaAdapter):
    """OLMo: Llama layout with parameter-free LayerNorms; ``clip_qkv`` clamps q/k/v in place
    right after the projections, which commutes with zeroing a channel, so the raw channels
    the hooks see are the clipped ones the model uses."""

    model_types = ("olmo",)
    family = "olmo"


class Olmo2Adapter(LlamaAdapter):
    """OLMo-2 / OLMo-3: post-norms on each block's output, and an RMS QK-norm over the whole
    q (k) projection before the head split: zeroing one channel rescales every head's query."""

    model_types = ("olmo2", "olmo3")
    family = "olmo2"

    def qk_norm_scope(self, layer: int) -> str:
        return "projection"


class StarCoder2Adapter(LlamaAdapter):
    """StarCoder2: Llama layout with biases, LayerNorms, a plain c_fc -> c_proj MLP and a
    sliding window on every layer."""

    model_types = ("starcoder2",)
    family = "starcoder2"

    def mlp_down(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp.c_proj

    def ffn_in_modules(self, layer: int) -> dict[str, nn.Module]:
        return {"up": self.layers[layer].mlp.c_fc}

    def ffn_act(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp.act


class GraniteAdapter(LlamaAdapter):
    """Granite: the embeddings are multiplied by ``embedding_multiplier`` outside any module,
    scores by ``attention_multiplier`` (the attention's scaling), each block's output by
    ``residual_multiplier`` before the residual sum, and the logits divided by
    ``logits_scaling``."""

    model_types = ("granite",)
    family = "granite"

    @property
    def embed_site(self) -> Site:
        return self._first_layer_input()

    def combine(self, layer: int, hidden: torch.Tensor, attn: torch.Tensor, ffn: torch.Tensor) -> torch.Tensor:
        m = float(self.config.residual_multiplier)
        return hidden + attn * m + ffn * m

    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.final_norm(hidden)) / self.config.logits_scaling


class SmolLM3Adapter(LlamaAdapter):
    """SmolLM3: Llama layout where the layers with ``no_rope_layers[i] == 0`` use no positions
    (NoPE)."""

    model_types = ("smollm3",)
    family = "smollm3"

    def uses_rope(self, layer: int) -> bool:
        return bool(self.attention(layer).use_rope)


class CohereAdapter(LlamaAdapter):
    """Cohere (Command-R, Aya) and Cohere-2: parallel attention and FFN on one LayerNorm,
    interleaved RoPE (channels 2i and 2i+1 rotate together), logits times ``logit_scale``;
    optional per-head LayerNorm QK-norm (weights per head: not of the RMS form, so Q/K take the
    generic path). Cohere-2: a sliding window on the local layers, which alone use RoPE."""

    model_types = ("cohere", "cohere2")
    family = "cohere"
    block = "parallel"

    def uses_rope(self, layer: int) -> bool:
        types = getattr(self.config, "layer_types", None)
        return types is None or types[layer] == "sliding_attention"  # Cohere-2: global layers are NoPE

    def sliding_window(self, layer: int) -> int | None:
        return getattr(self.attention(layer), "sliding_window", None)

    def _rope_function(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        # the model's formula with its own rotate_half, at x's precision (the model's function
        # rounds through float32, which would make float64 checks float32-exact only)
        rotate = self._modeling_function("rotate_half")
        cos, sin = ctx.cos.unsqueeze(1).to(x.dtype), ctx.sin.unsqueeze(1).to(x.dtype)
        return x * cos + rotate(x) * sin

    def apply_qk_norm(self, layer: int, which: int, x: torch.Tensor, heads: slice | None = None) -> torch.Tensor:
        norm = self.qk_norms(layer)[which] if which < 2 else None
        if norm is None:
            return x
        # CohereLayerNorm normalises each head with weights of shape (heads, head_dim), on the
        # model's (..., n, heads, d) layout: put the given heads at their places among all
        total = norm.weight.shape[0]
        sel = slice(0, total) if heads is None else heads
        y = x.transpose(-3, -2)
        if y.shape[-2] != total:
            full = y.new_zeros(*y.shape[:-2], total, y.shape[-1])
            full[..., sel, :] = y
            y = full
        return norm(y)[..., sel, :].transpose(-3, -2)

    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.final_norm(hidden)) * self.config.logit_scale


class StableLmAdapter(LlamaAdapter):
    """StableLM (2): partial RoPE (``partial_rotary_factor``, rotate-half on the leading
    channels), LayerNorms, optional q/k/v biases, optional per-head LayerNorm QK-norm (generic
    Q/K path) and optional parallel residual."""

    model_types = ("stablelm",)
    family = "stablelm"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.block = "parallel" if getattr(self.config, "use_parallel_residual", False) else "sequential"

    def rotary_dim(self, layer: int) -> int:
        return int(self.attention(layer).rotary_ndims)

    def qk_norms(self, layer: int) -> tuple[nn.Module | None, nn.Module | None]:
        attn = self.attention(layer)
        return getattr(attn, "q_layernorm", None), getattr(attn, "k_layernorm", None)

    def qk_norm_eps(self, layer: int) -> float | None:
        norm = self.qk_norms(layer)[0]
        return None if norm is None else float(norm.norms[0].eps)

    def apply_qk_norm(self, layer: int, which: int, x: torch.Tensor, heads: slice | None = None) -> torch.Tensor:
        norm = self.qk_norms(layer)[which] if which < 2 else None
        if norm is None:
            return x
        norms = list(norm.norms)[heads if heads is not None else slice(None)]  # one LayerNorm per head
        return torch.cat([ln(x[..., i : i + 1, :, :]) for i, ln in enumerate(norms)], dim=-3)


class PhiAdapter(LlamaAdapter):
    """Phi-1/1.5/2: parallel attention and FFN on one LayerNorm, partial RoPE, biases,
    fc1 -> fc2 MLP, optional LayerNorm QK-norm shared by the heads (generic Q/K path)."""

    model_types = ("phi",)
    family = "phi"
    block = "parallel"

    @property
    def embed(self) -> nn.Module:
        return self._base.embed_dropout  # its output: the token embeddings, as layer 0 sees them

    @property
    def final_norm(self) -> nn.Module:
        return self._base.final_layernorm

    def o_proj(self, layer: int) -> nn.Module:
        return self.attention(layer).dense

    def mlp_down(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp.fc2

    def ffn_in_modules(self, layer: int) -> dict[str, nn.Module]:
        return {"up": self.layers[layer].mlp.fc1}

    def ffn_act(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp.activation_fn

    def rotary_dim(self, layer: int) -> int:
        return int(self.attention(layer).rotary_ndims)

    def qk_norms(self, layer: int) -> tuple[nn.Module | None, nn.Module | None]:
        attn = self.attention(layer)
        return getattr(attn, "q_layernorm", None), getattr(attn, "k_layernorm", None)


class Phi3Adapter(LlamaAdapter):
    """Phi-3 / Phi-4-mini: fused qkv_proj laid out [Q | K | V], fused gate_up_proj laid out
    [gate | up], RoPE (partial in Phi-4-mini), optional sliding window on every layer."""

    model_types = ("phi3",)
    family = "phi3"

    def ffn_in_modules(self, layer: int) -> dict[str, nn.Module]:
        fused = self.layers[layer].mlp.gate_up_proj
        return {"gate": fused, "up": fused}

    def ffn_in_sites(self, layer: int) -> dict[str, ChannelSite]:
        fused, n = self.layers[layer].mlp.gate_up_proj, self.ffn_size
        return {"gate": ChannelSite(fused, _arange(0, n)), "up": ChannelSite(fused, _arange(n, n))}

    def ffn_act(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp.activation_fn

    def _qkv_site(self, layer: int, kind: str) -> ChannelSite:
        return ChannelSite(self.attention(layer).qkv_proj, _concat_fused_index(self, kind))


# ---- fused query_key_value families --------------------------------------------------------------


class _FusedQKVAdapter(Adapter):
    """Families with one query_key_value projection viewed as (heads, 3, head_dim), an output
    ``dense`` and an MLP dense_h_to_4h -> dense_4h_to_h (GPT-NeoX, BLOOM, Persimmon, Falcon)."""

    def mlp_down(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp.dense_4h_to_h

    def ffn_in_modules(self, layer: int) -> dict[str, nn.Module]:
        return {"up": self.layers[layer].mlp.dense_h_to_4h}

    def ffn_act(self, layer: int) -> nn.Module:
        mlp = self.layers[layer].mlp
        return mlp.gelu_impl if hasattr(mlp, "gelu_impl") else mlp.act  # BLOOM | the others

    def o_proj(self, layer: int) -> nn.Module:
        return self.attention(layer).dense

    def _qkv_site(self, layer: int, kind: str) -> ChannelSite:
        return ChannelSite(self.attention(layer).query_key_value, _per_head_fused_index(self, kind))


class GPTNeoXAdapter(_FusedQKVAdapter):
    """GPT-NeoX / Pythia: fused query_key_value laid out per head as [q | k | v], partial RoPE,
    parallel attention and FFN (``use_parallel_residual``)."""

    model_types = ("gpt_neox",)
    family = "gpt_neox"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.block = "parallel" if getattr(self.config, "use_parallel_residual", True) else "sequential"

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.gpt_neox.layers

    @property
    def embed(self) -> nn.Module:
        return self.model.gpt_neox.emb_dropout  # its output: the embeddings, as layer 0 sees them

    @property
    def final_norm(self) -> nn.Module:
        return self.model.gpt_neox.final_layer_norm

    def attention(self, layer: int) -> nn.Module:
        return self.layers[layer].attention

    def scaling(self, layer: int) -> float:
        return float(self.attention(layer).scaling)

    def rotary_dim(self, layer: int) -> int:
        return int(self.attention(layer).rotary_ndims)


class PersimmonAdapter(_FusedQKVAdapter):
    """Persimmon: fused query_key_value per head [q | k | v], partial RoPE, a LayerNorm
    QK-norm over each head (mean-centred: not of the RMS form, so Q/K take the generic path)."""

    model_types = ("persimmon",)
    family = "persimmon"

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    @property
    def embed(self) -> nn.Module:
        return self.model.model.embed_tokens

    @property
    def final_norm(self) -> nn.Module:
        return self.model.model.final_layernorm

    def attention(self, layer: int) -> nn.Module:
        return self.layers[layer].self_attn

    def scaling(self, layer: int) -> float:
        return float(self.attention(layer).scaling)

    def rotary_dim(self, layer: int) -> int:
        return int(self.attention(layer).rotary_ndims)

    def qk_norms(self, layer: int) -> tuple[nn.Module | None, nn.Module | None]:
        attn = self.attention(layer)
        return getattr(attn, "q_layernorm", None), getattr(attn, "k_layernorm", None)

    def qk_norm_eps(self, layer: int) -> float | None:
        norm = self.qk_norms(layer)[0]
        return None if norm is None else float(norm.eps)


class BloomAdapter(_FusedQKVAdapter):
    """BLOOM: fused query_key_value laid out per head as [q | k | v], ALiBi, no RoPE."""

    model_types = ("bloom",)
    family = "bloom"
    position_encoding = "alibi"

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.transformer.h

    @property
    def embed(self) -> nn.Module:
        # word embeddings are followed by a LayerNorm; the layer-0 hidden state is after it
        return self.model.transformer.word_embeddings_layernorm

    @property
    def final_norm(self) -> nn.Module:
        return self.model.transformer.ln_f

    @property
    def num_heads(self) -> int:
        return int(self.config.n_head)

    def attention(self, layer: int) -> nn.Module:
        return self.layers[layer].self_attention

    def scaling(self, layer: int) -> float:
        return float(self.attention(layer).inv_norm_factor)

    def attention_context(self, layer: int, args: tuple, kwargs: dict) -> AttentionContext:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        alibi = kwargs["alibi"] if "alibi" in kwargs else args[2]
        return _alibi_context(hidden, alibi, layer)

    def score_bias(self, layer: int, ctx: AttentionContext, heads: slice | None = None) -> torch.Tensor | None:
        return _alibi_bias(self, ctx, heads)

    def forward_kwargs(self, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}  # ALiBi positions come from the attention mask already


class FalconAdapter(_FusedQKVAdapter):
    """Falcon: one fused query_key_value in three layouts -- per KV group [q_1..q_G | k | v]
    (``new_decoder_architecture``: Falcon-40B/180B, GQA), [Q | k | v] (``multi_query``:
    Falcon-7B, MQA) or per head [q | k | v]; parallel attention and FFN (one or two
    LayerNorms) or sequential; RoPE, or ALiBi added to the unscaled scores (Falcon-RW)."""

    model_types = ("falcon",)
    family = "falcon"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        cfg = self.config
        self.position_encoding = "alibi" if cfg.alibi else "rope"
        self.block = "parallel" if cfg.parallel_attn or cfg.new_decoder_architecture else "sequential"

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.transformer.h

    @property
    def embed(self) -> nn.Module:
        return self.model.transformer.word_embeddings

    @property
    def final_norm(self) -> nn.Module:
        return self.model.transformer.ln_f

    @property
    def num_kv_heads(self) -> int:
        return int(self.attention(0).num_kv_heads)

    def attention(self, layer: int) -> nn.Module:
        return self.layers[layer].self_attention

    def scaling(self, layer: int) -> float:
        return float(self.attention(layer).inv_norm_factor)

    def _qkv_site(self, layer: int, kind: str) -> ChannelSite:
        fused = self.attention(layer).query_key_value
        cfg, H, Hkv, d = self.config, self.num_heads, self.num_kv_heads, self.head_dim
        if cfg.new_decoder_architecture:  # (Hkv, G + 2, d): a group's queries, then its k and v
            G = H // Hkv
            base = (torch.arange(Hkv) * (G + 2) * d)[:, None, None]
            if kind == "q":
                idx = base + (torch.arange(G) * d)[None, :, None] + torch.arange(d)[None, None, :]
            else:
                idx = base + (G + (kind == "v")) * d + torch.arange(d)[None, None, :]
            return ChannelSite(fused, idx.reshape(-1))
        if cfg.multi_query:
            return ChannelSite(fused, _concat_fused_index(self, kind))
        return ChannelSite(fused, _per_head_fused_index(self, kind))

    def attention_context(self, layer: int, args: tuple, kwargs: dict) -> AttentionContext:
        ctx = super().attention_context(layer, args, kwargs)
        alibi = kwargs.get("alibi")
        if alibi is None:
            return ctx
        # the model adds alibi to the raw scores before scaling, and the causal mask it passes
        # carries alibi / sqrt(head_dim) once more: both are key-only biases, kept together
        B, L = ctx.hidden_states.shape[:2]
        total = alibi.reshape(B, self.num_heads, 1, -1).to(torch.float64) * self.scaling(layer)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 4 and mask.is_floating_point():
            row = mask[:, :, -1:, :].to(torch.float64)  # the last query sees every key (causal)
            total = total + torch.where(row > torch.finfo(mask.dtype).min / 2, row, torch.zeros_like(row))
        ctx.alibi = total.reshape(B * self.num_heads, 1, -1).to(alibi.dtype)
        return ctx

    def score_bias(self, layer: int, ctx: AttentionContext, heads: slice | None = None) -> torch.Tensor | None:
        return None if ctx.alibi is None else _alibi_bias(self, ctx, heads)

    def forward_kwargs(self, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {} if self.config.alibi else super().forward_kwargs(attention_mask)


# ---- learned / sinusoidal positions, GPT-2 style -------------------------------------------------


class GPT2Adapter(Adapter):
    """GPT-2: fused Conv1D c_attn laid out as [Q | K | V], learned positions, Conv1D weights
    stored (in, out)."""

    model_types = ("gpt2",)
    family = "gpt2"
    position_encoding = "learned"
    weights_transposed = True

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.transformer.h

    @property
    def embed(self) -> nn.Module:
        return self.model.transformer.drop  # output = token + position embeddings

    @property
    def final_norm(self) -> nn.Module:
        return self.model.transformer.ln_f

    @property
    def hidden_size(self) -> int:
        return int(self.config.n_embd)

    @property
    def num_heads(self) -> int:
        return int(self.config.n_head)

    def attention(self, layer: int) -> nn.Module:
        return self.layers[layer].attn

    def mlp_down(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp.c_proj

    def ffn_in_modules(self, layer: int) -> dict[str, nn.Module]:
        return {"up": self.layers[layer].mlp.c_fc}

    def ffn_act(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp.act

    def o_proj(self, layer: int) -> nn.Module:
        return self.attention(layer).c_proj

    def down_weight(self, layer: int) -> torch.Tensor:
        return self.mlp_down(layer).weight.t()

    def o_weight(self, layer: int) -> torch.Tensor:
        return self.o_proj(layer).weight.t()

    def _qkv_site(self, layer: int, kind: str) -> ChannelSite:
        return ChannelSite(self.attention(layer).c_attn, _concat_fused_index(self, kind))

    def scaling(self, layer: int) -> float:
        return float(self.attention(layer).scaling)


class GPTBigCodeAdapter(GPT2Adapter):
    """GPT-BigCode (StarCoder, SantaCoder): GPT-2 layout with nn.Linear weights and multi-query
    attention: c_attn laid out [Q | k | v] with one KV head (``multi_query``), else per head
    [q | k | v]."""

    model_types = ("gpt_bigcode",)
    family = "gpt_bigcode"
    weights_transposed = False

    @property
    def num_kv_heads(self) -> int:
        return int(self.attention(0).kv_heads)

    def down_weight(self, layer: int) -> torch.Tensor:
        return self.mlp_down(layer).weight

    def o_weight(self, layer: int) -> torch.Tensor:
        return self.o_proj(layer).weight

    def _qkv_site(self, layer: int, kind: str) -> ChannelSite:
        c_attn = self.attention(layer).c_attn
        if self.config.multi_query:
            return ChannelSite(c_attn, _concat_fused_index(self, kind))
        return ChannelSite(c_attn, _per_head_fused_index(self, kind))


class GPTJAdapter(Adapter):
    """GPT-J: parallel attention and FFN on one LayerNorm, interleaved RoPE (channels 2i and
    2i+1 rotate together) on the first ``rotary_dim`` channels of each head, biased LM head."""

    model_types = ("gptj",)
    family = "gptj"
    block = "parallel"

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.transformer.h

    @property
    def embed(self) -> nn.Module:
        return self.model.transformer.drop

    @property
    def final_norm(self) -> nn.Module:
        return self.model.transformer.ln_f

    def attention(self, layer: int) -> nn.Module:
        return self.layers[layer].attn

    def o_proj(self, layer: int) -> nn.Module:
        return self.attention(layer).out_proj

    def mlp_down(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp.fc_out

    def ffn_in_modules(self, layer: int) -> dict[str, nn.Module]:
        return {"up": self.layers[layer].mlp.fc_in}

    def ffn_act(self, layer: int) -> nn.Module:
        return self.layers[layer].mlp.act

    def _qkv_site(self, layer: int, kind: str) -> ChannelSite:
        proj = getattr(self.attention(layer), f"{kind}_proj")
        return ChannelSite(proj, torch.arange(proj.out_features))

    def scaling(self, layer: int) -> float:
        return float(self.attention(layer).scaling)

    def rotary_dim(self, layer: int) -> int:
        return int(self.attention(layer).rotary_dim or self.head_dim)

    def attention_context(self, layer: int, args: tuple, kwargs: dict) -> AttentionContext:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        sin, cos = kwargs["position_embeddings"]  # GPT-J passes (sin, cos), each (B, L, rotary_dim / 2)
        return AttentionContext(hidden_states=hidden, cos=cos, sin=sin, layer=layer)

    def apply_rope(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        apply = self._modeling_function("apply_rotary_pos_emb")  # on (B, L, H, d)

        def rotate(r: torch.Tensor) -> torch.Tensor:
            return apply(r.transpose(-3, -2), ctx.sin.to(r.dtype), ctx.cos.to(r.dtype)).transpose(-3, -2)

        return _partial(x, 2 * ctx.cos.shape[-1], rotate)


class OPTAdapter(Adapter):
    """OPT: learned positions added outside any module, q scaled inside the attention, fc1 ->
    fc2 MLP; pre-LN (most sizes) or post-LN blocks (OPT-350m), and optional project_in /
    project_out between the embedding width and the hidden size."""

    model_types = ("opt",)
    family = "opt"
    position_encoding = "learned"

    @property
    def _decoder(self) -> nn.Module:
        return self.model.model.decoder

    @property
    def layers(self) -> nn.ModuleList:
        return self._decoder.layers

    @property
    def embed(self) -> nn.Module:
        return self._decoder.embed_tokens

    @property
    def embed_site(self) -> Site:
        return self._first_layer_input()  # token (+ project_in) + position embeddings

    @property
    def final_norm(self) -> nn.Module:
        """The final LayerNorm; post-LN models have none, and the last hidden state enters
        project_out instead."""
        dec = self._decoder
        if dec.final_layer_norm is not None:
            return dec.final_layer_norm
        if dec.project_out is not None:
            return dec.project_out
        raise NotImplementedError("this OPT model has neither a final LayerNorm nor project_out")

    def attention(self, layer: int) -> nn.Module:
        return self.layers[layer].self_attn

    def o_proj(self, layer: int) -> nn.Module:
        return self.attention(layer).out_proj

    def mlp_down(self, layer: int) -> nn.Module:
        return self.layers[layer].fc2

    def ffn_in_modules(self, layer: int) -> dict[str, nn.Module]:
        return {"up": self.layers[layer].fc1}

    def ffn_act(self, layer: int) -> nn.Module:
        return self.layers[layer].activation_fn

    def _qkv_site(self, layer: int, kind: str) -> ChannelSite:
        proj = getattr(self.attention(layer), f"{kind}_proj")
        return ChannelSite(proj, torch.arange(proj.out_features))

    def scaling(self, layer: int) -> float:
        return float(self.attention(layer).scaling)

    def combine(self, layer: int, hidden: torch.Tensor, attn: torch.Tensor, ffn: torch.Tensor) -> torch.Tensor:
        block = self.layers[layer]
        if block.do_layer_norm_before:
            return hidden + attn + ffn
        mid = block.self_attn_layer_norm(hidden + attn)  # post-LN: a norm after each residual sum
        return block.final_layer_norm(mid + ffn)

    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        dec = self._decoder
        if dec.final_layer_norm is not None:
            hidden = dec.final_layer_norm(hidden)
        if dec.project_out is not None:
            hidden = dec.project_out(hidden)
        return self.lm_head(hidden)


class XGLMAdapter(Adapter):
    """XGLM: sinusoidal positions added to the scaled embeddings outside any module, q scaled
    inside the attention, fc1 -> fc2 MLP, pre-LN."""

    model_types = ("xglm",)
    family = "xglm"
    position_encoding = "learned"

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    @property
    def embed(self) -> nn.Module:
        return self.model.model.embed_tokens

    @property
    def embed_site(self) -> Site:
        return self._first_layer_input()

    @property
    def final_norm(self) -> nn.Module:
        return self.model.model.layer_norm

    def attention(self, layer: int) -> nn.Module:
        return self.layers[layer].self_attn

    def o_proj(self, layer: int) -> nn.Module:
        return self.attention(layer).out_proj

    def mlp_down(self, layer: int) -> nn.Module:
        return self.layers[layer].fc2

    def ffn_in_modules(self, layer: int) -> dict[str, nn.Module]:
        return {"up": self.layers[layer].fc1}

    def ffn_act(self, layer: int) -> nn.Module:
        return self.layers[layer].activation_fn

    def _qkv_site(self, layer: int, kind: str) -> ChannelSite:
        proj = getattr(self.attention(layer), f"{kind}_proj")
        return ChannelSite(proj, torch.arange(proj.out_features))

    def scaling(self, layer: int) -> float:
        return float(self.attention(layer).scaling)


class MptAdapter(Adapter):
    """MPT: fused Wqkv laid out [Q | K | V], ALiBi from a key-only table (MPT's own slopes),
    optional ``clip_qkv`` clamping of the fused output (elementwise, so zeroing a channel
    commutes with it), up_proj -> down_proj MLP, LayerNorms without bias."""

    model_types = ("mpt",)
    family = "mpt"
    position_encoding = "alibi"

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.transformer.blocks

    @property
    def embed(self) -> nn.Module:
        return self.model.transformer.wte

    @property
    def final_norm(self) -> nn.Module:
        return self.model.transformer.norm_f

    def attention(self, layer: int) -> nn.Module:
        return self.layers[layer].attn

    def o_proj(self, layer: int) -> nn.Module:
        return self.attention(layer).out_proj

    def mlp_down(self, layer: int) -> nn.Module:
        return self.layers[layer].ffn.down_proj

    def ffn_in_modules(self, layer: int) -> dict[str, nn.Module]:
        return {"up": self.layers[layer].ffn.up_proj}

    def ffn_act(self, layer: int) -> nn.Module:
        return self.layers[layer].ffn.act

    def _qkv_site(self, layer: int, kind: str) -> ChannelSite:
        return ChannelSite(self.attention(layer).Wqkv, _concat_fused_index(self, kind))

    def scaling(self, layer: int) -> float:
        return float(self.attention(layer).softmax_scale)

    def apply_qk_norm(self, layer: int, which: int, x: torch.Tensor, heads: slice | None = None) -> torch.Tensor:
        clip = self.attention(layer).clip_qkv
        return x.clamp(min=-clip, max=clip) if clip else x

    def attention_context(self, layer: int, args: tuple, kwargs: dict) -> AttentionContext:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        bias = kwargs["position_bias"] if "position_bias" in kwargs else args[1]  # (H, 1, max_seq_len)
        B, L = hidden.shape[:2]
        bias = bias[:, -1:, -L:]  # the attention keeps the last L keys: bias (j - L + 1) * slope
        alibi = bias[None].expand(B, -1, -1, -1).reshape(B * self.num_heads, 1, L)
        return _alibi_context(hidden, alibi, layer)

    def score_bias(self, layer: int, ctx: AttentionContext, heads: slice | None = None) -> torch.Tensor | None:
        return _alibi_bias(self, ctx, heads)

    def forward_kwargs(self, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}  # no position ids: ALiBi sees only key offsets


for _cls in (
    LlamaAdapter, OlmoAdapter, Olmo2Adapter, StarCoder2Adapter, GraniteAdapter, SmolLM3Adapter, CohereAdapter,
    StableLmAdapter, PhiAdapter, Phi3Adapter, GPTNeoXAdapter, PersimmonAdapter, BloomAdapter, FalconAdapter,
    GPT2Adapter, GPTBigCodeAdapter, GPTJAdapter, OPTAdapter, XGLMAdapter, MptAdapter,
):
    register_adapter(_cls)
