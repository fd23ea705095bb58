"""``mwork experiment deactivation``: the paper's deactivation grid for one model and task;
``mwork experiment methods``: detection methods head to head; ``mwork experiment control``:
language control that keeps the meaning (levers over sources x targets, chosen on dev).

The commands of ``DeactivationConfig``, ``MethodsConfig`` and ``ControlConfig``
(``add_job_command``); the first two print their table's path and content (rank 0 alone under
torchrun), the control experiment its chosen settings' file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mwork.jobs import add_job_command


def _show(result: Any, name: str) -> None:
    """The path of the result's Markdown table, as the user gave ``--out``, and its content."""
    table = result.extra["out"].rstrip("/") + "/" + name
    print(table)
    print(Path(table).read_text(encoding="utf-8"))


def _deactivation_report(result: Any, files: dict[str, Path]) -> int:
    _show(result, "table.md")
    return 0 if result.data else 1


def _methods_report(result: Any, files: dict[str, Path]) -> None:
    _show(result, "report.md")


def _control_report(result: Any, files: dict[str, Path]) -> None:
    from mwork.jobs import run_files

    print(run_files(files))
    chosen = files.get("chosen.csv")
    if chosen is not None:
        print(Path(chosen).read_text(encoding="utf-8"), end="")


def register(sub: argparse._SubParsersAction) -> None:
    from mwork.experiments.control import ControlConfig
    from mwork.experiments.deactivation import DeactivationConfig
    from mwork.experiments.methods import MethodsConfig

    p = sub.add_parser("experiment", help="run an experiment (the paper's deactivation grid; detection methods head "
                       "to head; language control)")
    exp = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    add_job_command(exp, DeactivationConfig, report=_deactivation_report,
                    description="Rows: layer regions x {language-specific, random}; columns Eng, n-Eng, ΔEng, "
                    "Δn-Eng, Δ = ΔEng - Δn-Eng. Writes table.csv, table.md, headline.csv, results.json, "
                    "deactivation.png; finished cells are kept in cells.jsonl and not recomputed unless "
                    "the model, the sets or the texts changed.")
    add_job_command(exp, MethodsConfig, report=_methods_report,
                    description="For every method, size and language: held-out perplexity of every language with "
                    "that language's set zeroed or mean-patched, against random sets of the same count per layer "
                    "and kind; the stability of the sets over two halves of the corpora; the agreement between "
                    "methods; the cost against a forward pass. Writes selectivity.csv, summary.csv, matrix.csv, "
                    "stability.csv, agreement.csv, cost.csv, report.md, results.json and plots; finished cells and "
                    "scores are kept and reused.")
    add_job_command(exp, ControlConfig, report=_control_report,
                    description="For every lever (language neurons, language vectors, random units, a prompt, "
                    "prompt and vector), source and target and every setting (layers, positions, strength): greedy "
                    "outputs of parallel items scored on forcing (the output's language is the target) and meaning "
                    "(kept relative to the unsteered model), with fluency beside; settings chosen per lever on the "
                    "dev items and reported on the disjoint test items. Writes control.csv, chosen.csv, "
                    "generations.jsonl, summary.json, control_heatmap.png, control_pareto.png; finished cells are "
                    "kept in cells.jsonl and reused.")
