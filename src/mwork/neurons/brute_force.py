"""Brute-force neuron importance: what Eq. 1 says, the slow way, as the truth that the fast
formulas of ``mwork.neurons.importance`` are checked against (tests, ``benchmarks/gpu_check``).

Zero ONE channel with a hook, rerun the model, and measure the change of the block output (FFN:
the down projection's output; V: the attention output) or, for Q and K, of the attention
probabilities of every head, recomputed from the q/k the rerun model produced with the channel
zeroed (through the adapter's QK-norm, RoPE and score function, which ``tests/test_adapters.py``
checks against the model's own attention output).

Mixture-of-experts layers need nothing else: their ``ffn.in`` site is (rows, tokens, experts x
expert channels), so row c zeroes channel c of its expert (at the tokens routed to it), and
``ffn.out`` is the block's output, routing weights included (``mwork.models.families.moe_block``).
"""

from __future__ import annotations

import torch

from mwork.hooks import Hooks
from mwork.models.adapters import attention_mask, get_adapter


class _Captured(Exception):
    """Raised by the last reader to end the rerun once the measured block has run."""


@torch.no_grad()
def brute_force(model, ids: torch.Tensor, layer: int, kind: str) -> torch.Tensor:
    """Importance of every channel of ``kind`` in ``layer`` for one unpadded document (``ids``
    of shape (n,)), on the CPU: row c of one batch zeroes channel c, the last row is clean."""
    ad = get_adapter(model)
    site = ad.neuron_site(kind, layer)
    C, n = ad.neuron_counts()[kind], ids.numel()
    batch = ids.reshape(1, n).repeat(C + 1, 1)
    rows = torch.arange(C, device=ids.device)
    features = site.features(torch.arange(C))
    got: dict = {}

    def zero_one_per_row(x: torch.Tensor) -> torch.Tensor:
        shape = x.shape  # (rows, n, features), or (rows * n, features) where the model flattens (OPT's FFN)
        x = x.reshape(C + 1, n, shape[-1]).clone()
        x[rows, :, features.to(x.device)] = 0
        return x.reshape(shape)

    def stop(value) -> None:  # everything needed is captured: the later layers need not run
        raise _Captured

    hooks = Hooks().edit(site, zero_one_per_row)
    if kind in ("ffn", "v"):  # the block's output: the down projection's, or W_O's
        end = ad.site("ffn.out" if kind == "ffn" else "o.out", layer)
        hooks.read(end, lambda out: got.__setitem__("out", out.clone()))
    else:  # the q and k the rerun produced (one zeroed), and the attention call's context
        end = ad.site("attn.out", layer)
        hooks.read(ad.site("attn.in", layer), lambda ctx: got.__setitem__("ctx", ctx))
        for k in ("q", "k"):
            hooks.read(ad.site(f"{k}.out", layer), lambda x, k=k: got.__setitem__(k, x))
    hooks.read(end, stop)
    ones = torch.ones_like(batch)
    try:
        with hooks:
            ad.body(input_ids=batch, attention_mask=ones, **ad.forward_kwargs(ones))
    except _Captured:
        pass
    if kind in ("ffn", "v"):
        out = got["out"]
        out = out.reshape(C + 1, -1)
        return (out[:C] - out[C]).norm(dim=1).cpu()

    def heads(k: str) -> torch.Tensor:
        return ad.neuron_site(k, layer).channels(got[k]).reshape(C + 1, n, -1, ad.head_dim).transpose(1, 2)

    q, k = ad.apply_qk_norm(layer, 0, heads("q")), ad.apply_qk_norm(layer, 1, heads("k"))
    ctx = got["ctx"]
    s = ad.scores(layer, ad.apply_rope(q, ctx), ad.apply_rope(k, ctx), ctx)
    mask = attention_mask(torch.ones(C + 1, n, dtype=torch.long, device=s.device), ad.sliding_window(layer))
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
    return (p[:C] - p[C]).flatten(1).norm(dim=1).cpu()
