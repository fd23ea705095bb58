"""Which neurons are really language-specific? Detection methods head to head (``mwork
experiment methods``): PLND, LAPE and activation AP on the same model, texts and evaluation.

One module per step:

* ``config``: ``MethodsConfig`` (the options; sizes, seeds, interventions);
* ``detection``: every method's scores on the corpora and their halves, one shared streaming
  pass for the statistics methods, cached under ``<out>/scores`` by content;
* ``units``: the unit kinds compared (``--units neurons,sae:DIR``), their random baselines,
  digests and overlaps;
* ``patch``: mean-patching (``MeanPatch``) beside zeroing;
* ``tables``: selectivity, the language x language matrix, stability and agreement;
* ``cost``: seconds per thousand tokens against a plain forward pass;
* ``langid``: language identification of the held-out texts from which units of the sets fire,
  beside fastText (``langid.csv``);
* ``report``: CSV, Markdown and plots; ``runner``: ``run_methods`` end to end.
"""

from mwork.experiments.methods.config import MethodsConfig, parse_size, size_count
from mwork.experiments.methods.patch import MeanPatch
from mwork.experiments.methods.runner import run_methods, run_methods_experiment

__all__ = ["MeanPatch", "MethodsConfig", "parse_size", "run_methods", "run_methods_experiment", "size_count"]
