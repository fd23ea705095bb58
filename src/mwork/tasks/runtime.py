"""The task runtime: the one place where tasks meet the model.

A task says *what* it asks of the model, as a query object, and how it scores the answers;
this module does the rest, the same way for every task:

* :class:`Generate` -- greedy continuations of prompts (MGSM, XQuAD, XLSum);
* :class:`Loglikelihood` -- log p(continuation | context) of (context, continuation) pairs (X-CSQA);
* :class:`Rolling` -- rolling log-likelihood of whole texts in windows (perplexity).

Batching and the distributed split (:func:`map_batches`): the items are sorted by a length
key (stable, so the order is deterministic), cut into batches of ``batch_size``, and under
torchrun batch ``j`` runs on rank ``j % world_size``; every rank gets every item's result in
the original order (``distributed.gather_in_order``), so a data-parallel run returns the
single process's numbers bit for bit. Collation (:func:`right_padded`, :func:`padding_side`)
is here too: right padding with a mask for log-likelihood, the tokenizer's left padding for
generation, the packed policy of ``mwork.hooks`` for perplexity windows.

:class:`Evaluator` is a task together with its loaded examples: ``evaluator(lang)`` scores
the model under whatever hooks are active (the deactivation grid calls it inside
``mwork.deactivate``), and ``evaluator.inputs_digest(lang)`` fingerprints what it evaluates.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from mwork import distributed
from mwork.config import digest
from mwork.hooks import packed_ids

if TYPE_CHECKING:
    from mwork.tasks.common import Example, Task
    from mwork.tasks.results import TaskResult

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


# ---- running a query and a task ---------------------------------------------------------------


def answer(model: Any, tokenizer: Any, query: Query, *, batch_size: int = 8, progress: bool = True,
           desc: str | None = None) -> Any:
    """The model's answers to ``query`` (see each query type for their form)."""
    if isinstance(query, Generate):
        from mwork.tasks.generation import generate

        return generate(model, tokenizer, query.prompts, max_new_tokens=query.max_new_tokens, stop=query.stop,
                        batch_size=batch_size, progress=progress, desc=desc or "generating")
    if isinstance(query, Loglikelihood):
        from mwork.tasks.generation import loglikelihood

        return loglikelihood(model, tokenizer, query.pairs, batch_size=batch_size, progress=progress,
                             desc=desc or "scoring")
    if isinstance(query, Rolling):
        from mwork.tasks.perplexity import perplexity

        return perplexity(model, tokenizer, query.texts, batch_size=batch_size, max_length=query.max_length,
                          stride=query.stride, per_text=True, progress=progress)
    raise TypeError(f"not a task query: {type(query).__name__} (use Generate, Loglikelihood or Rolling)")


def run_task(task: "Task", model: Any, tokenizer: Any, examples: Sequence["Example"], lang: str, *,
             batch_size: int = 8, progress: bool = True, **options: Any) -> "TaskResult":
    """Evaluate ``task`` on ``examples``: its query (``task.ask``, with ``options``), the model's
    answers, its scoring (``task.score_answers``); the query's ``info`` is recorded in the result."""
    from mwork.tasks.common import check_examples

    check_examples(task.name, examples)
    query = task.ask(tokenizer, examples, lang, **options)
    if query.kind != task.asks:
        raise TypeError(f"task {task.name!r} declares it asks {task.asks!r} but built a {query.kind!r} query")
    answers = answer(model, tokenizer, query, batch_size=batch_size, progress=progress, desc=f"{task.name} {lang}")
    return task.score_answers(examples, query, answers, lang).with_extra(**query.info)


@dataclass(frozen=True, eq=False)
class Evaluator:
    """A task and its loaded examples: ``evaluator(lang)`` scores the model on ``lang``'s examples
    (``options`` go to ``task.evaluate``: ``batch_size``, ``max_length``, ``max_new_tokens`` ...).

    Examples are loaded once, up front, so every call sees exactly the same ones."""

    model: Any
    tokenizer: Any
    task: "Task"
    examples: Mapping[str, Sequence["Example"]]
    options: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = True

    def __call__(self, lang: str) -> "TaskResult":
        if lang not in self.examples:
            raise ValueError(f"no {self.task.name} examples loaded for {lang!r}; loaded: {', '.join(self.examples)}")
        return self.task.evaluate(self.model, self.tokenizer, self.examples[lang], lang, progress=self.progress,
                                  **self.options)

    def inputs_digest(self, lang: str) -> str:
        """sha256 of what ``self(lang)`` computes from besides the model: the task, its options
        and the content of the examples (``task.examples_digest``)."""
        return digest({"task": self.task.name, "options": dict(self.options),
                       "examples": self.task.examples_digest(self.examples[lang])})


def task_evaluator(model: Any, tokenizer: Any, task_name: str, langs: Sequence[str], source: Any = None,
                   limit: int | None = None, *, progress: bool = True, **options: Any) -> Evaluator:
    """An :class:`Evaluator` of the registered task ``task_name`` on ``langs`` (loaded from ``source``)."""
    from mwork.tasks.registry import get_task

    task = get_task(task_name)
    return Evaluator(model, tokenizer, task, {lang: task.load(lang, source, limit=limit) for lang in langs},
                     options, progress)


def perplexity_evaluator(model: Any, tokenizer: Any, texts: Mapping[str, Sequence[str]], batch_size: int = 8,
                         max_length: int = 256) -> Evaluator:
    """An :class:`Evaluator` of perplexity (the ``ppl`` task) on each language's ``texts``."""
    from mwork.tasks.ppl import as_examples
    from mwork.tasks.registry import get_task

    return Evaluator(model, tokenizer, get_task("ppl"), {lang: as_examples(t, lang) for lang, t in texts.items()},
                     {"batch_size": batch_size, "max_length": max_length}, progress=False)
