"""Layer parity: the pieces an adapter names add back up to what each decoder layer computes.

For every layer, the layer's output (``layer.out``) is recomputed from its input
(``layer.in``), the attention block's output (``o.out``) and the FFN's output (``ffn.out``)
with ``Adapter.combine``; the layer-0 input must be ``Adapter.embed_site``'s value and the
final norm's input the last layer's output. A wrong module behind any of these sites, a missed
post-norm, residual multiplier or parallel block shows up as a large error here -- the check
nnterp runs for its families, run by the tests on every mwork family. Use it on a family you
register yourself.

Values are read through :mod:`mwork.hooks` and copied at once: some models add into a block's
output in place afterwards (Falcon's parallel blocks add the attention output into the MLP's).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from mwork.hooks import Hooks
from mwork.models.adapters import get_adapter


@torch.no_grad()
def layer_parity(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Largest relative error of each identity on ``batch`` (a tokenizer output run as is):
    ``{"embed": ..., "final": ..., "layer 0": ..., ...}``, each max |recomputed - real| /
    max |real|; about 1e-16 in float64 when the adapter is right."""
    ad = get_adapter(model)
    got: dict[tuple[str, int | None], torch.Tensor] = {}

    def keep(name: str, layer: int | None):
        return lambda value: got.__setitem__((name, layer), value.detach().clone())

    hooks = Hooks().read(ad.embed_site, keep("embed", None)).read(ad.site("final_norm.in"), keep("final_norm.in", None))
    for layer in range(ad.num_layers):
        for name in ("layer.in", "layer.out", "o.out", "ffn.out"):
            hooks.read(ad.site(name, layer), keep(name, layer))
    with hooks:
        ad.body(**batch)

    def err(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max().clamp(min=torch.finfo(b.dtype).tiny))

    out = {"embed": err(got["embed", None], got["layer.in", 0]),
           "final": err(got["layer.out", ad.num_layers - 1], got["final_norm.in", None])}
    for layer in range(ad.num_layers):
        x, y = got["layer.in", layer], got["layer.out", layer]
        # some models flatten the tokens in a block (OPT's FFN): back to the stream's shape
        attn, ffn = got["o.out", layer].reshape(x.shape), got["ffn.out", layer].reshape(x.shape)
        out[f"layer {layer}"] = err(ad.combine(layer, x, attn, ffn), y)
    return out
