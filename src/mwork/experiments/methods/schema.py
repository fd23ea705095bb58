"""The files of a detection-methods comparison's folder (``mwork experiment methods``), written
by ``mwork.experiments.methods.report`` and read by the report's section
(``mwork.report.kinds.methods``); see ``mwork.experiments.schema``."""

from __future__ import annotations

from mwork.experiments.schema import CsvFile, JsonFile

SELECTIVITY = CsvFile(
    "selectivity.csv",
    columns=("method", "size", "lang", "own", "others", "random", "selectivity", "intervention", "neurons",
             "random_std", "random_max", "own_minus_random", "beyond_rule", "kinds"),
    required=("method", "size", "lang", "own", "others", "random", "selectivity"),
    numeric=("own", "others", "random", "selectivity"))
SUMMARY = CsvFile(
    "summary.csv",
    columns=("intervention", "method", "size", "neurons", "langs", "own", "others", "random", "selectivity",
             "selectivity_std", "own_minus_random", "own_minus_random_std", "langs_above_random", "beyond_rule"),
    required=("method", "size", "own", "others", "random", "selectivity", "own_minus_random"),
    numeric=("own", "others", "random", "selectivity", "own_minus_random"))
MATRIX = CsvFile(
    "matrix.csv",
    columns=("intervention", "method", "size", "neurons_of", "eval_lang", "ln_ppl_ratio"),
    required=("method", "size", "neurons_of", "eval_lang", "ln_ppl_ratio"),
    numeric=("ln_ppl_ratio",))
STABILITY = CsvFile(
    "stability.csv",
    columns=("method", "size", "lang", "neurons", "jaccard", "chance", "intersection"),
    required=("method", "size", "lang", "jaccard", "chance"),
    numeric=("jaccard", "chance"))
AGREEMENT = CsvFile(
    "agreement.csv",
    columns=("size", "lang", "method_a", "method_b", "layer", "count_a", "count_b", "intersection", "jaccard"),
    required=("size", "lang", "method_a", "method_b", "layer", "jaccard"),
    numeric=("jaccard",))
COST = CsvFile(
    "cost.csv",
    columns=("method", "tokens", "seconds", "s_per_1k_tokens", "relative_to_forward"),
    required=("method", "s_per_1k_tokens", "relative_to_forward"),
    numeric=("s_per_1k_tokens", "relative_to_forward"))
LANGID = CsvFile(
    "langid.csv",
    columns=("method", "size", "variant", "lang", "n", "correct", "accuracy", "ties", "fasttext_accuracy", "chance",
             "units"),
    required=("method", "size", "variant", "lang", "n", "accuracy", "fasttext_accuracy"),
    numeric=("accuracy", "fasttext_accuracy"))
RESULTS = JsonFile("results.json", ("info",))
REPORT_MD = "report.md"
SELECTIVITY_PLOT = "selectivity.png"
AGREEMENT_PLOT = "agreement.png"  # written when two or more methods are compared
