"""GPT-2-style families: learned or sinusoidal positions (GPT-2, GPT-BigCode, OPT, XGLM) and
GPT-J's interleaved partial RoPE with parallel blocks."""

from __future__ import annotations

import torch
from torch import nn

from mwork.hooks import Site
from mwork.models.adapters import Adapter, AttentionContext, ChannelSite, _partial
from mwork.models.families._layouts import _concat_fused_index, _per_head_fused_index


class GPT2Adapter(Adapter):
    """GPT-2: fused Conv1D c_attn laid out as [Q | K | V], learned positions, Conv1D weights
    stored (in, out)."""

    model_types = ("gpt2",)
    family = "gpt2"
    position_encoding = "learned"
    weights_transposed = True
    paths = {"layers": "transformer.h", "embed": "transformer.drop",  # its output: token + position embeddings
             "final_norm": "transformer.ln_f", "attention": "attn", "o_proj": "attn.c_proj", "up": "mlp.c_fc",
             "act": "mlp.act", "down": "mlp.c_proj"}

    @property
    def hidden_size(self) -> int:
        return int(self.config.n_embd)

    @property
    def num_heads(self) -> int:
        return int(self.config.n_head)

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
    paths = {"layers": "transformer.h", "embed": "transformer.drop", "final_norm": "transformer.ln_f",
             "attention": "attn", "o_proj": "attn.out_proj", "q": "attn.q_proj", "k": "attn.k_proj",
             "v": "attn.v_proj", "up": "mlp.fc_in", "act": "mlp.act", "down": "mlp.fc_out"}

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
    ffn_flattens_tokens = True
    paths = {"layers": "model.decoder.layers", "embed": "model.decoder.embed_tokens", "attention": "self_attn",
             "o_proj": "self_attn.out_proj", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
             "v": "self_attn.v_proj", "up": "fc1", "act": "activation_fn", "down": "fc2"}

    @property
    def _decoder(self) -> nn.Module:
        return self.model.model.decoder

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
    paths = {"layers": "model.layers", "embed": "model.embed_tokens", "final_norm": "model.layer_norm",
             "attention": "self_attn", "o_proj": "self_attn.out_proj", "q": "self_attn.q_proj",
             "k": "self_attn.k_proj", "v": "self_attn.v_proj", "up": "fc1", "act": "activation_fn", "down": "fc2"}

    @property
    def embed_site(self) -> Site:
        return self._first_layer_input()

    def scaling(self, layer: int) -> float:
        return float(self.attention(layer).scaling)
