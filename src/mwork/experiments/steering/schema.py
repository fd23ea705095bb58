"""The files of a steering sweep's folder (``mwork steer``), written by
``mwork.experiments.steering.report`` and read by the report's section
(``mwork.report.kinds.steering``); see ``mwork.experiments.schema``."""

from __future__ import annotations

from mwork.experiments.schema import CsvFile, JsonFile
from mwork.experiments.steering.metrics import METRIC_COLUMNS

STEER = CsvFile(
    "steer.csv",
    columns=("target", "source", "method", "detection", "seed", "strength", "mode", "stat", "positions", "neurons",
             "off", "n", *METRIC_COLUMNS),
    required=("target", "source", "method", "seed", "strength", "target_rate", "damage_ppl"),
    numeric=("strength", "target_rate", "damage_ppl", "target_prob_mass", "target_rank", "distinct_2", "f1"))
#: the columns of ``steer.csv`` that stay text when the sweep reads it back (``report.read_rows``)
TEXT_COLUMNS = ("target", "source", "method", "detection", "mode", "stat", "positions")
UNSTEERED = CsvFile(
    "unsteered.csv",
    columns=("target", "source", "n", *METRIC_COLUMNS),
    required=("target", "source", "target_rate", "damage_ppl"),
    numeric=("target_rate", "damage_ppl"))
GENERATIONS = JsonFile("generations.jsonl", ("prompt", "strength", "method", "seed", "text", "detected_language",
                                             "unsteered_text", "unsteered_language"))
SUMMARY = JsonFile("summary.json", ("rows", "unsteered"))
GENERATIONS_MD = "generations.md"
PLOT = "steer.png"
