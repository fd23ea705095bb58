"""The files of a deactivation grid's folder (``mwork experiment deactivation``), written by
``mwork.experiments.deactivation.report`` and read by the report's section
(``mwork.report.kinds.deactivation``); see ``mwork.experiments.schema``."""

from __future__ import annotations

from mwork.experiments.schema import CsvFile, JsonFile

GRID = CsvFile(
    "table.csv",
    columns=("region", "kinds", "layers", "neurons_off", "Eng", "n-Eng", "ΔEng", "Δn-Eng", "Δ", "Eng_std",
             "n-Eng_std", "ΔEng_std", "Δn-Eng_std", "Δ_std", "mean_neurons", "share_off"),
    required=("region", "kinds", "layers", "neurons_off", "Eng", "n-Eng", "Δ"),
    numeric=("Eng", "n-Eng", "Δ"))
HEADLINE = CsvFile(
    "headline.csv",
    columns=("lang", "original", "random_mean", "random_std", "specific", "neurons_off", "share_off"),
    required=("lang", "original", "random_mean", "specific", "neurons_off", "share_off"),
    numeric=("original", "random_mean", "specific", "neurons_off", "share_off"))
#: written with ``--matrix`` only (the rows of ``aggregate.matrix_rows``)
MATRIX = CsvFile(
    "matrix.csv",
    columns=("neurons_of", "eval_lang", "original", "random_mean", "random_std", "specific", "specific_change",
             "random_change"),
    required=("neurons_of", "eval_lang", "original", "random_mean", "specific"),
    numeric=("original", "random_mean", "specific"))
RESULTS = JsonFile("results.json", ("info",))
TABLE_MD = "table.md"
PLOT = "deactivation.png"
