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
from typing import Any, Iterator

from mwork.files import check_output_kind, output_lock
from mwork.neurons.neuronset import other_models_allowed

COMMAND_MODULES: tuple[str, ...] = (
    "mwork.models.cli",
    "mwork.demo_cli",
    "mwork.lens.cli",
    "mwork.report.cli",
    "mwork.experiments.cli",
    "mwork.tasks.cli_ppl",
    "mwork.neurons.cli",
    "mwork.neurons.bench_cli",
    "mwork.experiments.enhance_cli",
    "mwork.neurons.convert_cli",
    "mwork.experiments.steering.cli",
    "mwork.tasks.cli_eval",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mwork",
        description="How large language models handle languages other than English: layer-wise "
        "decoding, language-specific neurons (PLND), deactivation and enhancement.",
    )
    parser.add_argument("--allow-other-model", action="store_true",
                        help="apply NeuronSets to a model other than the one they were made for (same shape: "
                        "a fine-tune, another name); without it such a mix is refused")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_plain_warnings(args.command))
            if args.allow_other_model:
                stack.enter_context(other_models_allowed())
            for flag, out, kind in _outputs(args):
                if kind is not None:
                    check_output_kind(out, kind, flag)
                stack.enter_context(output_lock(out))
            return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ImportError) as err:
        # bad input: one clear line that says what to change, no traceback
        print(f"mwork {args.command}: error: {err}", file=sys.stderr)
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
