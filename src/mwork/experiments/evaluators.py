"""Turn a task into ``evaluate(lang) -> {"score", "n", "metric", "higher_is_better"}``.

The deactivation runner calls the evaluator inside ``mwork.deactivate`` contexts; data are
loaded once, up front, so every cell sees exactly the same examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from mwork.corpora import builtin_corpus
from mwork.tasks.perplexity import load_texts, perplexity, xquad_texts

Evaluate = Callable[[str], dict[str, Any]]


def heldout_texts(lang: str, texts_dir: str | Path | None = None, limit: int | None = None) -> tuple[list[str], str]:
    """Held-out texts of ``lang`` and where they came from: ``<texts_dir>/<lang>.txt`` if
    given, else XQuAD articles 24-47 when a local copy exists, else the built-in corpus's
    held-out paragraphs (never the ones used for detection or training)."""
    if texts_dir is not None:
        path = Path(texts_dir) / f"{lang}.txt"
        if not path.exists():
            raise FileNotFoundError(f"no held-out texts for {lang!r}: expected {path} (one text per line)")
        texts, source = load_texts(path), str(path)
    else:
        try:
            texts, source = xquad_texts(lang, source="local"), "XQuAD articles 24-47 (local)"
        except FileNotFoundError:
            texts, source = builtin_corpus(lang, "heldout"), "dataset-build held-out paragraphs"
    return (texts[:limit] if limit else texts), source


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
