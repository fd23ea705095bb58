"""Greedy generations with what the next-token distribution says about the target language, and
the unsteered model's log-likelihood of what was generated (the damage).

Both are batched by the task runtime (``mwork.tasks.runtime.map_batches``): generation with the
tokenizer's left padding, longest prompts first; scoring with right padding (real tokens keep
their positions). They only call ``model.generate`` / ``model(...)``, so whatever hooks are
active (``mwork.steer``) act on them.

Per generated position t (up to and including the first EOS) of a generation, from the
model's raw logits (``output_logits``, before any logits processor):

* ``mass``: the probability of all tokens the token-level identifier labels as the target;
* ``rank``: the rank (1 = top-1) of the most probable target-language token;
* ``language rank``: the target's rank among the identifier's languages ordered by mass
  (unknown tokens, e.g. punctuation, are not a language).

A generation records them at its first position and their mean over its positions.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Sequence

import torch
from transformers import GenerationConfig

from mwork.experiments.steering.vocab import VocabLanguages
from mwork.models.loading import input_device
from mwork.numerics import unusable_logits
from mwork.tasks.runtime import map_batches, padding_side, right_padded


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    return [] if eos is None else ([int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)])


def _cut(ids: list[int], eos: set[int]) -> list[int]:
    """The generated ids up to and including the first EOS."""
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i + 1]
    return ids


def position_measures(logits: torch.Tensor, vocab: VocabLanguages, target: str) -> dict[str, torch.Tensor]:
    """``mass``, ``rank`` and ``lang_rank`` (see the module docstring) for logits (positions, vocab)."""
    lg = logits.float()
    index = vocab.resized(lg.shape[-1]).to(lg.device)
    code = vocab.code(target)
    if code is None:
        raise ValueError(f"no token of the vocabulary is labelled {target!r}")
    tmask = index == code
    p = lg.softmax(-1)
    mass = p[:, tmask].sum(-1)
    best = lg[:, tmask].max(-1).values
    rank = 1 + (lg > best[:, None]).sum(-1)
    by_lang = torch.zeros(lg.shape[0], len(vocab.names), dtype=p.dtype, device=p.device).index_add_(1, index, p)
    known = by_lang[:, 1:]
    lang_rank = 1 + (known > by_lang[:, code:code + 1]).sum(-1)
    return {"mass": mass, "rank": rank, "lang_rank": lang_rank}


def generate_measured(model: Any, tokenizer: Any, prompts: Sequence[str], vocab: VocabLanguages, target: str, *,
                      max_new_tokens: int, batch_size: int = 8, progress: bool = True) -> list[dict[str, Any]]:
    """For each prompt: ``ids`` (generated, to the first EOS included), ``text`` (decoded without
    special tokens), ``mass_first``, ``mass_mean``, ``rank_first``, ``lang_rank_first`` and
    ``lang_rank_mean`` (module docstring), and ``nonfinite``: True when the logits of any of its
    positions are NaN / inf / all equal (``mwork.numerics``; then every measure is None, never a
    rank or a mass of such logits)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompts:
        return []
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad,
                              eos_token_id=eos or None, output_logits=True, return_dict_in_generate=True)
    lengths = [len(tokenizer(p).input_ids) for p in prompts]
    device = input_device(model)
    eos_set = set(eos)

    def run(rows: list[int]) -> list[dict[str, Any]]:
        enc = tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        new = out.sequences[:, ids.shape[1]:].tolist()
        logits = torch.stack(list(out.logits), dim=1)  # (rows, steps, vocab)
        values = []
        bad = unusable_logits(logits)  # (rows, steps): NaN / inf / all-equal logits, never measured
        for r in range(len(rows)):
            gen = _cut(new[r], eos_set)
            text = tokenizer.decode(gen, skip_special_tokens=True)
            if bool(bad[r, :len(gen)].any()):
                values.append({"ids": gen, "text": text, "nonfinite": True, "mass_first": None, "mass_mean": None,
                               "rank_first": None, "lang_rank_first": None, "lang_rank_mean": None})
                continue
            m = position_measures(logits[r, :len(gen)], vocab, target)
            values.append({"ids": gen, "text": text, "nonfinite": False,
                           "mass_first": float(m["mass"][0]), "mass_mean": float(m["mass"].mean()),
                           "rank_first": int(m["rank"][0]), "lang_rank_first": int(m["lang_rank"][0]),
                           "lang_rank_mean": float(m["lang_rank"].float().mean())})
        return values

    with padding_side(tokenizer, "left"):
        return map_batches(len(prompts), lambda i: -lengths[i], batch_size, run, desc="generating", progress=progress)


def continuation_nll(model: Any, tokenizer: Any, prompts: Sequence[str], continuations: Sequence[Sequence[int]], *,
                     batch_size: int = 8, progress: bool = False) -> list[tuple[float, int]]:
    """For each (prompt, generated ids): the sum of -log p(generated token | prompt, earlier ones)
    in nats under the model as it is now, and the number of tokens scored (0 for an empty one); the
    sum is NaN when the logits are non-finite (``mwork.numerics``)."""
    contexts = [list(tokenizer(p).input_ids) for p in prompts]
    if any(not c for c in contexts):
        raise ValueError("a prompt has no tokens (this tokenizer adds no BOS): give non-empty prompts")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    keep_ok = "logits_to_keep" in inspect.signature(model.forward).parameters
    device = input_device(model)
    todo = [i for i, c in enumerate(continuations) if len(c)]

    def run(rows: list[int]) -> list[tuple[float, int]]:
        items = [todo[j] for j in rows]
        ids, mask = right_padded([contexts[i] + list(continuations[i]) for i in items], pad)
        width = ids.shape[1]
        kwargs: dict[str, Any] = {}
        if keep_ok:
            kwargs["logits_to_keep"] = width - min(len(contexts[i]) for i in items) + 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **kwargs).logits
        offset = width - logits.shape[1]
        values = []
        for r, i in enumerate(items):
            ctx, cont = contexts[i], list(continuations[i])
            pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=logits.device) - offset
            if bool(unusable_logits(logits[r, pos]).any()):
                values.append((math.nan, len(cont)))  # non-finite: no NLL (mwork.numerics)
                continue
            logp = logits[r, pos].double().log_softmax(-1)
            target = torch.tensor(cont, device=logits.device)
            values.append((float(-logp.gather(-1, target[:, None]).sum()), len(cont)))
        return values

    scored = map_batches(len(todo), lambda j: -(len(contexts[todo[j]]) + len(continuations[todo[j]])), batch_size,
                         run, desc="scoring generations", progress=progress)
    out: list[tuple[float, int]] = [(0.0, 0)] * len(continuations)
    for j, i in enumerate(todo):
        out[i] = scored[j]
    return out
