"""Tasks by name: ``get_task("mgsm").load("zh", source)`` then ``.evaluate(model, tok, examples, "zh")``.

Every task has the same interface (``mwork.tasks.common.Task``): ``load(lang, source=None,
..., limit=None)``, ``load_shots(lang, source, k)``, ``evaluate(model, tokenizer, examples,
lang, batch_size=..., ...)`` returning a ``TaskResult`` (``task``, ``lang``, ``metric``,
``higher_is_better``, ``score``, ``n``, extras, ``records``; readable by key too), plus
``metric``, ``higher_is_better`` and ``asks`` (what it asks of the model). Benchmark scores
are fractions in [0, 1]; ``ppl`` (perplexity of any texts) is a task too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mwork.registry import Registry, UnknownName
from mwork.tasks.common import Task
from mwork.tasks.mgsm import MGSM
from mwork.tasks.ppl import Perplexity
from mwork.tasks.results import TaskResult
from mwork.tasks.xcsqa import XCSQA
from mwork.tasks.xlsum import XLSum
from mwork.tasks.xquad import XQuAD

TASKS: Registry[Task] = Registry("task")
"""Task objects by name (lower case); ``get_task`` also takes the aliases."""
_ALIASES = {"x-csqa": "xcsqa", "xl-sum": "xlsum", "xl_sum": "xlsum", "x_csqa": "xcsqa", "perplexity": "ppl"}


def list_tasks(benchmarks_only: bool = True) -> list[str]:
    """The registered benchmarks (tasks with a data set of their own); with
    ``benchmarks_only=False`` also the tasks on any texts (``ppl``)."""
    return sorted(name for name, task in TASKS.items() if task.benchmark or not benchmarks_only)


def get_task(name: str) -> Task:
    """The task called ``name`` (case-insensitive); a ValueError lists the known tasks."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:  # the list splits benchmarks from the tasks on any texts
        others = [n for n in list_tasks(benchmarks_only=False) if n not in list_tasks()]
        on_texts = f", and {', '.join(others)} (on any texts)" if others else ""
        raise UnknownName(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}{on_texts}")
    return TASKS.get(key)


def register_task(task: Task, replace: bool = False) -> None:
    """Add a task (an object with the ``Task`` interface) under ``task.name``."""
    if not isinstance(task, Task):
        raise TypeError(f"register_task needs a mwork.tasks.common.Task, got {type(task).__name__}")
    TASKS.register(task.name, task, replace=replace)


for _task in (MGSM(), XQuAD(), XCSQA(), XLSum(), Perplexity()):
    register_task(_task)


def evaluate_task(name: str, model: Any, tokenizer: Any, lang: str, source: str | Path | None = None, *,
                  limit: int | None = None, load_kwargs: dict[str, Any] | None = None,
                  **evaluate_kwargs: Any) -> TaskResult:
    """Load and evaluate in one call: ``evaluate_task("xquad", model, tok, "zh", "data/", limit=40)`` (a folder,
    a file, ``"hub"``, or None: ``$MWORK_DATA`` else the hub)."""
    task = get_task(name)
    examples = task.load(lang, source, limit=limit, **(load_kwargs or {}))
    return task.evaluate(model, tokenizer, examples, lang, **evaluate_kwargs)
