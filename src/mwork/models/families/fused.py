"""Families with one fused query_key_value projection (GPT-NeoX, Persimmon, BLOOM, Falcon) and
MPT's fused Wqkv with ALiBi."""

from __future__ import annotations

import torch
from torch import nn

from mwork.models.adapters import Adapter, AttentionContext, ChannelSite
from mwork.models.families._layouts import _alibi_bias, _alibi_context, _concat_fused_index, _per_head_fused_index


class _FusedQKVAdapter(Adapter):
    """Families with one query_key_value projection viewed as (heads, 3, head_dim), an output
    ``dense`` and an MLP dense_h_to_4h -> dense_4h_to_h (GPT-NeoX, BLOOM, Persimmon, Falcon)."""

    _mlp = {"up": "mlp.dense_h_to_4h", "act": "mlp.act", "down": "mlp.dense_4h_to_h"}

    def _qkv_site(self, layer: int, kind: str) -> ChannelSite:
        return ChannelSite(self.attention(layer).query_key_value, _per_head_fused_index(self, kind))


class GPTNeoXAdapter(_FusedQKVAdapter):
    """GPT-NeoX / Pythia: fused query_key_value laid out per head as [q | k | v], partial RoPE,
    parallel attention and FFN (``use_parallel_residual``)."""

    model_types = ("gpt_neox",)
    family = "gpt_neox"
    paths = {"layers": "gpt_neox.layers", "embed": "gpt_neox.emb_dropout",  # the embeddings as layer 0 sees them
             "final_norm": "gpt_neox.final_layer_norm", "attention": "attention", "o_proj": "attention.dense",
             **_FusedQKVAdapter._mlp}

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.block = "parallel" if getattr(self.config, "use_parallel_residual", True) else "sequential"

    def scaling(self, layer: int) -> float:
        return float(self.attention(layer).scaling)

    def rotary_dim(self, layer: int) -> int:
        return int(self.attention(layer).rotary_ndims)


class PersimmonAdapter(_FusedQKVAdapter):
    """Persimmon: fused query_key_value per head [q | k | v], partial RoPE, a LayerNorm
    QK-norm over each head (mean-centred: not of the RMS form, so Q/K take the generic path)."""

    model_types = ("persimmon",)
    family = "persimmon"
    paths = {"layers": "model.layers", "embed": "model.embed_tokens", "final_norm": "model.final_layernorm",
             "attention": "self_attn", "o_proj": "self_attn.dense", **_FusedQKVAdapter._mlp}

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
    paths = {"layers": "transformer.h",
             "embed": "transformer.word_embeddings_layernorm",  # the layer-0 hidden state is after this norm
             "final_norm": "transformer.ln_f", "attention": "self_attention", "o_proj": "self_attention.dense",
             **_FusedQKVAdapter._mlp, "act": "mlp.gelu_impl"}

    @property
    def num_heads(self) -> int:
        return int(self.config.n_head)

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
    LayerNorms) or sequential; RoPE, or ALiBi (Falcon-RW) carried by the causal mask."""

    model_types = ("falcon",)
    family = "falcon"

    paths = {"layers": "transformer.h", "embed": "transformer.word_embeddings", "final_norm": "transformer.ln_f",
             "attention": "self_attention", "o_proj": "self_attention.dense", **_FusedQKVAdapter._mlp}

    def __init__(self, model: nn.Module):
        super().__init__(model)
        cfg = self.config
        self.position_encoding = "alibi" if cfg.alibi else "rope"
        self.block = "parallel" if cfg.parallel_attn or cfg.new_decoder_architecture else "sequential"

    @property
    def num_kv_heads(self) -> int:
        return int(self.attention(0).num_kv_heads)

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
        if not self.config.alibi:
            return ctx
        # the causal mask the model passes carries alibi / sqrt(head_dim), a key-only bias: the
        # last query's row (it sees every key) holds all of it, masked keys read as 0
        mask = kwargs.get("attention_mask")
        if mask is None or mask.dim() != 4 or not mask.is_floating_point():
            raise ValueError("Falcon ALiBi: the attention call got no float 4D mask to read the ALiBi bias from")
        row = mask[:, :, -1:, :]
        bias = torch.where(row > torch.finfo(mask.dtype).min / 2, row, torch.zeros_like(row))
        # transformers < 5.25 also passes `alibi` itself, and its eager path (not SDPA) adds it to
        # the raw scores before scaling as well, so there it counts twice
        alibi = kwargs.get("alibi")
        sdpa = self.attention(layer).config._attn_implementation == "sdpa" and not kwargs.get("output_attentions")
        if alibi is not None and not sdpa:
            bias = (alibi.view_as(bias).to(torch.float64) * self.scaling(layer) + bias).to(bias.dtype)
        ctx.alibi = bias.reshape(-1, 1, bias.shape[-1])
        return ctx

    def score_bias(self, layer: int, ctx: AttentionContext, heads: slice | None = None) -> torch.Tensor | None:
        return None if ctx.alibi is None else _alibi_bias(self, ctx, heads)

    def forward_kwargs(self, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {} if self.config.alibi else super().forward_kwargs(attention_mask)


class MptAdapter(Adapter):
    """MPT: fused Wqkv laid out [Q | K | V], ALiBi from a key-only table (MPT's own slopes),
    optional ``clip_qkv`` clamping of the fused output (elementwise, so zeroing a channel
    commutes with it), up_proj -> down_proj MLP, LayerNorms without bias."""

    model_types = ("mpt",)
    family = "mpt"
    position_encoding = "alibi"
    paths = {"layers": "transformer.blocks", "embed": "transformer.wte", "final_norm": "transformer.norm_f",
             "attention": "attn", "o_proj": "attn.out_proj", "up": "ffn.up_proj", "act": "ffn.act",
             "down": "ffn.down_proj"}

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
