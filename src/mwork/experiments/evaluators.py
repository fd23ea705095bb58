"""Evaluators (a task with its loaded examples) now live in the task runtime,
``mwork.tasks.runtime``; these names stay importable from here."""

from mwork.tasks.runtime import Evaluator, perplexity_evaluator, task_evaluator

__all__ = ["Evaluator", "perplexity_evaluator", "task_evaluator"]
