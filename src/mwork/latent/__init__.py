"""Latent language measured as Wendler et al. (2024) do: word tasks (translation, repetition,
cloze) whose answer's English and target-language versions start with different tokens, and per
lens layer P(target word) against P(English word), under the logit, tuned and patchscope lenses
(:mod:`mwork.lens.lenses`). :func:`run_latent` is ``mwork latent``."""

from mwork.latent.config import LatentConfig
from mwork.latent.pipeline import LatentRun, run_latent
from mwork.latent.tasks import TASKS, WordPrompt, build_prompts, distinct_starts, token_bytes
from mwork.latent.words import WordList, builtin_words, load_words, read_words

__all__ = ["LatentConfig", "LatentRun", "run_latent", "TASKS", "WordPrompt", "build_prompts", "distinct_starts",
           "token_bytes", "WordList", "builtin_words", "load_words", "read_words"]
