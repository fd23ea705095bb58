"""The two ways the tasks query a model, both batched and deterministic: greedy generation
(MGSM, XQuAD, XLSum) and log-likelihood of a continuation (X-CSQA).

Both only call ``model.generate`` / ``model(...)``, so hooks registered on the model (for
example ``mwork.deactivate``) are active during evaluation.

Batching, collation and the distributed split are the task runtime's (``mwork.tasks.runtime``):
the single process's batches (same sort, same batch size, hence the same padding) run round
robin over the ranks under torchrun and the per-item results are gathered in order, so every
rank gets the single process's outputs and the tasks' scores are identical too.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from mwork.models.loading import input_device
from mwork.numerics import NONFINITE, NonFiniteError, unusable_logits
from mwork.tasks.queries import map_batches, padding_side, right_padded


def cut_at_stop(text: str, stop: Sequence[str] = ()) -> str:
    """The answer part of a continuation: leading whitespace dropped, everything from the first
    stop string on dropped, trailing whitespace dropped. Stop strings are searched only after the
    leading whitespace, so an answer that starts on a new line is not cut to nothing by ``"\\n"``."""
    text = text.lstrip()
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut].rstrip()


class _StopOnStrings(StoppingCriteria):
    """Marks a row finished once its decoded continuation contains a stop string."""

    def __init__(self, tokenizer: Any, stop: Sequence[str], prompt_len: int):
        self.tokenizer, self.stop, self.prompt_len = tokenizer, [s for s in stop if s], prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        done = [any(s in t.lstrip() for s in self.stop) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _eos_ids(model: Any, tokenizer: Any) -> int | list[int] | None:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return eos if eos is not None else tokenizer.eos_token_id


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    stop: Sequence[str] = (),
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "generating",
) -> list[str]:
    """Greedy continuations of ``prompts`` (the continuation only, passed through ``cut_at_stop``).

    A row ends at EOS, at a stop string, or after ``max_new_tokens``. Prompts are batched
    longest first with left padding (the tokenizer's padding side is restored afterwards);
    results come back in the order of ``prompts`` and do not depend on ``batch_size`` beyond
    floating-point rounding."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=eos
    )
    lengths = [len(tokenizer(p).input_ids) for p in prompts]
    device = input_device(model)

    def run(rows: list[int]) -> list[str]:
        enc = tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True)
        input_ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        criteria = StoppingCriteriaList([_StopOnStrings(tokenizer, stop, input_ids.shape[1])]) if stop else None
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids, attention_mask=mask, generation_config=config, stopping_criteria=criteria
            )
        texts = tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True)
        return [cut_at_stop(text, stop) for text in texts]

    with padding_side(tokenizer, "left"):  # longest first: little padding
        return map_batches(len(prompts), lambda i: -lengths[i], batch_size, run, desc=desc, progress=progress)


# ---- log-likelihood --------------------------------------------------------------------------


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` (with the tokenizer's special tokens) and of ``continuation``.

    The continuation's tokens are those of ``context + continuation`` past the context's own
    tokens, so it is tokenised as it would be in running text; if the joint tokenisation
    changes the context's tokens, the continuation is tokenised on its own."""
    ctx = list(tokenizer(context).input_ids)
    whole = list(tokenizer(context + continuation).input_ids)
    if len(whole) > len(ctx) and whole[:len(ctx)] == ctx:
        cont = whole[len(ctx):]
    else:
        cont = list(tokenizer(continuation, add_special_tokens=False).input_ids)
    if not ctx:
        raise ValueError("the context has no tokens (this tokenizer adds no BOS): give a non-empty context")
    if not cont:
        raise ValueError(f"the continuation {continuation!r} has no tokens")
    return ctx, cont


def loglikelihood(
    model: Any,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "scoring",
) -> list[tuple[float, int]]:
    """For each ``(context, continuation)``: the sum of log p(continuation tokens | context) in
    nats, and the number of continuation tokens.

    Batches are right-padded (real tokens keep their positions; padding is masked and after
    them, so it cannot influence them); only the logits of continuation positions are
    materialised when the model accepts ``logits_to_keep``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = [encode_pair(tokenizer, c, x) for c, x in requests]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    keep_ok = "logits_to_keep" in inspect.signature(model.forward).parameters
    device = input_device(model)

    def run(rows: list[int]) -> list[tuple[float, int]]:
        ids, mask = right_padded([encoded[i][0] + encoded[i][1] for i in rows], pad)
        width = ids.shape[1]
        kwargs: dict[str, Any] = {}
        if keep_ok:  # first needed logit: last context token of the shortest context
            kwargs["logits_to_keep"] = width - min(len(encoded[i][0]) for i in rows) + 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).logits
        offset = width - logits.shape[1]
        values = []
        for r, i in enumerate(rows):
            ctx, cont = encoded[i]
            pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=logits.device) - offset
            if bool(unusable_logits(logits[r, pos]).any()):
                raise NonFiniteError(f"{NONFINITE} while scoring request {i}: no log-likelihood can be computed; "
                                     "an intervention this strong (e.g. --scale) overflows")
            logp = logits[r, pos].float().log_softmax(-1)
            target = torch.tensor(cont, device=logits.device)
            values.append((float(logp.gather(-1, target[:, None]).sum()), len(cont)))
        return values

    # longest first (little padding)
    return map_batches(len(encoded), lambda i: -(len(encoded[i][0]) + len(encoded[i][1])), batch_size, run,
                       desc=desc, progress=progress)
