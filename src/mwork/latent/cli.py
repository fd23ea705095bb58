"""``mwork latent``: Wendler-style word tasks, P(target) against P(English) per layer and lens;
the command of the job :class:`mwork.latent.pipeline.LatentConfig` (:func:`mwork.latent.pipeline.run_latent`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mwork.jobs import add_job_command, run_files
from mwork.latent.pipeline import LatentConfig

DESCRIPTION = ("Word tasks (translation, repetition, cloze) whose answer's English and target-language versions "
               "start with different tokens; per layer and lens (logit, tuned, patchscope) the probability of the "
               "target word and of its English translation. Writes latent.csv, latent_summary.csv, latent.json and "
               "latent_<task>.png to --out.")


def report(run: Any, files: dict[str, Path]) -> None:
    """How many items survive per pair, the summary table, the timing, the files."""
    for s in run.survival:
        print(f"{s['task']} {s['source']}>{s['target']}: {s['kept']} of {s['candidates']} items survive the "
              f"first-token filter, {s['used']} used")
    print(run.table())
    print(f"model loaded in {run.load_seconds or 0:.1f} s; " + ", ".join(f"{k} {v} s" for k, v in run.timing.items()))
    print(run_files(files))


def register(sub: argparse._SubParsersAction) -> None:
    add_job_command(sub, LatentConfig, description=DESCRIPTION, report=report)
