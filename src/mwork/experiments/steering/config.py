"""``SteerConfig``: every setting of a steering sweep (``mwork steer``), in one place.

Its fields are the ``mwork steer`` options (generated with ``mwork.config``), the settings a
resumed sweep must match and the settings recorded with the results; ``SteerConfig(...).run()``
is the sweep (``run_steer``), its files written under ``out`` as it goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mwork.config import option
from mwork.jobs import Job, ModelOptions, OutputOptions, RunOptions, WrittenResult
from mwork.lens.regions import check_region_options
from mwork.steering import MODES, POSITIONS, parse_stat, strength_problem

REGIONS = ("understanding", "task-solving", "generation", "all")


def _strengths(text: str) -> tuple[float, ...]:
    import argparse

    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    problem = strength_problem(values)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return values


@dataclass(frozen=True, kw_only=True)
class SteerConfig(ModelOptions, RunOptions, OutputOptions, Job):
    """The settings of one sweep (see ``mwork.experiments.steering.sweep``)."""

    command = "steer"
    summary = ("steer the output language with a language's neurons: a sweep of strengths against random neurons "
               "and the unsteered model")

    neurons: str = option(help="the target language's NeuronSet (e.g. its language-specific set)", metavar="SET",
                          required=True)
    target: str = option(help="the language to steer to (a language code, e.g. zh)", metavar="LANG", required=True)
    prompts: str = option(help="builtin:LANG (mwork's prompts), xquad:LANG[A:B] (XQuAD questions, parallel: the "
                          "answer F1 in the target language), a .txt file (one prompt a line, with --source) or "
                          ".jsonl ({text, lang[, answers]})", metavar="PROMPTS", required=True)
    out: str = option(help="output folder (steer.csv, generations.jsonl, steer.png; resumable)", metavar="DIR",
                      required=True, record=False)
    mode: str = option("set", "set: x <- (1-a) x + a s; add: x <- x + a s; scale: x <- a x (a: strength, s: the "
                       "target language's statistic of the neuron)", choices=MODES)
    strengths: tuple[float, ...] = option((0.0, 1.0, 2.0), "strengths a, comma-separated", parse=_strengths,
                                          metavar="A,B,...")
    stat: str = option("mean", "the statistic s: mean, median or a quantile qX (e.g. q0.9)")
    corpus: str | None = option(None, "target-language texts to measure the statistics from when the set carries "
                                "none, and for the random baselines (a file, xquad:LANG[A:B], builtin:LANG, hf:...)",
                                metavar="TEXTS")
    stats_docs: int | None = option(None, "measure the statistics on the first N documents of --corpus", metavar="N")
    stats_max_length: int = option(256, "tokens per document for the statistics")
    off: str | None = option(None, "a NeuronSet switched off at the same time (e.g. the source language's)",
                             metavar="SET")
    seeds: tuple[int, ...] = option((0, 1), "seeds of the random baselines (same count per layer and kind)")
    positions: str = option("all", "steer prompt tokens, generated tokens or all", choices=POSITIONS)
    layers: str | None = option(None, "only these layers, e.g. 10-17 (default: the region's, or all)")
    kinds: str | None = option(None, "only these kinds, e.g. ffn or attn (default: all the set has)")
    region: str = option("all", "only this layer region (needs --understanding/--generation or --lens)",
                         choices=REGIONS)
    understanding: int | None = option(None, "U: the first U layers are the understanding region", metavar="U")
    generation: int | None = option(None, "G: the last G layers are the generation region", metavar="G")
    lens: str | None = option(None, "a `mwork lens` result to estimate U and G from", metavar="DIR")
    source: str | None = option(None, "the language of a plain-text prompts file", metavar="LANG")
    template: str = option("{prompt}", "how a built-in or .txt prompt is shown to the model; {prompt} is replaced")
    limit: int | None = option(None, "use the first N prompts", metavar="N")
    max_new_tokens: int = option(24, "tokens generated per prompt")
    batch_size: int = option(8, "prompts per generation batch")

    def __post_init__(self) -> None:
        object.__setattr__(self, "strengths", tuple(float(s) for s in self.strengths))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "stat", parse_stat(self.stat))
        if not self.strengths:
            raise ValueError("give at least one strength (--strengths A,B,...)")
        problem = strength_problem(self.strengths)
        if problem:
            raise ValueError(f"--strengths: {problem}")
        if len(set(self.strengths)) != len(self.strengths):
            raise ValueError(f"the strengths {list(self.strengths)} repeat a value: give each once")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"the seeds {list(self.seeds)} repeat a seed: give each once")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}")
        if self.region not in REGIONS:
            raise ValueError(f"region must be one of {', '.join(REGIONS)}")
        if self.region != "all" and self.layers is not None:
            raise ValueError("give --region or --layers, not both")
        if "{prompt}" not in self.template:
            raise ValueError(f"the template {self.template!r} has no {{prompt}} placeholder")
        try:
            self.template.format(prompt="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"the template {self.template!r} is not a format string with only {{prompt}} in braces "
                             f"({type(err).__name__}: {err}); write {{{{ and }}}} for literal braces") from None
        check_region_options(self.lens, self.understanding, self.generation)
        if self.region == "all":
            unused = [flag for flag, value in (("--understanding", self.understanding), ("--generation",
                      self.generation), ("--lens", self.lens)) if value is not None]
            if unused:
                raise ValueError(f"{', '.join(unused)}: only used with --region understanding, task-solving or "
                                 "generation; with --region all (the default) it would be ignored")
        from mwork.files import check_name

        check_name(self.target, "language code", "--target")  # codes obey one rule (they name files elsewhere)
        if self.source is not None:
            check_name(self.source, "language code", "--source")
        if self.source is not None and (self.prompts.startswith(("builtin:", "xquad:")) or
                                        self.prompts.endswith(".jsonl")):
            raise ValueError(f"--source names the language of a plain-text prompts file; {self.prompts} carries its "
                             "own language")
        for name in ("max_new_tokens", "batch_size", "stats_max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("limit", "stats_docs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.target:
            raise ValueError("give the target language (--target LANG)")

    def run(self, model: Any = None, tokenizer: Any = None) -> WrittenResult:
        """The sweep (``run_steer``: the prompts and sets are read before the model is loaded);
        its files are under ``out``, a rerun computes only what is missing."""
        import mwork.experiments.steering.schema as schema
        from mwork.experiments.steering.runner import run_steer

        self.check()
        data = run_steer(self, model=model, tokenizer=tokenizer)
        folder = Path(self.out)
        names = (schema.STEER.name, schema.UNSTEERED.name, schema.GENERATIONS.name, schema.GENERATIONS_MD,
                 schema.SUMMARY.name, schema.PLOT)
        return WrittenResult(folder, {n: folder / n for n in names if (folder / n).exists()}, data,
                             extra={"out": self.out})
