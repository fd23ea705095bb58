"""Tasks by name: ``get_task("mgsm").load("zh", source)`` then ``.evaluate(model, tok, examples, "zh")``.

Every task has the same interface (``mwork.tasks.common.Task``): ``load(lang, source=None,
..., limit=None)``, ``load_shots(lang, source, k)``, ``evaluate(model, tokenizer, examples,
lang, batch_size=..., ...)`` returning a ``TaskResult`` (``task``, ``lang``, ``metric``,
``higher_is_better``, ``score``, ``n``, extras, ``records``; readable by key too), plus
``metric``, ``higher_is_better`` and ``asks`` (what it asks of the model). Benchmark scores
are fractions in [0, 1]; ``ppl`` (perplexity of any texts) is a task too.

mwork's own tasks are the ``Task`` subclasses defined in the modules of :mod:`mwork.tasks` (found
by reading the package's sources, so only the modules that define a task are imported; no list
is kept), registered the first time a task is looked up or registered. A package adds tasks
through the entry point group ``mwork.tasks``: an entry point naming a ``Task`` object or
subclass registers it, one naming a module imports it (it calls ``register_task`` itself). A
name is registered once: another task under a taken name is refused unless ``replace=True``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Any

from mwork.registry import Registry, UnknownName
from mwork.tasks.common import Task
from mwork.tasks.results import TaskResult

ENTRY_POINT_GROUP = "mwork.tasks"
BUILT_IN_PACKAGE = "mwork.tasks"


def _defines_a_task(source: str) -> bool:
    """Whether a module's source defines a class with ``Task`` among its bases."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and any(getattr(b, "id", getattr(b, "attr", None)) == "Task"
                                                  for b in node.bases):
            return True
    return False


def register_tasks_of(module: ModuleType) -> list[str]:
    """Register an instance of every concrete ``Task`` subclass defined in ``module``; their names."""
    names = []
    for obj in list(vars(module).values()):
        if (isinstance(obj, type) and issubclass(obj, Task) and obj.__module__ == module.__name__
                and not inspect.isabstract(obj)):
            task = obj()
            register_task(task)
            names.append(task.name)
    return names


def _built_in_tasks() -> None:
    """mwork's own tasks: those defined in the modules of ``mwork.tasks`` (module docstring)."""
    package = importlib.import_module(BUILT_IN_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        name = f"{BUILT_IN_PACKAGE}.{info.name}"
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        source = loader.get_source(name) if loader is not None and hasattr(loader, "get_source") else None
        if source and _defines_a_task(source):
            register_tasks_of(importlib.import_module(name))


def _register_plugin(obj: Any) -> None:
    """An entry point's object: a Task (or a Task subclass, instantiated) is registered under its
    name (refused if taken); a module registered its tasks when it was imported."""
    if isinstance(obj, type) and issubclass(obj, Task):
        obj = obj()
    if isinstance(obj, Task):
        register_task(obj)
    elif not isinstance(obj, ModuleType):
        raise TypeError(f"a {ENTRY_POINT_GROUP} entry point names a Task, a Task subclass or a module, got "
                        f"{type(obj).__name__}")


TASKS: Registry[Task] = Registry("task", ENTRY_POINT_GROUP, on_entry_point=_register_plugin, builtins=_built_in_tasks)
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
    """Add a task (an object with the ``Task`` interface) under ``task.name``; a task under a
    taken name (mwork's own included) is refused unless ``replace=True``."""
    if not isinstance(task, Task):
        raise TypeError(f"register_task needs a mwork.tasks.common.Task, got {type(task).__name__}")
    TASKS.register(task.name, task, replace=replace)


def evaluate_task(name: str, model: Any, tokenizer: Any, lang: str, source: str | Path | None = None, *,
                  limit: int | None = None, load_kwargs: dict[str, Any] | None = None,
                  **evaluate_kwargs: Any) -> TaskResult:
    """Load and evaluate in one call: ``evaluate_task("xquad", model, tok, "zh", "data/", limit=40)`` (a folder,
    a file, ``"hub"``, or None: ``$MWORK_DATA`` else the hub)."""
    task = get_task(name)
    examples = task.load(lang, source, limit=limit, **(load_kwargs or {}))
    return task.evaluate(model, tokenizer, examples, lang, **evaluate_kwargs)
