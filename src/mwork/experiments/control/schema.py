"""The files of a control experiment's folder (``mwork experiment control``), written by
``mwork.experiments.control.report`` and read by the report's section
(``mwork.report.kinds.control``); see ``mwork.experiments.schema``."""

from __future__ import annotations

from mwork.experiments.schema import CsvFile, JsonFile

#: the fields that make a setting of a lever (``mwork.control.choose_settings``'s ``setting``)
SETTING: tuple[str, ...] = ("variant", "layers", "positions", "strength")
#: a row's identity: the lever, its setting, the pair, the split and the item set
ROW_KEY: tuple[str, ...] = ("lever", *SETTING, "source", "target", "split", "item_set")
#: the measures of a row (``mwork.control.score_row``; empty where a kind of item has none)
MEASURE_COLUMNS: tuple[str, ...] = (
    "n", "forcing", "meaning", "fluency", "score", "perplexity", "distinct_2", "measure", "steered", "unsteered",
    "meaning_ratio", "meaning_source", "f1_any", "f1_any_unsteered", "f1", "f1_unsteered", "exact",
    "exact_unsteered", "f1_source", "f1_source_unsteered", "match", "match_unsteered", "match_target",
    "match_target_unsteered", "match_source", "match_source_unsteered", "chrf", "chrf_unsteered", "chrf_source",
    "chrf_source_unsteered", "corpus_chrf", "corpus_chrf_unsteered", "judge", "judge_unsteered", "meaning_judge",
    "units")

CONTROL = CsvFile(
    "control.csv",
    columns=(*ROW_KEY, *MEASURE_COLUMNS),
    required=("lever", "source", "target", "split", "layers", "strength", "forcing", "meaning", "fluency", "score"),
    numeric=("strength", "forcing", "meaning", "fluency", "score", "perplexity"))
CHOSEN = CsvFile(
    "chosen.csv",
    columns=("lever", *SETTING, "source", "target", "item_set", "dev_score", "n", "forcing", "meaning", "fluency",
             "perplexity", "score"),
    required=("lever", "source", "target", "dev_score", "forcing", "meaning", "score"),
    numeric=("dev_score", "forcing", "meaning", "fluency", "perplexity", "score"))
GENERATIONS = JsonFile("generations.jsonl", ("lever", "source", "target", "split", "item_set", "id", "prompt",
                                             "output", "language", "unsteered_output", "unsteered_language"))
SUMMARY = JsonFile("summary.json", ("settings", "levers", "pairs"))
HEATMAP = "control_heatmap.png"
PARETO = "control_pareto.png"
