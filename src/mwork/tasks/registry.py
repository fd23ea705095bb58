"""Tasks by name: ``get_task("mgsm").load("zh", source)`` then ``.evaluate(model, tok, examples, "zh")``.

Every task has the same interface (``mwork.tasks.common.Task``): ``load(lang, source=None,
..., limit=None)``, ``load_shots(lang, source, k)``, ``evaluate(model, tokenizer, examples,
lang, batch_size=..., max_new_tokens=..., few_shot=0, shots=None, prompts=None)`` returning
``{"task", "lang", "metric", "higher_is_better", "score", "n", ..., "records"}``, plus
``metric`` and ``higher_is_better``. Scores are fractions in [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mwork.tasks.common import Task
from mwork.tasks.mgsm import MGSM
from mwork.tasks.xcsqa import XCSQA
from mwork.tasks.xlsum import XLSum
from mwork.tasks.xquad import XQuAD

TASKS: dict[str, Task] = {t.name: t for t in (MGSM(), XQuAD(), XCSQA(), XLSum())}
_ALIASES = {"x-csqa": "xcsqa", "xl-sum": "xlsum", "xl_sum": "xlsum", "x_csqa": "xcsqa"}


def list_tasks() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> Task:
    """The task called ``name`` (case-insensitive); a ValueError lists the known tasks."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
    return TASKS[key]


def register_task(task: Task, replace: bool = False) -> None:
    """Add a task (an object with the ``Task`` interface) under ``task.name``."""
    if task.name in TASKS and not replace:
        raise ValueError(f"a task named {task.name!r} is already registered (pass replace=True)")
    TASKS[task.name] = task


def evaluate_task(name: str, model: Any, tokenizer: Any, lang: str, source: str | Path | None = None, *,
                  limit: int | None = None, load_kwargs: dict[str, Any] | None = None, **evaluate_kwargs: Any) -> dict[str, Any]:
    """Load and evaluate in one call: ``evaluate_task("xquad", model, tok, "zh", "../shared/data", limit=40)``."""
    task = get_task(name)
    examples = task.load(lang, source, limit=limit, **(load_kwargs or {}))
    return task.evaluate(model, tokenizer, examples, lang, **evaluate_kwargs)
