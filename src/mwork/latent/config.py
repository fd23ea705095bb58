"""``LatentConfig``: the settings of ``mwork latent`` (:func:`mwork.latent.pipeline.run_latent`)."""

from __future__ import annotations

from dataclasses import dataclass

from mwork.config import option
from mwork.latent.tasks import TASKS
from mwork.lens.lenses import IDENTITY_PROMPT, LENSES

DEFAULT_TARGETS: tuple[str, ...] = ("zh", "de", "fr", "ru", "ja")


def _names(value, flag: str) -> tuple[str, ...]:
    from mwork.files import parse_names

    return parse_names(value, flag=flag)


def _choices(value, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip())
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ValueError(f"{what} must be a comma-separated choice of {', '.join(allowed)}; got {value!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"{what} names one twice: {value!r}")
    return items


def _paths(value) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip())


@dataclass(frozen=True)
class LatentConfig:
    """Word tasks x target languages x lenses: P(target word) against P(English word) per layer."""

    tasks: tuple[str, ...] = option(("translation",), f"comma-separated tasks: {', '.join(TASKS)}", flag="--task",
                                    parse=lambda v: _choices(v, TASKS, "--task"))
    source: str = option("fr", "input language of the translation task (repetition and cloze use the target)")
    targets: tuple[str, ...] = option(DEFAULT_TARGETS, "comma-separated target languages (not en)",
                                      parse=lambda v: _names(v, "--targets"))
    lenses: tuple[str, ...] = option(("logit",), f"comma-separated lenses: {', '.join(LENSES)}", flag="--lens",
                                     parse=lambda v: _choices(v, LENSES, "--lens"))
    tuned_lens: str | None = option(None, "folder of a tuned lens written by `mwork lens train` (for --lens tuned)",
                                    metavar="DIR")
    limit: int | None = option(None, "at most this many items per task and language pair (default: all that survive)")
    shots: int = option(4, "few-shot examples per prompt (cloze: at most 2, its sentences are few)")
    words: tuple[str, ...] = option((), "your own word lists or cloze files (TSV, see docs/latent.md), "
                                    "comma-separated, merged into the built-in ones", parse=_paths, metavar="TSV")
    patchscope_prompt: str = option(IDENTITY_PROMPT, "the patchscope's identity prompt; the last '?' is the patched "
                                    "position")
    batch_size: int = option(16, "prompts per forward pass")
    seed: int = option(0, "seed of the few-shot example choice")
    progress: bool = option(True, "show progress", cli=False, record=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", _choices(self.tasks, TASKS, "tasks"))
        object.__setattr__(self, "lenses", _choices(self.lenses, LENSES, "lenses"))
        object.__setattr__(self, "targets", _names(self.targets, "--targets"))
        object.__setattr__(self, "source", _names(self.source, "--source")[0])
        object.__setattr__(self, "words", _paths(self.words))
        if "en" in self.targets:
            raise ValueError("--targets must not include en: the measure compares each target word with English")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"--targets names a language twice: {','.join(self.targets)}")
        if "tuned" in self.lenses and not self.tuned_lens:
            raise ValueError("--lens tuned needs --tuned-lens DIR (write one with `mwork lens train`)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.shots < 0:
            raise ValueError(f"shots must be >= 0, got {self.shots}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
