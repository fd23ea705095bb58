"""Rotary families with separate q/k/v projections, derived from the Llama layout: Llama,
Mistral, Qwen2/3, Gemma 1/2/3, OLMo 1/2/3, StarCoder2, Granite, SmolLM3, Cohere 1/2, StableLM,
Phi, Phi-3."""

from __future__ import annotations

import torch
from torch import nn

from mwork.hooks import Site
from mwork.models.adapters import Adapter, AttentionContext, ChannelSite
from mwork.models.families._layouts import _arange, _concat_fused_index, _without


class LlamaAdapter(Adapter):
    """Llama-style decoders: separate q/k/v/o projections, gated MLP, RoPE (rotate-half).

    Covers Llama 2/3 (and Vicuna), Mistral, Qwen2, Qwen3 (QK-norm), Gemma, Gemma-2
    (soft-capping, sliding windows, post-norms) and Gemma-3 text (QK-norm, sliding windows,
    post-norms)."""

    model_types = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
    family = "llama"
    paths = {"layers": "model.layers", "embed": "model.embed_tokens",  # Gemma's embedding scales inside
             "final_norm": "model.norm", "attention": "self_attn", "o_proj": "self_attn.o_proj",
             "q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
             "gate": "mlp.gate_proj", "up": "mlp.up_proj", "act": "mlp.act_fn", "down": "mlp.down_proj"}

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
    paths = {**_without(LlamaAdapter.paths, "gate"), "up": "mlp.c_fc", "act": "mlp.act", "down": "mlp.c_proj"}


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
    paths = {**_without(LlamaAdapter.paths, "gate"),
             "embed": "model.embed_dropout",  # its output: the token embeddings, as layer 0 sees them
             "final_norm": "model.final_layernorm", "o_proj": "self_attn.dense",
             "up": "mlp.fc1", "act": "mlp.activation_fn", "down": "mlp.fc2"}

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
    paths = {**LlamaAdapter.paths, "gate": "mlp.gate_up_proj", "up": "mlp.gate_up_proj", "act": "mlp.activation_fn"}

    def ffn_in_sites(self, layer: int) -> dict[str, ChannelSite]:
        fused, n = self.layers[layer].mlp.gate_up_proj, self.ffn_size
        return {"gate": ChannelSite(fused, _arange(0, n)), "up": ChannelSite(fused, _arange(n, n))}

    def _qkv_site(self, layer: int, kind: str) -> ChannelSite:
        return ChannelSite(self.attention(layer).qkv_proj, _concat_fused_index(self, kind))
