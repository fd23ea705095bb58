"""``mwork experiment deactivation``: the paper's deactivation grid for one model and task.

A thin shim over ``mwork.experiments.deactivation.run_deactivation``; the options are the
fields of ``DeactivationConfig``."""

from __future__ import annotations

import argparse

from mwork import distributed
from mwork.config import add_arguments, from_args
from mwork.experiments.deactivation import DeactivationConfig, run_deactivation


def _run(args: argparse.Namespace) -> int:
    """Under torchrun the ranks share the grid's cells (identical results); rank 0 prints."""
    with distributed.group():
        config = from_args(DeactivationConfig, args)
        result = run_deactivation(config)
        if distributed.rank() != 0:
            return 0 if result else 1
        table = config.out.rstrip("/") + "/table.md"
        print(table)
        print(open(table, encoding="utf-8").read())
        return 0 if result else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="run a paper experiment (deactivation grid)")
    exp = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    d = exp.add_parser("deactivation", help="switch off language-specific vs random neurons by layer region",
                       description="Rows: layer regions x {language-specific, random}; columns Eng, n-Eng, ΔEng, "
                       "Δn-Eng, Δ = ΔEng - Δn-Eng. Writes table.csv, table.md, headline.csv, results.json, "
                       "deactivation.png; finished cells are kept in cells.jsonl and not recomputed unless "
                       "the model, the sets or the texts changed.")
    add_arguments(d, DeactivationConfig)
    d.set_defaults(func=_run)
