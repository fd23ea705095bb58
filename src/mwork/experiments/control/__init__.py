"""Language control that keeps the meaning (``mwork experiment control``, issue #22): levers
(language neurons, language vectors, random units, a prompt, prompt and vector) over sources x
targets, each setting scored on forcing and meaning (``mwork.control``), chosen on dev and
reported on test.

One module per step:

* ``config``: ``ControlConfig``, the settings (the command's options);
* ``prompts``: what the model reads for an item, and the instructions of the prompting lever;
* ``levers``: the registry of levers, each turning a setting into an edit and a prompt;
* ``inputs``: the unit set files, the items of each pair and split, the mean activations and the
  random baselines, checked before the model is loaded;
* ``measure``: one cell's generations, their language and fluency;
* ``runner``: the cells (``mwork.experiments.kernel``), the rows, the choice on dev;
* ``report``: ``control.csv``, ``chosen.csv``, ``generations.jsonl``, ``summary.json``, the plots;
* ``schema``: the files' columns, shared with the report's section.
"""

from mwork.experiments.control.config import ControlConfig
from mwork.experiments.control.runner import ControlKey, run_control

__all__ = ["ControlConfig", "ControlKey", "run_control"]
