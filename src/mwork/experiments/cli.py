"""``mwork experiment deactivation``: the paper's deactivation grid for one model and task;
``mwork experiment methods``: detection methods head to head.

Thin shims over ``mwork.experiments.deactivation.run_deactivation`` and
``mwork.experiments.methods.run_methods``; the options are the fields of ``DeactivationConfig``
and ``MethodsConfig``."""

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
    p = sub.add_parser("experiment", help="run an experiment (the paper's deactivation grid; detection methods head to head)")
    exp = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    d = exp.add_parser("deactivation", help="switch off language-specific vs random neurons by layer region",
                       description="Rows: layer regions x {language-specific, random}; columns Eng, n-Eng, ΔEng, "
                       "Δn-Eng, Δ = ΔEng - Δn-Eng. Writes table.csv, table.md, headline.csv, results.json, "
                       "deactivation.png; finished cells are kept in cells.jsonl and not recomputed unless "
                       "the model, the sets or the texts changed.")
    add_arguments(d, DeactivationConfig)
    d.set_defaults(func=_run)
    _register_methods(exp)


def _run_methods(args: argparse.Namespace) -> int:
    from mwork.experiments.methods import MethodsConfig, run_methods

    config = from_args(MethodsConfig, args, corpus=tuple(args.corpus or ()), heldout=tuple(args.heldout or ()))
    run_methods(config, progress=not args.quiet)
    report = config.out.rstrip("/") + "/report.md"
    print(report)
    print(open(report, encoding="utf-8").read())
    return 0


def _register_methods(exp: argparse._SubParsersAction) -> None:
    from mwork.experiments.methods import MethodsConfig

    m = exp.add_parser("methods", help="detection methods head to head (PLND, LAPE, activation AP) at equal set sizes",
                       description="For every method, size and language: held-out perplexity of every language with "
                       "that language's set zeroed or mean-patched, against random sets of the same count per layer "
                       "and kind; the stability of the sets over two halves of the corpora; the agreement between "
                       "methods; the cost against a forward pass. Writes selectivity.csv, summary.csv, matrix.csv, "
                       "stability.csv, agreement.csv, cost.csv, report.md, results.json and plots; finished cells and "
                       "scores are kept and reused.")
    m.add_argument("--corpus", action="append", required=True, metavar="LANG=SPEC",
                   help="detection texts of one language (repeat: one per language); SPEC: a file, FILE[A:B], "
                   "xquad:LANG[A:B] (default articles 0:24) ...")
    m.add_argument("--heldout", action="append", required=True, metavar="LANG=SPEC",
                   help="held-out texts of one language, the same languages in the same order (xquad default: "
                   "articles 24:48)")
    add_arguments(m, MethodsConfig)
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    m.set_defaults(func=_run_methods)
