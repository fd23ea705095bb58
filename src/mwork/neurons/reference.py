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

from mwork.hooks import Hooks, pack_left
from mwork.models.adapters import KINDS, Adapter, attention_mask, get_adapter
from mwork.neurons.attention import doc_context, doc_heads, norm_rope, softmax_stats, visible
from mwork.neurons.qk_kernel import ChannelChange, GroupScores, prob_change


def reference_importance(model: nn.Module, batch: Mapping[str, torch.Tensor], backend: str = "auto") -> dict[str, torch.Tensor]:
    """The reference code's scores for every document of ``batch``: ``{kind: (docs, layers,
    neurons)}``, float32 (float64 for float64 models), on the CPU. Not Eq. 1 (module docstring)."""
    ad = get_adapter(model)
    ids, lengths = pack_left(batch)
    ids = ids.to(next(model.parameters()).device)
    dtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    counts = ad.neuron_counts()
    out = {k: torch.zeros(len(lengths), ad.num_layers, counts[k], dtype=dtype) for k in KINDS}
    captured: dict = {}

    def up_hook(layer: int):
        site = ad.site("ffn.up.out", layer)

        def read(up):
            # the up half of a fused gate_up (Phi-3); (batch, tokens) where the model flattens them (OPT)
            up = site.channels(up).reshape(len(lengths), -1, ad.ffn_size)
            for b, n in enumerate(lengths):
                out["ffn"][b, layer] = up[b, :n].to(dtype).abs().sum(0).cpu()

        return read

    def o_hook(layer: int):
        def read(z):
            G, d = ad.kv_group_size, ad.head_dim
            for b, n in enumerate(lengths):
                mag = z[b, :n].to(dtype).abs().sum(0).reshape(ad.num_kv_heads, G, d)
                out["v"][b, layer] = mag.sum(1).reshape(-1).cpu()

        return read

    def qk_hook(layer: int):
        def read(output):
            try:
                _reference_qk(ad, layer, captured, lengths, dtype, out, backend)
            finally:
                captured.clear()

        return read

    _run_hooked(ad, ids, up_hook, o_hook, qk_hook, captured)
    return out


def _run_hooked(ad: Adapter, ids: torch.Tensor, up_hook, o_hook, qk_hook, captured: dict) -> None:
    """One forward pass of ``ids`` (unpadded) with the reference scores' readers on every layer:
    ``up_hook(layer)`` at the MLP's input projection, ``o_hook(layer)`` at W_O's input, and
    ``qk_hook(layer)`` at the attention block's end, which finds the block's context and its
    q / k outputs in ``captured``."""
    hooks = Hooks()
    for layer in range(ad.num_layers):
        hooks.read(ad.site("ffn.up.out", layer), up_hook(layer))
        hooks.read(ad.site("attn.ctx", layer), o_hook(layer))
        hooks.read(ad.site("attn.in", layer), lambda ctx: captured.__setitem__("ctx", ctx))
        for kind in ("q", "k"):
            hooks.read(ad.site(f"{kind}.out", layer), lambda x, kind=kind: captured.__setitem__(kind, x))
        hooks.read(ad.site("attn.out", layer), qk_hook(layer))
    ones = torch.ones_like(ids)
    with hooks, torch.inference_mode():
        ad.body(input_ids=ids, attention_mask=ones, use_cache=False, **ad.forward_kwargs(ones))


def _reference_qk(ad: Adapter, layer: int, cap: dict, lengths: list[int], dtype, out, backend: str) -> None:
    """||softmax(S - q_c k_c^T) - softmax(S)||^2 per (query head, channel): a rank-1 change of
    the (capped, masked) scores, so the exact Q/K kernel computes it in O(l^2) per channel."""
    ctx = cap["ctx"]
    B = ctx.hidden_states.shape[0]
    G, d = ad.kv_group_size, ad.head_dim
    for b, n in enumerate(lengths):
        dctx = doc_context(ctx, b, n, B, dtype)
        _, Q = norm_rope(ad, layer, dctx, doc_heads(ad, layer, "q", cap["q"], b, n, dtype), 0)  # (H, n, d)
        _, K = norm_rope(ad, layer, dctx, doc_heads(ad, layer, "k", cap["k"], b, n, dtype), 1)  # (Hkv, n, d)
        lo, hi, mask = visible(ad, layer, n, Q.device)
        scores_q = torch.zeros(ad.num_heads, d, dtype=dtype)
        identity = torch.arange(d)
        for g in range(ad.num_kv_heads):
            heads = slice(g * G, (g + 1) * G)
            t = ad.scores(layer, Q[None, heads], K[None, g : g + 1], dctx, heads=heads)[0]  # (G, n, n)
            P, lse, top = softmax_stats(t, mask)
            zeros = torch.zeros_like(Q[heads])
            # delta_ij = q_ic k_jc: A = q (unscaled), B = U = 0, W = 1, X = the keys
            change = ChannelChange("q", Q[heads], zeros, zeros, torch.ones_like(zeros), K[g], identity)
            rows = prob_change(GroupScores(t, t, P, lse, lo, hi, top=top), change, backend=backend)
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
        site = ad.site("ffn.up.out", layer)

        def read(up):
            up = site.channels(up).reshape(1, n, -1)  # a fused gate_up's up half; OPT flattens the tokens
            scores["ffn"][layer] = up.abs().sum(1).squeeze().tolist()

        return read

    def o_hook(layer: int):
        def read(z):
            scores["v"][layer] = z.abs().sum(1).squeeze().tolist()

        return read

    def qk_hook(layer: int):
        def read(output):
            ctx = captured["ctx"]
            q = captured["q"][..., ad.channel_site(layer, "q").index].view(1, n, -1, ad.head_dim).transpose(1, 2)
            k = captured["k"][..., ad.channel_site(layer, "k").index].view(1, n, -1, ad.head_dim).transpose(1, 2)
            q, k = ad.apply_qk_norm(layer, 0, q), ad.apply_qk_norm(layer, 1, k)
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

        return read

    _run_hooked(ad, input_ids, up_hook, o_hook, qk_hook, captured)
    return scores
