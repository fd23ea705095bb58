"""Turn a task into ``evaluate(lang) -> {"score", "n", "metric", "higher_is_better"}``.

The deactivation runner calls the evaluator inside ``mwork.deactivate`` contexts; data are
loaded once, up front, so every cell sees exactly the same examples.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from mwork.tasks.perplexity import perplexity

Evaluate = Callable[[str], dict[str, Any]]


def perplexity_evaluator(model: torch.nn.Module, tokenizer: Any, texts: dict[str, Sequence[str]],
                         batch_size: int = 8, max_length: int = 256) -> Evaluate:
    def evaluate(lang: str) -> dict[str, Any]:
        res = perplexity(model, tokenizer, list(texts[lang]), batch_size=batch_size, max_length=max_length,
                         progress=False)
        return {"score": res["ppl"], "n": res["tokens"], "metric": "perplexity", "higher_is_better": False}
    return evaluate


def task_evaluator(model: torch.nn.Module, tokenizer: Any, task_name: str, langs: Sequence[str],
                   source: str | None = None, limit: int | None = None, **eval_kwargs: Any) -> Evaluate:
    from mwork.tasks.registry import get_task

    task = get_task(task_name)
    examples = {lang: task.load(lang, source, limit=limit) for lang in langs}

    def evaluate(lang: str) -> dict[str, Any]:
        res = task.evaluate(model, tokenizer, examples[lang], lang, **eval_kwargs)
        return {"score": res["score"], "n": res["n"], "metric": res["metric"],
                "higher_is_better": res["higher_is_better"]}
    return evaluate
