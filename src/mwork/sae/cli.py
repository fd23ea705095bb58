"""``mwork sae train`` (:class:`mwork.sae.SaeTrainConfig`) and ``mwork sae load``
(:class:`mwork.sae.SaeLoadConfig`): the commands of the two jobs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mwork.jobs import add_job_command, run_files

TRAIN_DESCRIPTION = ("Train a sparse dictionary (TopK or JumpReLU SAE) at each of --layers on the model's activations "
                     "over --corpus (default: built-in multilingual prose); report fraction of variance explained, "
                     "L0, dead features and the next-token loss with the dictionary spliced in against the clean "
                     "model and zero-ablation, on held-out documents. Writes dictionary.safetensors (+ .json; "
                     "mwork.load_units(OUT) reads it), quality.csv and quality.json; rerun to resume.")


def _train_report(result: Any, files: dict[str, Path]) -> None:
    for row in result.data:
        print(f"layer {row['layer']} {row['site']}: FVE {row['fve']}, L0 {row['l0']}, dead {row['dead']} of "
              f"{row['width']} over {row['n_tokens']} held-out tokens ({row['dead_train']} in training); loss "
              f"clean {row['loss_clean']}, spliced {row['loss_spliced']}, zero {row['loss_zero']}, recovered "
              f"{row['loss_recovered']}")
    print(run_files(files))


def register(sub: argparse._SubParsersAction) -> None:
    from mwork.sae.config import SaeTrainConfig
    from mwork.sae.load import SaeLoadConfig, report

    p = sub.add_parser("sae", help="sparse dictionaries (SAEs): train one, or convert a published one")
    sae = p.add_subparsers(dest="sae_command", metavar="ACTION", required=True)
    add_job_command(sae, SaeTrainConfig, description=TRAIN_DESCRIPTION, report=_train_report)
    add_job_command(sae, SaeLoadConfig, report=report)
