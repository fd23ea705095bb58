"""The field's quality measures of a dictionary, on held-out texts.

* ``fve``: fraction of variance explained, ``1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2`` over
  the held-out tokens' activations;
* ``l0``: mean number of features active per token; ``dead``: features that never fired on any of
  the ``n_tokens`` held-out tokens (``dead_fraction`` of the width); ``dead_train`` (from the
  training): features that fired on no row of the last pass over the training buffer;
* next-token loss (mean cross-entropy over the held-out windows' next-token predictions) of the
  clean model (``loss_clean``), with the dictionary spliced in (``loss_spliced``: the site's value
  replaced by its reconstruction ``decode(encode(x))``) and with the site zero-ablated
  (``loss_zero``), both through one ``mwork.hooks`` edit (no weight is changed) at every text token
  (the leading special tokens, e.g. BOS, are left as they are); ``loss_recovered = (loss_zero -
  loss_spliced) / (loss_zero - loss_clean)`` (1: as good as the clean model, 0: as bad as
  removing the site).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch

from mwork.hooks import Hooks, packed_ids
from mwork.models.adapters import get_adapter
from mwork.models.loading import input_device
from mwork.units.dictionary import Codebook

#: at most this many bytes of float32 logits per forward call of the loss measurement (a large
#: vocabulary, e.g. Gemma's 262k, times 512 positions is half a GB per row)
LOGITS_BYTES = 1 << 30
QUALITY_COLUMNS = ("layer", "site", "width", "activation", "k", "n_tokens", "fve", "mse", "l0", "dead",
                   "dead_fraction", "dead_train", "loss_clean", "loss_spliced", "loss_zero", "loss_recovered",
                   "eval_windows")


@torch.no_grad()
def reconstruction_quality(book: Codebook, x: torch.Tensor, chunk: int = 4096) -> dict[str, Any]:
    """FVE, MSE, L0 and dead features of ``book`` on the rows of ``x`` (tokens, d)."""
    if x.shape[0] == 0:
        raise ValueError("no held-out token to measure the dictionary on: give more text")
    x = x.double()
    mean = x.mean(0)
    err = total = l0 = 0.0
    fired = torch.zeros(book.width, dtype=torch.bool)
    for start in range(0, x.shape[0], chunk):
        rows = x[start:start + chunk]
        f = book.encode(rows.float())
        err += float((rows - book.decode(f).double()).pow(2).sum())
        total += float((rows - mean).pow(2).sum())
        active = f != 0
        l0 += float(active.sum())
        fired |= active.any(0)
    n = int(x.shape[0])
    dead = int((~fired).sum())
    return {"n_tokens": n, "fve": 1.0 - err / total if total > 0 else math.nan, "mse": err / n, "l0": l0 / n,
            "dead": dead, "dead_fraction": dead / book.width}


def eval_windows(tokenizer: Any, documents: Sequence[str], max_length: int, tokens: int) -> list[list[int]]:
    """Held-out windows: each document's first ``max_length`` tokens (with the tokenizer's special
    tokens), until ``tokens`` tokens; windows of fewer than two tokens are skipped."""
    out, total = [], 0
    for doc in documents:
        if total >= tokens:
            break
        ids = list(tokenizer(doc, truncation=True, max_length=max_length)["input_ids"])
        if len(ids) >= 2:
            out.append(ids)
            total += len(ids)
    return out


def _leading_special(tokenizer: Any, ids: Sequence[int]) -> int:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    lead = 0
    while lead < len(ids) and ids[lead] in special:
        lead += 1
    return lead


@torch.no_grad()
def splice_losses(model: torch.nn.Module, tokenizer: Any, windows: Sequence[Sequence[int]], site: str,
                  books: Mapping[int, Codebook], batch_size: int = 8, progress: bool = False) -> dict[int, dict[str, float]]:
    """Per layer of ``books``: the mean next-token loss of the clean model (one pass for every
    layer), with that layer's dictionary spliced in at ``site`` and with the site zero-ablated
    (module docstring); ``batch_size`` windows per call at most (fewer when their logits would
    pass :data:`LOGITS_BYTES`)."""
    if not windows:
        raise ValueError("no held-out window to measure the next-token loss on: give more text")
    from tqdm.auto import tqdm

    adapter = get_adapter(model)
    device = input_device(model)
    pad = int(tokenizer.pad_token_id or 0)
    runs: list[tuple[str, int | None, Any]] = [("clean", None, None)]
    for layer, book in books.items():
        runs += [("spliced", layer, lambda x, book=book: book.decode(book.encode(x))), ("zero", layer, torch.zeros_like)]
    sums = {(name, layer): 0.0 for name, layer, _ in runs}
    count = 0
    vocab = int(model.get_output_embeddings().weight.shape[0])
    rows = max(1, min(batch_size, LOGITS_BYTES // (max(len(w) for w in windows) * vocab * 4)))
    was_training = model.training
    model.eval()
    try:
        for b in tqdm(range(0, len(windows), rows), desc=f"next-token loss with the dictionaries at {site}",
                      unit="call", disable=not progress):
            group = windows[b:b + rows]
            ids = packed_ids(group, pad)
            edited = torch.zeros(ids.shape, dtype=torch.bool)
            scored = torch.zeros(ids.shape[0], ids.shape[1] - 1, dtype=torch.bool)
            for row, w in enumerate(group):
                edited[row, _leading_special(tokenizer, w):len(w)] = True
                scored[row, :len(w) - 1] = True
            ids = ids.to(device)
            targets = ids[:, 1:][scored.to(device)]
            for name, layer, change in runs:
                hooks = Hooks()
                if change is not None:
                    hooks.edit(adapter.site(site, layer), _at(edited, change))
                with hooks:
                    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
                chosen = logits[:, :-1][scored.to(logits.device)].float()
                sums[name, layer] += float(torch.nn.functional.cross_entropy(chosen, targets.to(chosen.device),
                                                                             reduction="sum"))
            count += int(scored.sum())
    finally:
        model.train(was_training)
    clean = sums["clean", None] / count
    out = {}
    for layer in books:
        got = {"loss_clean": clean, "loss_spliced": sums["spliced", layer] / count, "loss_zero": sums["zero", layer] / count}
        gap = got["loss_zero"] - clean
        got["loss_recovered"] = (got["loss_zero"] - got["loss_spliced"]) / gap if gap != 0 else math.nan
        out[layer] = got
    return out


def _at(mask: torch.Tensor, change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> change(x)`` at the positions of ``mask`` (batch, tokens), ``x`` elsewhere."""

    def edit(x: torch.Tensor) -> torch.Tensor:
        m = mask.to(x.device)[..., None]
        return torch.where(m, change(x.float()).to(x.dtype), x)

    return edit
