"""Completions of one batch of model inputs, as the paper samples them or greedily.

The paper samples at most 100 new tokens with nucleus sampling, p = 0.75, temperature 0.3
(no top-k). A batch is left-padded (the tokenizer's left padding) and sampled under its own seed,
set inside a forked RNG state: the same batch with the same seed gives the same completions
wherever it runs in a run, so a resumed run equals an uninterrupted one, and the caller's RNG is
left as it was. ``greedy`` takes the most probable token instead. Generation stops at EOS, at
``max_new_tokens`` or, when ``stop`` is given (the base-model format: ``"\\nQ:"``, where the
scorer cuts anyway), once a completion holds it; the completion keeps the stop text as generated.

Whatever hooks are active (``mwork.steer``) act on the ``generate`` call."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import GenerationConfig

from mwork.models.loading import input_device
from mwork.tasks.runtime import padding_side

#: the paper's sampling
TOP_P, TEMPERATURE, MAX_NEW_TOKENS = 0.75, 0.3, 100


@dataclass(frozen=True)
class Sampling:
    """How completions are drawn: the paper's nucleus sampling (``top_p``, ``temperature``) or
    ``greedy``, at most ``max_new_tokens`` new tokens."""

    greedy: bool = False
    top_p: float = TOP_P
    temperature: float = TEMPERATURE
    max_new_tokens: int = MAX_NEW_TOKENS

    def __post_init__(self) -> None:
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be positive, got {self.temperature}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")

    def config(self, pad: int, eos: list[int], stop: Sequence[str]) -> GenerationConfig:
        """The generation config (every sampling setting explicit, so none comes from the model's
        own ``generation_config``)."""
        common: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": 1, "pad_token_id": pad,
                                  "eos_token_id": eos or None, "repetition_penalty": 1.0}
        if stop:
            common["stop_strings"] = list(stop)
        if self.greedy:
            return GenerationConfig(do_sample=False, **common)
        return GenerationConfig(do_sample=True, top_p=self.top_p, temperature=self.temperature, top_k=0, min_p=None,
                                **common)


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The model's end-of-sequence ids (its generation config's, else the tokenizer's)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    return [] if eos is None else ([int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)])


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """The global RNG seeded with ``seed`` inside, restored on exit (CUDA's too on a GPU)."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def generate_batch(model: Any, tokenizer: Any, texts: Sequence[str], sampling: Sampling, *, seed: int,
                   add_special_tokens: bool = True, stop: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One completion per text: ``text`` (decoded without special tokens) and ``ids`` (the new
    tokens up to the first EOS, which is left out, without the padding after a stop)."""
    if not texts:
        return []
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    device = input_device(model)
    with padding_side(tokenizer, "left"):
        enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    extra = {"tokenizer": tokenizer} if stop else {}
    with seeded(seed, device), torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=sampling.config(pad, eos, stop),
                             **extra)
    eos_set = set(eos)
    results = []
    for row in out[:, ids.shape[1]:].tolist():
        kept = []
        for t in row:
            if t in eos_set:
                break
            kept.append(t)
        while kept and kept[-1] == pad:  # a row that stopped early (a stop string) is padded after its end
            kept.pop()
        results.append({"ids": kept, "text": tokenizer.decode(kept, skip_special_tokens=True)})
    return results
