"""The ``mwork`` command: a thin layer over the public API.

Each subcommand lives next to the code it drives, in a module with a
``register(subparsers)`` function that adds its parser and sets ``func``; list the module in
``COMMAND_MODULES`` to expose it. The CLI adds nothing the Python API cannot do.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

from mwork.config import add_arguments, from_args, option
from mwork.files import WRITE_ERRNOS, OutputError, check_output_kind, os_error_message, output_lock
from mwork.neurons.neuronset import other_models_allowed

COMMAND_MODULES: tuple[str, ...] = (
    "mwork.models.cli",
    "mwork.demo_cli",
    "mwork.lens.cli",
    "mwork.lens.train_cli",
    "mwork.latent.cli",
    "mwork.report.cli",
    "mwork.experiments.cli",
    "mwork.tasks.cli_ppl",
    "mwork.neurons.cli",
    "mwork.neurons.bench_cli",
    "mwork.experiments.enhance_cli",
    "mwork.neurons.convert_cli",
    "mwork.experiments.steering.cli",
    "mwork.vectors",
    "mwork.sae.cli",
    "mwork.tasks.cli_eval",
    "mwork.confusion.cli",
)


@dataclass(frozen=True, kw_only=True)
class GlobalOptions:
    """The options of ``mwork`` itself, given before the command."""

    allow_other_model: bool = option(False, "apply NeuronSets to a model other than the one they were made for "
                                     "(same shape: a fine-tune, another name); without it such a mix is refused",
                                     switch=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mwork",
        description="How large language models handle languages other than English: layer-wise "
        "decoding, language-specific neurons (PLND), deactivation and enhancement.",
    )
    add_arguments(parser, GlobalOptions)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


#: two-word commands: ``mwork lens train ...`` is ``mwork lens-train ...``
SUBACTIONS: dict[tuple[str, str], str] = {("lens", "train"): "lens-train"}


def _subactions(argv: list[str]) -> list[str]:
    """``argv`` with a two-word command (:data:`SUBACTIONS`) joined into its one-word name."""
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and tuple(argv[first:first + 2]) in SUBACTIONS:
        return argv[:first] + [SUBACTIONS[tuple(argv[first:first + 2])]] + argv[first + 2:]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_subactions(list(sys.argv[1:] if argv is None else argv)))
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_plain_warnings(args.command))
            if from_args(GlobalOptions, args).allow_other_model:
                stack.enter_context(other_models_allowed())
            for flag, out, kind in _outputs(args):
                if kind is not None:
                    check_output_kind(out, kind, flag)
                stack.enter_context(output_lock(out))
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        # Ctrl-C: what is finished is kept (cells, checkpoints, atomic writes); no traceback, the shell's 130
        print(f"mwork {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ImportError, OutputError) as err:
        # bad input, or an output that cannot be written: one clear line that says what to change, no traceback
        print(f"mwork {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        # a full disk or a permission outside mwork.files' writers: the file and the reason, in one line
        print(f"mwork {args.command}: error: {os_error_message(err)}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _plain_warnings(command: str) -> Iterator[None]:
    """Warnings as one line each, ``mwork COMMAND: warning: ...``, without Python's file and source
    line: they are messages to the user, not to a developer."""
    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        print(f"mwork {command}: warning: {message}", file=sys.stderr if file is None else file)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def _outputs(args: argparse.Namespace) -> list[tuple[str, str, str | None]]:
    """The outputs this command writes (``--out``, ``--out-dir``) as (flag, path, kind): each
    locked for the run, and checked before any work. Both are folders unless the command says
    otherwise with ``set_defaults(output_kinds={"out": "file"})`` (None: a path the command
    checks itself). Under torchrun only rank 0 writes, so only it takes the lock."""
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return []
    kinds = {"out": "folder", "out_dir": "folder", **getattr(args, "output_kinds", {})}
    return [("--" + dest.replace("_", "-"), str(value), kind) for dest, kind in kinds.items()
            if (value := getattr(args, dest, None))]


if __name__ == "__main__":
    sys.exit(main())
