"""Language confusion: does a model answer in the language it was asked for? The Language Confusion
Benchmark's scorer (``mwork.confusion.lcb``) and ``mwork confusion score``."""

from mwork.confusion.lcb import (LcbConfig, LcbResult, Scorer, read_completions, score_completions, score_file,
                                 write_result)

__all__ = ["LcbConfig", "LcbResult", "Scorer", "read_completions", "score_completions", "score_file", "write_result"]
