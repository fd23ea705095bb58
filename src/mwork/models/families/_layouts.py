"""Shared pieces of the family adapters: fused q/k/v layouts and ALiBi contexts."""

from __future__ import annotations

import torch

from mwork.models.adapters import Adapter, AttentionContext


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


def _without(paths: dict[str, str], *keys: str) -> dict[str, str]:
    """A parent family's module paths minus some (e.g. a plain MLP has no ``gate``)."""
    return {k: v for k, v in paths.items() if k not in keys}
