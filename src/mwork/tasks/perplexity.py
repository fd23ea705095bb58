"""Perplexity of a causal LM on any texts (``mwork.texts`` names them).

Rules, so that numbers are comparable across models, batch sizes and runs:

* Each text is tokenized with the tokenizer's own special tokens (``add_special_tokens=True``),
  as the model expects: Gemma/Llama get a BOS, GPT-2 gets none. The leading special tokens
  (the *prefix*) are context only, never scored; every other token is scored exactly once.
  Without a prefix the first token has no context and is not scored.
* Long texts are split into windows of at most ``max_length`` tokens, each starting with the
  prefix. The scored tokens are cut into consecutive chunks: the first window holds the first
  ``max_length - len(prefix)`` body tokens; every later chunk holds ``stride`` new tokens
  (default ``max_length - len(prefix) - 1``) and is scored in one pass over the prefix plus the
  ``max_length - len(prefix)`` body tokens that end with it, so every scored token sees at least
  ``max_length - len(prefix) - stride`` tokens of its own text. A smaller stride means more
  context per token and more compute.
* Padding never counts: windows are right-padded, and the scored positions only attend to
  earlier real tokens (causal attention; positions are the same as without padding). The result is the token-weighted mean NLL over all scored tokens (nats),
  ``ppl = exp(nll)``.
* Texts with no scored token (empty or only whitespace -- the rule of ``mwork.texts.is_empty``,
  the same as detection's and training's -- or a single token without a prefix) are reported
  in ``empty_texts``, never silently dropped.
* Under torchrun (``mwork.distributed``) the windows are batched as in one process and the
  batches dealt round robin over the ranks (``mwork.tasks.runtime.map_batches``); per-window
  NLLs are gathered and summed in the original order, so every rank returns the single
  process's result, bit for bit.

As a task (rolling log-likelihood, like the others in the registry): ``get_task("ppl")``
(``mwork.tasks.ppl``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch.nn import functional as F

from mwork.texts import is_empty
from mwork.hooks import Hooks, packed_ids
from mwork.models.adapters import get_adapter
from mwork.models.loading import input_device
from mwork.numerics import NONFINITE, NonFiniteError, unusable_logits
from mwork.tasks.queries import map_batches

_LOGIT_BUDGET = 1 << 25  # vocabulary x tokens decoded at once (128 MiB in float32)


def _prefix_length(ids: Sequence[int], special: set[int]) -> int:
    n = 0
    while n < len(ids) and ids[n] in special:
        n += 1
    return n


def make_windows(ids: Sequence[int], n_prefix: int, max_length: int, stride: int | None = None) -> list[tuple[list[int], int]]:
    """Split one tokenized text into ``(input_ids, n_scored)`` windows (module docstring rule):
    the scored tokens are always the last ``n_scored`` of each window."""
    prefix, body = list(ids[:n_prefix]), list(ids[n_prefix:])
    width = max_length - n_prefix  # body tokens per window
    if width < 2:
        raise ValueError(f"max_length={max_length} leaves fewer than 2 text tokens per window "
                         f"after the {n_prefix} special prefix token(s); raise max_length")
    if stride is None:
        stride = width - 1
    if not 1 <= stride <= width - 1:
        raise ValueError(f"stride must be between 1 and max_length - prefix - 1 = {width - 1}, got {stride}")
    first = 0 if n_prefix else 1  # without a prefix the first token has no context
    if len(body) <= first:
        return []
    end = min(width, len(body))
    windows = [(prefix + body[:end], end - first)]
    while end < len(body):
        new_end = min(end + stride, len(body))
        windows.append((prefix + body[max(0, new_end - width):new_end], new_end - end))
        end = new_end
    return windows


# ---- perplexity -------------------------------------------------------------------------------


@torch.no_grad()
def _window_nll(model: torch.nn.Module, batch: list[tuple[list[int], int]], pad_id: int) -> list[float]:
    """Summed NLL of the scored tokens of each window (float64), with right padding."""
    adapter = get_adapter(model)
    device = input_device(model)
    input_ids = packed_ids([ids for ids, _ in batch], pad_id)
    captured: list[torch.Tensor] = []
    # the final norm's input: decode() gives the model's logits from it
    hooks = Hooks().read(adapter.site("final_norm.in"), captured.append)
    with hooks:
        # the packed policy (mwork.hooks): right padding and an all-ones mask, on purpose
        ids = input_ids.to(device)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1, use_cache=False)
    hidden = captured[-1]
    # rows (r, position) whose next token is scored, and that token
    rows, pos, tgt = [], [], []
    for r, (ids, n) in enumerate(batch):
        L = len(ids)
        rows += [r] * n
        pos += range(L - n - 1, L - 1)
        tgt += ids[L - n:]
    rows_t, pos_t = torch.tensor(rows, device=hidden.device), torch.tensor(pos, device=hidden.device)
    targets = torch.tensor(tgt, device=hidden.device)
    vocab = int(getattr(model.config, "vocab_size", 0) or adapter.lm_head.weight.shape[0])
    chunk = max(1, _LOGIT_BUDGET // max(vocab, 1))
    token_nll = torch.empty(len(tgt), dtype=torch.float64)
    for s in range(0, len(tgt), chunk):
        h = hidden[rows_t[s:s + chunk], pos_t[s:s + chunk]]
        logits = adapter.decode(h)
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        nll = F.cross_entropy(logits, targets[s:s + chunk], reduction="none").double()
        token_nll[s:s + chunk] = nll.masked_fill(unusable_logits(logits), math.nan).cpu()  # NaN: not measured
    sums, s = [], 0
    for _, n in batch:
        sums.append(float(token_nll[s:s + n].sum()))
        s += n
    return sums


def perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 8,
    max_length: int = 512,
    stride: int | None = None,
    per_text: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Token-weighted perplexity of ``model`` on ``texts`` (rules in the module docstring).

    Returns ``ppl``, ``tokens`` (scored tokens), ``nll`` (mean, nats), ``n_texts``,
    ``n_windows``, ``empty_texts`` (indices of texts with nothing to score) and, with
    ``per_text``, ``per_text``: ``[{"nll_sum", "tokens"}]`` per text. Deterministic."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not one string")
    texts = list(texts)
    if not texts:
        raise ValueError("no texts given")
    if batch_size < 1 or max_length < 2:
        raise ValueError(f"batch_size must be >= 1 and max_length >= 2 (got {batch_size}, {max_length})")
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    encoded = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
    windows: list[tuple[list[int], int]] = []
    owner: list[int] = []
    for t, ids in enumerate(encoded):
        if is_empty(texts[t]):  # nothing but whitespace: an empty text (mwork.texts.is_empty), reported
            continue
        for w in make_windows(ids, _prefix_length(ids, special), max_length, stride):
            windows.append(w)
            owner.append(t)
    nll_sum = [0.0] * len(texts)
    n_tok = [0] * len(texts)
    for w, t in zip(windows, owner):
        n_tok[t] += w[1]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        # longest windows first (little padding); data parallel: the single process's batches
        window_nll = map_batches(len(windows), lambda i: -len(windows[i][0]), batch_size,
                                 lambda rows: _window_nll(model, [windows[i] for i in rows], pad_id),
                                 desc="perplexity", progress=progress)
    finally:
        model.train(was_training)
    broken = [i for i, v in enumerate(window_nll) if not math.isfinite(v)]
    if broken:
        texts_hit = sorted({owner[i] for i in broken})
        raise NonFiniteError(f"{NONFINITE} in {len(broken)} of {len(windows)} windows (texts "
                             f"{', '.join(map(str, texts_hit[:8]))}{', ...' if len(texts_hit) > 8 else ''}): no "
                             "perplexity can be computed; an intervention this strong (e.g. --scale) overflows")
    for i, t in enumerate(owner):
        nll_sum[t] += window_nll[i]
    tokens = sum(n_tok)
    if tokens == 0:
        raise ValueError("none of the texts has a token to score (all empty or too short)")
    nll = math.fsum(nll_sum) / tokens
    result: dict[str, Any] = {
        "ppl": math.exp(nll),
        "nll": nll,
        "tokens": tokens,
        "n_texts": len(texts),
        "n_windows": len(windows),
        "empty_texts": [t for t in range(len(texts)) if n_tok[t] == 0],
        "max_length": max_length,
        "stride": stride,
    }
    if per_text:
        result["per_text"] = [{"nll_sum": s, "tokens": n} for s, n in zip(nll_sum, n_tok)]
    return result
