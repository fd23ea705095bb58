"""The reference code's neuron scores, for comparison only (``--reference-compat``).

These are NOT the paper's equations (see ``mwork.neurons.importance`` for those, and
DESIGN.md, "Known defects of the reference code"). The paper's release scores, per document:

* FFN: sum over tokens of |up_proj(x)| (neither the activation nor ||W_down|| enters; its "up"
  and "down" sets are the same). For models without a gated MLP we use the input projection
  of the MLP (GPT-2 ``c_fc``, BLOOM / GPT-NeoX ``dense_h_to_4h``), before the activation: the
  reference code is Llama-only, this is the same quantity where it exists.
* Q and K, per (query head h, channel c): sum over (query, key) of the squared change of the
  attention probabilities when the UNscaled product q_c k_c^T (post-RoPE) is subtracted from
  the scaled scores: ||softmax(S - q_c k_c^T) - softmax(S)||^2, no 1/sqrt(d), no square root,
  the same number for Q and K. The causal mask is kept. Under GQA the reference has no sound
  K mapping (it divides indices by 4); we sum the scores of the query heads sharing a KV channel.
* V, per channel of the attention output (heads concatenated, before W_O): sum over tokens of
  |P_h v_c|, an output magnitude, not a before/after difference. Under GQA, summed over the query
  heads sharing the V channel.

``reference_importance`` computes these exactly but without the reference's cost (one forward
pass, chunked, O(l^2) per head). ``reference_way`` reproduces the reference's way of computing
them (batch of one, the full (heads, head_dim, l, l) tensor, per-layer ``.tolist()``) for the
benchmark; ``reference_way_bytes`` says how much memory that needs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mwork.models.adapters import KINDS, Adapter, attention_mask, get_adapter
from mwork.neurons.importance import _doc_context, _heads, _norm_rope, _pack, _softmax_stats, _visible
from mwork.neurons.qk_kernel import prob_change

LABEL = "reference code's scores (sum |up_proj(x)| for FFN, unscaled outer product for Q/K, |V output|)"


def reference_importance(model: nn.Module, batch: Mapping[str, torch.Tensor], backend: str = "auto") -> dict[str, torch.Tensor]:
    """The reference code's scores for every document of ``batch``: ``{kind: (docs, layers,
    neurons)}``, float32 (float64 for float64 models), on the CPU. Not Eq. 1 (module docstring)."""
    ad = get_adapter(model)
    ids, lengths = _pack(batch)
    ids = ids.to(next(model.parameters()).device)
    dtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    counts = ad.neuron_counts()
    out = {k: torch.zeros(len(lengths), ad.num_layers, counts[k], dtype=dtype) for k in KINDS}
    captured: dict = {}

    def up_hook(layer: int):
        def hook(module, args, output):
            for b, n in enumerate(lengths):
                out["ffn"][b, layer] = output[b, :n].to(dtype).abs().sum(0).cpu()

        return hook

    def o_hook(layer: int):
        def hook(module, args):
            G, d = ad.kv_group_size, ad.head_dim
            for b, n in enumerate(lengths):
                mag = args[0][b, :n].to(dtype).abs().sum(0).reshape(ad.num_kv_heads, G, d)
                out["v"][b, layer] = mag.sum(1).reshape(-1).cpu()

        return hook

    def qk_hook(layer: int):
        def hook(module, args, output):
            try:
                _reference_qk(ad, layer, captured, lengths, dtype, out, backend)
            finally:
                captured.clear()

        return hook

    _run_hooked(ad, ids, up_hook, o_hook, qk_hook, captured)
    return out


def _run_hooked(ad: Adapter, ids: torch.Tensor, up_hook, o_hook, qk_hook, captured: dict) -> None:
    """One forward pass of ``ids`` (unpadded) with the reference scores' hooks on every layer:
    ``up_hook`` on the MLP's input projection, ``o_hook`` before W_O, and ``qk_hook`` after the
    attention block, which finds the block's context and its q / k outputs in ``captured``."""

    def ctx_hook(layer: int):
        def hook(module, args, kwargs):
            captured["ctx"] = ad.attention_context(layer, args, kwargs)

        return hook

    def keep(kind: str):
        def hook(module, args, output):
            captured[kind] = output

        return hook

    handles = []
    try:
        for layer in range(ad.num_layers):
            handles.append(ad.ffn_in_modules(layer)["up"].register_forward_hook(up_hook(layer)))
            handles.append(ad.o_proj(layer).register_forward_pre_hook(o_hook(layer)))
            handles.append(ad.attention(layer).register_forward_pre_hook(ctx_hook(layer), with_kwargs=True))
            for kind in ("q", "k"):
                handles.append(ad.channel_site(layer, kind).module.register_forward_hook(keep(kind)))
            handles.append(ad.attention(layer).register_forward_hook(qk_hook(layer)))
        ones = torch.ones_like(ids)
        with torch.inference_mode():
            ad.body(input_ids=ids, attention_mask=ones, use_cache=False, **ad.forward_kwargs(ones))
    finally:
        for h in handles:
            h.remove()


def _reference_qk(ad: Adapter, layer: int, cap: dict, lengths: list[int], dtype, out, backend: str) -> None:
    """||softmax(S - q_c k_c^T) - softmax(S)||^2 per (query head, channel): a rank-1 change of
    the (capped, masked) scores, so the exact Q/K kernel computes it in O(l^2) per channel."""
    ctx = cap["ctx"]
    B = ctx.hidden_states.shape[0]
    G, d = ad.kv_group_size, ad.head_dim
    for b, n in enumerate(lengths):
        dctx = _doc_context(ctx, b, n, B, dtype)
        _, Q = _norm_rope(ad, layer, dctx, _heads(ad, layer, "q", cap["q"], b, n, dtype), 0)  # (H, n, d)
        _, K = _norm_rope(ad, layer, dctx, _heads(ad, layer, "k", cap["k"], b, n, dtype), 1)  # (Hkv, n, d)
        lo, hi, mask = _visible(ad, layer, n, Q.device)
        scores_q = torch.zeros(ad.num_heads, d, dtype=dtype)
        identity = torch.arange(d)
        for g in range(ad.num_kv_heads):
            heads = slice(g * G, (g + 1) * G)
            t = ad.scores(layer, Q[None, heads], K[None, g : g + 1], dctx, heads=heads)[0]  # (G, n, n)
            P, lse, top = _softmax_stats(t, mask)
            zeros = torch.zeros_like(Q[heads])
            # delta_ij = q_ic k_jc: A = q (unscaled), B = U = 0, W = 1, X = the keys
            rows = prob_change("q", t, t, P, lse, lo, hi, Q[heads], zeros, zeros, torch.ones_like(zeros), K[g],
                               identity, backend=backend, top=top)
            scores_q[heads] = rows.sum(-1)
        out["q"][b, layer] = scores_q.reshape(-1).cpu()
        out["k"][b, layer] = scores_q.reshape(ad.num_kv_heads, G, d).sum(1).reshape(-1).cpu()


# ---- the reference's way, for the benchmark -----------------------------------------------------


def reference_way_bytes(model: nn.Module, seq_len: int) -> int:
    """Peak extra memory of ``reference_way`` for one document: about four (H, d, l, l) tensors
    of the model's dtype (outer products, shifted scores, their softmax, the difference)."""
    ad = get_adapter(model)
    itemsize = torch.finfo(next(model.parameters()).dtype).bits // 8
    return 4 * ad.num_heads * ad.head_dim * seq_len * seq_len * max(itemsize, 4)


def reference_way(model: nn.Module, input_ids: torch.Tensor) -> dict[str, list]:
    """The reference code's scores computed its way: one unpadded document (``input_ids`` of
    shape (1, l)), the full (H, d, l, l) tensor of outer products per layer, every score turned
    into a Python list per layer. Returns ``{kind: [per-layer lists]}``; for timing only."""
    ad = get_adapter(model)
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError("reference_way takes one document: input_ids of shape (1, length)")
    n = input_ids.shape[1]
    scores: dict[str, list] = {k: [None] * ad.num_layers for k in KINDS}
    captured: dict = {}

    def up_hook(layer: int):
        def hook(module, args, output):
            scores["ffn"][layer] = output.abs().sum(1).squeeze().tolist()

        return hook

    def o_hook(layer: int):
        def hook(module, args):
            scores["v"][layer] = args[0].abs().sum(1).squeeze().tolist()

        return hook

    def qk_hook(layer: int):
        def hook(module, args, output):
            ctx = captured["ctx"]
            q = captured["q"][..., ad.channel_site(layer, "q").index].view(1, n, -1, ad.head_dim).transpose(1, 2)
            k = captured["k"][..., ad.channel_site(layer, "k").index].view(1, n, -1, ad.head_dim).transpose(1, 2)
            qn, kn = ad.qk_norms(layer)
            if qn is not None:
                q, k = qn(q), kn(k)
            q, k = ad.apply_rope(q, ctx), ad.apply_rope(k, ctx)
            mask = attention_mask(torch.ones(1, n, dtype=torch.long, device=q.device), ad.sliding_window(layer))
            s = ad.scores(layer, q, k, ctx).masked_fill(~mask, float("-inf"))  # (1, H, l, l)
            k = k.repeat_interleave(ad.kv_group_size, dim=1)
            temp = torch.matmul(q.transpose(2, 3).unsqueeze(-1), k.transpose(2, 3).unsqueeze(-1).transpose(-2, -1))
            temp = s.unsqueeze(2) - temp  # (1, H, d, l, l)
            temp = torch.softmax(temp, dim=-1, dtype=torch.float32)
            temp = temp - torch.softmax(s, dim=-1, dtype=torch.float32).unsqueeze(2)
            per = (temp**2).sum(dim=(-2, -1)).view(-1)
            scores["q"][layer] = per.tolist()
            scores["k"][layer] = per.tolist()
            captured.clear()

        return hook

    _run_hooked(ad, input_ids, up_hook, o_hook, qk_hook, captured)
    return scores
