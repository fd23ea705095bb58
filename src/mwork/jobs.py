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
import contextlib
import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, ContextManager, Mapping, Protocol

from mwork.config import add_arguments, from_args, option
from mwork.models.loading import DEFAULT_MODEL, DEVICE_MAP_HELP, load_model, parse_device_map
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
    device_map: str | None = option(None, DEVICE_MAP_HELP, record=False)

    def check_model_options(self) -> None:
        """The loading options' rules, before anything is loaded."""
        if self.device is not None and self.device_map is not None:
            raise ValueError("give --device or --device-map, not both")
        parse_device_map(self.device_map)

    def load(self) -> tuple[Any, Any]:
        self.check_model_options()
        return load_model(self.model, dtype=self.dtype, device=self.device,
                          device_map=parse_device_map(self.device_map))


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

    progress: bool = option(True, "show progress bars", record=False, off_flags=("--quiet",))


@dataclass(frozen=True, kw_only=True)
class OutputOptions:
    """The output folder of a job that writes as it goes (finished cells, checkpoints), so that a
    rerun of the same command resumes; its result's ``write()`` defaults to this folder."""

    out: str = option(help="output folder", required=True, metavar="DIR", record=False)


@dataclass
class WrittenResult:
    """The result of a job whose files are written while it runs (into ``folder``): its numbers
    (``data``) and its files; ``write(out)`` copies them to another folder (or says where they
    are, for the same folder)."""

    folder: Path
    files: dict[str, Path]
    data: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, out: str | Path | None = None) -> dict[str, Path]:
        target = Path(out) if out is not None else self.folder
        if target.resolve() == Path(self.folder).resolve():
            return dict(self.files)
        from mwork.files import make_folder

        make_folder(target)
        copied = {}
        for name, path in self.files.items():
            path = Path(path)
            rel = path.relative_to(self.folder) if path.is_relative_to(self.folder) else Path(path.name)
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
            copied[name] = dest
        return copied


class Job:
    """The ``run`` of a job config (mix it into a config dataclass with :class:`ModelOptions`)."""

    #: the command's name and one-line help, for :func:`add_job_command`
    command: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def check(self) -> None:
        """Check every input a user gives before anything long starts (default: the model
        options' rules)."""
        if isinstance(self, ModelOptions):
            self.check_model_options()

    def context(self) -> ContextManager[Any]:
        """What the command runs inside (e.g. ``mwork.distributed.group()``; default: nothing)."""
        return contextlib.nullcontext()

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
                    report: Callable[[Any, dict[str, Path]], int | None] | None = None,
                    output_kind: str | None = "folder", **parser_options: Any) -> argparse.ArgumentParser:
    """The command of a job: its options from ``config``'s fields (and ``--out`` when the config
    has no ``out`` field); it runs ``config(...).run().write(out)`` and prints the files, or lets
    ``report(result, files)`` print what it wants (its return value, when not None, is the exit
    status). ``output_kind``: what ``--out`` names (``folder``, ``file``; None: the job checks it)."""
    p = sub.add_parser(config.command, help=config.summary, description=description or config.summary,
                       **parser_options)
    add_arguments(p, config)
    has_out = "out" in {f.name for f in dataclasses.fields(config)}
    if not has_out:
        add_arguments(p, OutputOptions)  # --out DIR: where result.write() puts the files

    def main(args: argparse.Namespace) -> int:
        from mwork import distributed

        job = from_args(config, args)
        job.check()  # bad input is refused before the model loads
        out = job.out if has_out else from_args(OutputOptions, args).out
        with job.context():
            result = job.run()
            files = result.write(out) if distributed.rank() == 0 else {}
            if distributed.rank() != 0:
                return 0
            status = report(result, files) if report is not None else None
            if report is None and files:
                print(run_files(files))
        return int(status or 0)

    p.set_defaults(func=main, output_kinds={"out": output_kind})
    return p


def run_files(files: Mapping[str, Path]) -> str:
    """The line a command prints after its files."""
    return "wrote " + ", ".join(str(f) for f in files.values())
