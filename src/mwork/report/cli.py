"""``mwork report DIR``: render a results folder into one self-contained HTML page."""

from __future__ import annotations

import argparse

from mwork.report.page import render_report


def _run(args: argparse.Namespace) -> int:
    path = render_report(args.dir, out=args.out, title=args.title)
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render a results folder (lens, stats, experiment, enhance, ...) into one "
                       "self-contained research page, index.html")
    p.add_argument("dir", help="results folder written by mwork commands")
    p.add_argument("--out", help="HTML file to write (a .html name), or a folder for FOLDER/index.html "
                   "(default: DIR/index.html)")
    p.add_argument("--title", help="page title")
    p.set_defaults(func=_run, output_kinds={"out": None})  # a .html file or a folder: checked by render_report
