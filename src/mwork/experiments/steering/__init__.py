"""Steering the output language with language neurons, measured honestly (``mwork steer``).

One module per step:

* ``config``: ``SteerConfig``, the settings (the ``mwork steer`` options);
* ``prompts``: built-in, XQuAD (parallel: the answer's F1 in the target language) or a file;
* ``vocab``: the language of every vocabulary token (the target's probability mass);
* ``generation``: greedy generations with the next-token measures, and the unsteered model's
  log-likelihood of them (the damage);
* ``metrics``: per generation and per row (rate, mass, rank, perplexity, distinct-n, F1);
* ``sweep``: the cells (content-keyed, resumable) for every method, seed and strength;
* ``report``: ``steer.csv``, ``unsteered.csv``, ``generations.jsonl``, ``steer.png``, ``summary.json``;
* ``runner``: ``run_steer(SteerConfig)``, what ``mwork steer`` runs; ``cli``: the command.

The context manager itself is ``mwork.steer`` (``mwork/steering.py``), the statistics
``mwork.neurons.statistics``.
"""

from mwork.experiments.steering.config import SteerConfig
from mwork.experiments.steering.runner import run_steer
from mwork.experiments.steering.sweep import SteerSets, prepare_sets, run_steer_sweep, steer_scope

__all__ = ["SteerConfig", "SteerSets", "prepare_sets", "run_steer", "run_steer_sweep", "steer_scope"]
