"""What a task asks of the model (:class:`Generate`, :class:`Loglikelihood`, :class:`Rolling`),
and the batching, distributed split and collation every client of the model shares
(:func:`map_batches`, :func:`right_padded`, :func:`padding_side`): the bottom of the task
runtime (:mod:`mwork.tasks.runtime`, which re-exports these names), so that the modules that
compute answers (:mod:`mwork.tasks.generation`, :mod:`mwork.tasks.perplexity`) and the tasks
import it without importing the runtime, and the runtime imports them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from mwork import distributed
from mwork.hooks import packed_ids

GENERATE, LOGLIKELIHOOD, ROLLING = "generate", "loglikelihood", "rolling"


# ---- what a task asks of the model -------------------------------------------------------------


@dataclass(frozen=True)
class Generate:
    """Greedy continuations of ``prompts``, each ending at EOS, a stop string or ``max_new_tokens``.
    Answers: one string per prompt (``generation.cut_at_stop`` applied)."""

    kind: ClassVar[str] = GENERATE
    prompts: Sequence[str]
    max_new_tokens: int
    stop: Sequence[str] = ()
    info: Mapping[str, Any] = field(default_factory=dict)  # recorded with the result


@dataclass(frozen=True)
class Loglikelihood:
    """log p(continuation | context) for each ``(context, continuation)`` pair. Answers: one
    ``(sum of log-probabilities in nats, continuation tokens)`` per pair."""

    kind: ClassVar[str] = LOGLIKELIHOOD
    pairs: Sequence[tuple[str, str]]
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rolling:
    """Rolling log-likelihood of whole ``texts`` in windows of ``max_length`` tokens (the rules of
    ``mwork.tasks.perplexity``). Answer: the ``perplexity`` dict, with ``per_text``."""

    kind: ClassVar[str] = ROLLING
    texts: Sequence[str]
    max_length: int = 512
    stride: int | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


Query = Generate | Loglikelihood | Rolling


# ---- batching, the distributed split, collation -----------------------------------------------


def map_batches(n: int, sort_key: Callable[[int], Any], batch_size: int, run_batch: Callable[[list[int]], Sequence[Any]],
                *, desc: str, progress: bool = True) -> list[Any]:
    """``run_batch(rows)`` over batches of item indices, one value per item, back in item order.

    Items are sorted by ``sort_key`` (stable) and cut into consecutive batches of ``batch_size``;
    under torchrun each rank runs batches ``rank, rank + N, ...`` and the values are gathered,
    so every rank returns exactly what one process computes."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(n), key=sort_key)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    mine: dict[int, Any] = {}
    for j in tqdm(distributed.shard(len(batches)), desc=desc, unit="batch",
                  disable=not progress or distributed.rank() != 0):
        rows = batches[j]
        values = run_batch(rows)
        if len(values) != len(rows):
            raise RuntimeError(f"{desc}: a batch of {len(rows)} items gave {len(values)} values")
        mine.update(zip(rows, values))
    return distributed.gather_in_order(n, mine)


def right_padded(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as right-padded ``(input_ids, attention_mask)``: real tokens keep their positions."""
    ids = packed_ids(sequences, pad_id)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(sequences):
        mask[r, :len(s)] = 1
    return ids, mask


@contextmanager
def padding_side(tokenizer: Any, side: str) -> Iterator[None]:
    """The tokenizer pads on ``side`` inside (generation pads left); restored on exit."""
    saved = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = saved
