"""Brute-force neuron importance: what Eq. 1 says, the slow way, as the truth that the fast
formulas of ``mwork.neurons.importance`` are checked against (tests, ``benchmarks/gpu_check``).

Zero ONE channel with a hook, rerun the model, and measure the change of the block output (FFN:
the down projection's output; V: the attention output) or, for Q and K, of the attention
probabilities recomputed from the q/k the rerun model produced with the channel zeroed.
"""

from __future__ import annotations

import torch

from mwork.models.adapters import attention_mask, get_adapter


@torch.no_grad()
def brute_force(model, ids: torch.Tensor, layer: int, kind: str) -> torch.Tensor:
    """Importance of every channel of ``kind`` in ``layer`` for one unpadded document (``ids``
    of shape (n,)), on the CPU: row c of one batch zeroes channel c, the last row is clean."""
    ad = get_adapter(model)
    site = ad.channel_site(layer, kind)
    C, n = ad.neuron_counts()[kind], ids.numel()
    batch = ids.reshape(1, n).repeat(C + 1, 1)
    rows = torch.arange(C, device=ids.device)
    got: dict = {}

    def zero_input(module, args):
        x = args[0].clone()
        x[rows, :, site.index.to(x.device)] = 0
        return (x, *args[1:])

    def zero_output(module, args, output):
        out = output.clone()
        out[rows, :, site.index.to(out.device)] = 0
        return out

    def keep(name):
        def hook(module, args, output):
            got[name] = output
        return hook

    def context(module, args, kwargs):
        got["ctx"] = ad.attention_context(layer, args, kwargs)

    handles = []
    try:
        if kind == "ffn":
            handles.append(ad.mlp_down(layer).register_forward_pre_hook(zero_input))
            handles.append(ad.mlp_down(layer).register_forward_hook(keep("out")))
        else:
            handles.append(site.module.register_forward_hook(zero_output))
            if kind == "v":
                handles.append(ad.o_proj(layer).register_forward_hook(keep("out")))
            else:
                handles.append(ad.attention(layer).register_forward_pre_hook(context, with_kwargs=True))
                for k in ("q", "k"):
                    handles.append(ad.channel_site(layer, k).module.register_forward_hook(keep(k)))
        ones = torch.ones_like(batch)
        ad.body(input_ids=batch, attention_mask=ones, **ad.forward_kwargs(ones))
    finally:
        for h in handles:
            h.remove()
    if kind in ("ffn", "v"):
        out = got["out"]
        return (out[:C] - out[C]).flatten(1).norm(dim=1).cpu()

    def heads(k: str) -> torch.Tensor:
        t = got[k][..., ad.channel_site(layer, k).index.to(got[k].device)]
        return t.view(C + 1, n, -1, ad.head_dim).transpose(1, 2)

    q, k = heads("q"), heads("k")
    qn, kn = ad.qk_norms(layer)
    if qn is not None:
        q, k = qn(q), kn(k)
    ctx = got["ctx"]
    s = ad.scores(layer, ad.apply_rope(q, ctx), ad.apply_rope(k, ctx), ctx)
    mask = attention_mask(torch.ones(C + 1, n, dtype=torch.long, device=s.device), ad.sliding_window(layer))
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
    return (p[:C] - p[C]).flatten(1).norm(dim=1).cpu()
