"""mwork: how large language models handle languages other than English, and how to change it.

The public API (each has a ``mwork`` command over it):

* ``load_model`` / ``get_adapter`` / ``register_adapter``: models of every supported family, where
  things live in them, and new families from outside mwork;
* ``capture`` / ``Hooks``: read and edit any named site of a model (``mwork.capturing``, ``mwork.hooks``);
* ``TextSource`` / ``read_texts``: every way of naming documents (``mwork.texts``);
* ``run_lens`` / ``LensConfig`` / ``logit_lens`` / ``estimate_regions``: layer-wise decoding by
  language (``mwork lens``);
* ``importance`` / ``detect`` / ``NeuronSet`` / ``language_specific``: PLND (``mwork detect``, ``specific``);
* ``router_statistics``: how often a mixture-of-experts model's router picks each expert per language (``mwork stats --router``);
* ``detect_languages`` / ``language_scores`` / ``run_methods``: PLND, LAPE, AP head to head (``mwork experiment methods``);
* ``deactivate`` / ``perplexity`` / ``get_task``: interventions and evaluation (``mwork ppl``, ``experiment``);
* ``load_units`` / ``Directions`` / ``UnitSet`` / ``register_unit_kind``: every kind of unit (neurons,
  directions, new kinds) read from its file and edited by the one intervention primitive (``mwork.units``);
* ``VectorsConfig`` / ``language_vectors``: residual-stream language vectors, DiffMean (``mwork vectors``);
* ``mwork.corpus_pass.corpus_pass``: any registered statistic of any site over a corpus, in one pass;
* ``steer`` / ``add_statistics`` / ``run_steer``: turn a language's neurons on and measure what it does (``mwork steer``);
* ``enhance`` / ``register_training_method``: fine-tune only the selected neurons, and new training methods
  for the comparison (``mwork enhance``, ``enhance compare``);
* ``render_report`` / ``run_demo``: the HTML report (``mwork report``, ``mwork demo``);
* ``register_results_kind``: a new kind of results folder on the report's page (``mwork.report.registry``);
* ``run_eval`` / ``EvalConfig`` / ``make_local_tasks``: lm-evaluation-harness tasks with neurons off (``mwork eval``);
* ``run_latent`` / ``LatentConfig``: latent language by word tasks under three lenses (``mwork latent``).

Submodules are imported lazily, so ``import mwork`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from mwork.versions import warn_untested_versions

warn_untested_versions()  # once, before anything imports transformers: a dependency outside the tested range

from mwork.models import DEFAULT_MODEL, get_adapter, load_model  # noqa: E402

__version__ = "0.1.0"

_LAZY = {
    "register_adapter": "mwork.models.adapters",
    "capture": "mwork.capturing",
    "Capture": "mwork.capturing",
    "Hooks": "mwork.hooks",
    "TextSource": "mwork.texts",
    "read_texts": "mwork.texts",
    "NeuronSet": "mwork.neurons.neuronset",
    "importance": "mwork.neurons.importance",
    "detect": "mwork.neurons.detect",
    "DetectConfig": "mwork.neurons.detect_config",
    "DetectJob": "mwork.neurons.detect_job",
    "language_specific": "mwork.neurons.specific",
    "router_statistics": "mwork.neurons.router_stats",
    "detect_languages": "mwork.neurons.methods",
    "language_scores": "mwork.neurons.methods",
    "register_detection_method": "mwork.neurons.methods",
    "MethodsConfig": "mwork.experiments.methods",
    "run_methods": "mwork.experiments.methods",
    "save_language_specific": "mwork.neurons.specific",
    "deactivate": "mwork.intervene",
    "steer": "mwork.steering",
    "load_units": "mwork.units",
    "Directions": "mwork.units",
    "UnitSet": "mwork.units",
    "register_unit_kind": "mwork.units",
    "add_statistics": "mwork.neurons.statistics",
    "perplexity": "mwork.tasks.perplexity",
    "get_task": "mwork.tasks.registry",
    "register_task": "mwork.tasks.registry",
    "TaskResult": "mwork.tasks.results",
    "run_ppl": "mwork.tasks.ppl_run",
    "list_tasks": "mwork.tasks.registry",
    "logit_lens": "mwork.lens.logit_lens",
    "LensConfig": "mwork.lens.config",
    "run_lens": "mwork.lens.pipeline",
    "estimate_regions": "mwork.lens.regions",
    "run_deactivation_experiment": "mwork.experiments.deactivation",
    "run_deactivation": "mwork.experiments.deactivation",
    "DeactivationConfig": "mwork.experiments.deactivation",
    "run_steer": "mwork.experiments.steering",
    "SteerConfig": "mwork.experiments.steering",
    "enhance": "mwork.experiments.enhance",
    "register_training_method": "mwork.experiments.training_methods",
    "render_report": "mwork.report.page",
    "register_results_kind": "mwork.report.registry",
    "run_demo": "mwork.demo",
    "EvalConfig": "mwork.tasks.lm_eval_run",
    "run_eval": "mwork.tasks.lm_eval_run",
    "make_local_tasks": "mwork.tasks.lm_eval_local",
    "run_latent": "mwork.latent",
    "LatentConfig": "mwork.latent",
    "VectorsConfig": "mwork.vectors",
    "EnhanceConfig": "mwork.experiments.enhance",
    "EnhanceCompareConfig": "mwork.experiments.compare",
    "language_vectors": "mwork.vectors",
}

__all__ = ["DEFAULT_MODEL", "get_adapter", "load_model", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mwork' has no attribute {name!r}")
