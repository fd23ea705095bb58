"""One shape for a job: ``Config(...).run(model=None, tokenizer=None) -> Result``, then
``result.write(out)``.

A job's config is a frozen, keyword-only dataclass built from shared option groups
(:class:`ModelOptions`: which model and how to load it; :class:`CorpusOptions`: which texts per
language and how many tokens of them; :class:`RunOptions`: progress) and its own fields, each an
``mwork.config.option``: the Python arguments, the CLI options (help written once), the
fingerprint and the recorded metadata at once. :class:`Job` gives ``run``: the inputs are checked
first (``check``), the model is loaded once when none is given, then ``compute`` does the work
and returns a result whose ``write(out)`` writes its files. :func:`add_job_command` makes the
command of a job from its config alone, so the CLI adds nothing the API cannot do::

    result = VectorsConfig(corpus=("en=builtin:en", "fr=builtin:fr")).run()
    result.write("out/vectors")
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

from mwork.config import add_arguments, from_args, option
from mwork.models.loading import DEFAULT_MODEL, load_model
from mwork.texts import parse_corpus_specs, read_corpora


class Result(Protocol):
    """What a job returns: its numbers in memory and ``write(out)`` for its files."""

    def write(self, out: str | Path) -> dict[str, Path]: ...


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """Which model a job runs on, and how it is loaded (when ``run`` is given none)."""

    model: str = option(DEFAULT_MODEL, "built-in alias, local folder or hub id")
    dtype: str | None = option(None, "float32 (default), bfloat16, float16, float64")
    device: str | None = option(None, "cpu, cuda, ... (default: cuda when available)", record=False)

    def load(self) -> tuple[Any, Any]:
        return load_model(self.model, dtype=self.dtype, device=self.device)


@dataclass(frozen=True, kw_only=True)
class CorpusOptions:
    """Texts per language (``LANG=SPEC``: a file, ``FILE[A:B]``, ``xquad:LANG[A:B]``,
    ``builtin:LANG``, ``hf:DATASET``), at most ``max_docs`` of each, ``max_length`` tokens per
    window, ``batch_size`` windows per forward pass."""

    corpus: tuple[str, ...] = option((), "LANG=SPEC: one language's texts (give it once per language)",
                                     repeat=True, metavar="LANG=SPEC")
    max_docs: int | None = option(None, "the first N documents of each corpus")
    max_length: int = option(512, "tokens per window")
    batch_size: int = option(8, "windows per forward pass")

    def check_corpus(self, min_languages: int = 1) -> dict[str, str]:
        """The corpora by language, checked (names, count) before any model is loaded."""
        specs = parse_corpus_specs(self.corpus, "--corpus")
        if len(specs) < min_languages:
            raise ValueError(f"give at least {min_languages} languages with --corpus LANG=SPEC, got {len(specs)}")
        for name in ("max_length", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_docs is not None and self.max_docs < 1:
            raise ValueError(f"max_docs must be at least 1, got {self.max_docs}")
        return specs

    def read_corpus(self) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
        """Every language's documents and what they are (spec, count, sha256)."""
        return read_corpora(self.check_corpus(), max_docs=self.max_docs)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How a job runs, not what it computes (never part of a fingerprint)."""

    progress: bool = option(True, "show progress bars", record=False)


class Job:
    """The ``run`` of a job config (mix it into a config dataclass with :class:`ModelOptions`)."""

    #: the command's name and one-line help, for :func:`add_job_command`
    command: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def check(self) -> None:
        """Check every input a user gives before anything long starts (default: nothing)."""

    def compute(self, model: Any, tokenizer: Any) -> Result:
        raise NotImplementedError

    def run(self, model: Any = None, tokenizer: Any = None) -> Result:
        """Check the inputs, load the model once when none is given, compute the result."""
        self.check()
        if model is None:
            model, tokenizer = self.load()  # type: ignore[attr-defined]
        elif tokenizer is None:
            raise ValueError("give the tokenizer with the model (or neither, to load the config's model)")
        return self.compute(model, tokenizer)


def add_job_command(sub: argparse._SubParsersAction, config: type, *, description: str = "",
                    report: Callable[[Any, dict[str, Path]], None] | None = None) -> argparse.ArgumentParser:
    """The command of a job: its options from ``config``'s fields and ``--out``; it runs
    ``config(...).run().write(out)`` and prints the files (``report`` may print more first)."""
    p = sub.add_parser(config.command, help=config.summary, description=description or config.summary)
    add_arguments(p, config)
    p.add_argument("--out", required=True, help="output folder")

    def main(args: argparse.Namespace) -> int:
        from mwork.files import make_folder

        job = from_args(config, args)
        job.check()
        make_folder(args.out)  # a bad output folder is refused before the work, not after it
        result = job.run()
        files = result.write(args.out)
        if report is not None:
            report(result, files)
        print("wrote " + ", ".join(str(f) for f in files.values()))
        return 0

    p.set_defaults(func=main)
    return p
