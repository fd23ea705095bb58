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

Where the parts live (all importable from here): the query types, batching and collation in
:mod:`mwork.tasks.queries` (below the modules that compute answers), :func:`answer` and
:func:`run_task` in :mod:`mwork.tasks.common` (``Task.evaluate`` calls them); the evaluators here,
above the task registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from mwork.config import digest
from mwork.tasks.common import answer, run_task  # noqa: F401  (here too: the runtime's names)
from mwork.tasks.queries import (  # noqa: F401  (here too: the runtime's names)
    GENERATE, LOGLIKELIHOOD, ROLLING, Generate, Loglikelihood, Query, Rolling, map_batches, padding_side, right_padded)

if TYPE_CHECKING:
    from mwork.tasks.common import Example, Task
    from mwork.tasks.results import TaskResult


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
