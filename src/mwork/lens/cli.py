"""``mwork lens``: layer-wise decoding by input language (the paper's Figure 1); the command of
the job :class:`mwork.lens.pipeline.LensConfig` (``LensConfig(...).run().write(out)``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mwork.jobs import add_job_command, run_files
from mwork.lens.pipeline import LensConfig

DESCRIPTION = ("Layer-wise decoding: for prompts in each language, the share of English / non-English tokens among "
               "each layer's top-k decoded tokens. Writes lens.csv, lens.json, lens.png and lens_topk.safetensors to "
               "--out. `mwork lens train` trains a tuned lens for --lens tuned.")


def report(run: Any, files: dict[str, Path]) -> None:
    """The English share per layer and language, the layer regions' line, the files."""
    print(run.english_table())
    if run.regions is not None:
        print(run.regions.describe().splitlines()[-1])
    print(run_files(files))


def register(sub: argparse._SubParsersAction) -> None:
    add_job_command(sub, LensConfig, description=DESCRIPTION, report=report)
