"""``mwork lens train`` (also ``mwork lens-train``): train a tuned lens; the command of the job
:class:`mwork.lens.tuned.TunedLensConfig` (:func:`mwork.lens.tuned.train_tuned_lens`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mwork.jobs import add_job_command, run_files
from mwork.lens.tuned import TunedLensConfig

DESCRIPTION = ("Train a tuned lens (Belrose et al. 2023): one affine translator per layer, initialised to the "
               "identity, trained on multilingual text so that each layer's decoded distribution matches the final "
               "layer's. Writes tuned_lens.safetensors, tuned_lens.json and tuned_lens_kl.csv (held-out KL per layer, "
               "logit lens vs tuned lens) to --out; use it with --lens tuned --tuned-lens DIR.")


def report(result: Any, files: dict[str, Path]) -> None:
    """The held-out KL per layer, what it was trained on, the timing, the files."""
    r = result.report
    print(result.table())
    print(f"trained on {r['train_tokens']} positions ({r['train_windows']} windows), {r['config']['steps']} steps, "
          f"vocabulary {r['vocab']['size']} of {r['vocab']['full']}; held-out KL on {r['heldout_positions']} positions")
    print(f"model loaded in {result.load_seconds or 0:.1f} s; "
          + ", ".join(f"{k} {v} s" for k, v in r["timing"].items()))
    print(run_files(files))


def register(sub: argparse._SubParsersAction) -> None:
    add_job_command(sub, TunedLensConfig, description=DESCRIPTION, report=report)
