"""Language confusion: does a model answer in the language it was asked for? The Language
Confusion Benchmark: its scorer (``mwork.confusion.lcb``, ``mwork confusion score``), its files
(``tables``, ``data``), its prompts (``prompts``), generation with levers against confusion
(``generate``, ``levers``, ``results``; the job is ``mwork.confusion.run.ConfusionRunConfig``,
``mwork confusion run``) and the benchmark as lm-eval tasks (``lm_eval_tasks``, ``mwork confusion
tasks``). See docs/confusion.md."""

from mwork.confusion.lcb import (LcbConfig, LcbResult, Scorer, read_completions, score_completions, score_file,
                                 write_result)

__all__ = ["LcbConfig", "LcbResult", "Scorer", "read_completions", "score_completions", "score_file", "write_result"]
