"""``mwork report DIR``: render a results folder into one self-contained HTML page."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mwork.config import add_arguments, from_args, option
from mwork.report.page import render_report


@dataclass(frozen=True, kw_only=True)
class ReportOptions:
    """The options of ``mwork report``: ``render_report(dir, out=out, title=title)``."""

    dir: str = option(help="results folder written by mwork commands", positional=True)
    out: str | None = option(None, "HTML file to write (a .html name), or a folder for FOLDER/index.html "
                             "(default: DIR/index.html)")
    title: str | None = option(None, "page title")


def _run(args: argparse.Namespace) -> int:
    options = from_args(ReportOptions, args)
    path = render_report(options.dir, out=options.out, title=options.title)
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render a results folder (lens, stats, experiment, enhance, ...) into one "
                       "self-contained research page, index.html")
    add_arguments(p, ReportOptions)
    p.set_defaults(func=_run, output_kinds={"out": None})  # a .html file or a folder: checked by render_report
