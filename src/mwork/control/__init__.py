"""Scoring language control (issue #22): does a lever make the model answer in the target
language while keeping what it says? No model here: plain lists of items, outputs and detected
languages in, numbers out (the experiment that generates them is built on top).

* :mod:`mwork.control.items`: parallel items of a (source, target) pair from XQuAD and MGSM
  (``xquad-qa``, ``xquad-text``, ``mgsm-text``), paired by id across languages;
* :mod:`mwork.control.split`: the dev/test split (a hash of the item's paragraph or problem);
* :mod:`mwork.control.meaning`: QA F1 / exact match by the official scorer, chrF (sacrebleu), and
  whether an output singles out its own item's sentence among a pool (``match``);
* :mod:`mwork.control.score`: forcing, meaning relative to the unsteered model, their harmonic
  mean, and the choice of a setting on dev.

docs/control.md defines the scores.
"""

from mwork.control.items import (ITEM_SETS, ParallelItem, first_sentence, item_languages, load_items,
                                 parallel_mgsm_text, parallel_qa, parallel_xquad_text)
from mwork.control.meaning import (MEASURES, POOL_SIZE, PRIMARY_MEASURE, ReferencePool, chrf, chrf_signature,
                                   corpus_chrf, item_measures)
from mwork.control.score import (Fluency, Judged, choose_settings, chosen_test_rows, combine_rows, detect_languages, forcing,
                                 harmonic_score, meaning_ratio, measure_items, relative_meaning, score_row)
from mwork.control.split import DEV_FRACTION, SPLITS, items_of_split, split_items, split_of, split_value

__all__ = [
    "ITEM_SETS", "ParallelItem", "first_sentence", "item_languages", "load_items", "parallel_mgsm_text",
    "parallel_qa", "parallel_xquad_text",
    "MEASURES", "POOL_SIZE", "PRIMARY_MEASURE", "ReferencePool", "chrf", "chrf_signature", "corpus_chrf", "item_measures",
    "Fluency", "Judged", "choose_settings", "chosen_test_rows", "combine_rows", "detect_languages", "forcing", "harmonic_score",
    "meaning_ratio", "measure_items", "relative_meaning", "score_row",
    "DEV_FRACTION", "SPLITS", "items_of_split", "split_items", "split_of", "split_value",
]
