"""The ``mwork`` command: a thin layer over the public API.

Each subcommand lives next to the code it drives, in a module with a
``register(subparsers)`` function that adds its parser and sets ``func``; list the module in
``COMMAND_MODULES`` to expose it. The CLI adds nothing the Python API cannot do.
"""

from __future__ import annotations

import argparse
import importlib
import sys

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
    "mwork.tasks.cli_eval",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mwork",
        description="How large language models handle languages other than English: layer-wise "
        "decoding, language-specific neurons (PLND), deactivation and enhancement.",
    )
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
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ImportError) as err:
        # bad input: one clear line that says what to change, no traceback
        print(f"mwork {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
