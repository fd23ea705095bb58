"""The paper's deactivation experiments (§3-4, Tables 1-6) on any model, task and languages.

For every non-English language T with a language-specific NeuronSet, T's neurons are switched
off (restricted to a layer region and neuron kinds) and the task is measured on English and on
T. The same is done with random neurons of the same count per layer and kind (several seeds).
The columns (``Eng``, ``n-Eng``, ``ΔEng``, ``Δn-Eng``, ``Δ``) are defined in ``aggregate``.

The pipeline, one module per step:

* ``plan``: the layer regions and every cell, under a frozen ``CellKey``; the experiment kernel
  (``mwork.experiments.kernel``) keeps finished cells in ``cells.jsonl``, keyed by the content
  they were computed from (model weights, NeuronSets, evaluation texts), so a rerun recomputes
  what changed only, and executes the missing ones in rounds of one cell per rank under torchrun
  (each cell is computed by one process as it would be alone, so the results are identical);
* ``aggregate``: the headline, the grid rows and the cross-language matrix;
* ``report``: ``table.csv`` / ``table.md``, ``headline.csv``, ``matrix.csv``, ``results.json``,
  ``deactivation.png``;
* ``config`` / ``runner``: ``DeactivationConfig`` and ``run_deactivation`` (the whole experiment
  from settings, what ``mwork experiment deactivation`` runs), ``run_deactivation_experiment``
  (from a loaded model, an evaluation and the sets).
"""

from mwork.experiments.deactivation.aggregate import performance_delta
from mwork.experiments.deactivation.config import DeactivationConfig
from mwork.experiments.deactivation.plan import ATTN_KINDS, CellKey, GridSpec, Region, layer_regions, plan_cells
from mwork.experiments.deactivation.runner import load_language_sets, run_deactivation, run_deactivation_experiment

__all__ = ["ATTN_KINDS", "CellKey", "DeactivationConfig", "GridSpec", "Region", "layer_regions",
           "load_language_sets", "performance_delta", "plan_cells", "run_deactivation",
           "run_deactivation_experiment"]
