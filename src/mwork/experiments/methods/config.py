"""``MethodsConfig``: the settings of one head-to-head comparison of detection methods; at once
the Python arguments of ``run_methods``, the options of ``mwork experiment methods`` and the
recorded metadata (``mwork.config``). Bad values are refused here, before a model is loaded;
``MethodsConfig(...).run()`` is the comparison, written under ``out`` as its cells finish."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mwork.config import option
from mwork.jobs import Job, ModelOptions, OutputOptions, RunOptions, WrittenResult
from mwork.models.adapters import KINDS
from mwork.experiments.methods.units import NEURONS, UNITS_HELP, arms_of, parse_units, read_unit_kinds

INTERVENTIONS = ("zero", "mean")


def _list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_size(text: str) -> tuple[str, float]:
    """``"0.5%"`` -> ("fraction", 0.005); ``"0.005"`` -> ("fraction", 0.005); ``"500"`` -> ("count", 500)."""
    t = str(text).strip()
    try:
        if t.endswith("%"):
            value = float(t[:-1]) / 100
            kind = "fraction"
        elif t.isdigit():
            return "count", int(t)
        else:
            value, kind = float(t), "fraction"
    except ValueError:
        raise ValueError(f"--sizes: set size {text!r}: give a percentage of all neurons (0.5%), a fraction (0.005) or a "
                         "count (500)") from None
    if not (math.isfinite(value) and 0 < value < 1):
        raise ValueError(f"--sizes: set size {text!r} must be a share of all neurons between 0 and 100%")
    return kind, value


def size_count(text: str, total: int) -> int:
    """The number of neurons a size means for a model with ``total`` neurons (at least 1)."""
    kind, value = parse_size(text)
    n = int(value) if kind == "count" else round(value * total)
    if not 1 <= n <= total:
        raise ValueError(f"--sizes: set size {text} is {n} neurons; the model has {total}")
    return n


@dataclass(frozen=True, kw_only=True)
class MethodsConfig(ModelOptions, RunOptions, OutputOptions, Job):
    """One comparison: the model, the methods, every language's detection and held-out texts,
    the set sizes, the random seeds and the interventions (module docstring of the runner)."""

    command = "methods"
    summary = "detection methods head to head (PLND, LAPE, activation AP) at equal set sizes"

    methods: tuple[str, ...] = option(("plnd", "lape", "ap"), "detection methods, comma-separated", parse=_list)
    units: tuple[str, ...] = option(("neurons",), UNITS_HELP, parse=_list, metavar="KIND[,KIND]")
    corpus: tuple[str, ...] = option((), "detection texts of one language (repeat: one per language); SPEC: a file, "
                                     "FILE[A:B], xquad:LANG[A:B] (default articles 0:24) ...", repeat=True,
                                     required=True, metavar="LANG=SPEC")
    heldout: tuple[str, ...] = option((), "held-out texts of one language, the same languages in the same order "
                                      "(xquad default: articles 24:48)", repeat=True, required=True,
                                      metavar="LANG=SPEC")
    sizes: tuple[str, ...] = option(("0.5%", "1%"), "set sizes: percentages of all the model's neurons (0.5%) or "
                                    "counts (500), comma-separated", parse=_list)
    seeds: tuple[int, ...] = option((0, 1), "random-baseline seeds")
    interventions: tuple[str, ...] = option(INTERVENTIONS, "zero (switch the neurons off) and/or mean (set them to "
                                            "their mean activation over all languages)", parse=_list)
    out: str = option(help="output folder (finished cells and scores are kept there and reused)", required=True,
                      record=False)
    max_length: int = option(256, "detection: tokens per window, for every method")
    truncate: bool = option(False, "detection: only each document's first MAX_LENGTH tokens, for every method")
    max_docs: int | None = option(None, "detection: the first N documents of each corpus")
    batch_size: int = option(8, "windows or texts per batch")
    eval_max_length: int = option(256, "held-out perplexity: tokens per window")
    limit: int | None = option(None, "held-out texts per language (the first N)")
    kinds: tuple[str, ...] | None = option(None, "restrict every method to these neuron kinds (default: each "
                                           "method's own: plnd and ap ffn,q,k,v, lape ffn)", parse=_list)
    plnd_qk_method: str = option("exact", "PLND's Q/K scores: exact Eq. 8 or its approximation",
                                 choices=("exact", "approx"))
    stability: bool = option(True, "also detect on the two halves of each corpus (even / odd documents)")
    cost_docs: int = option(8, "documents per language timed for cost.csv")
    cost_repeats: int = option(2, "timings per method for cost.csv (the fastest is kept)")

    def __post_init__(self) -> None:
        from mwork.neurons.methods import get_detection_method
        from mwork.neurons.methods.run import parse_corpus_specs

        for name in ("methods", "sizes", "interventions", "corpus", "heldout", "units"):
            value = getattr(self, name)
            object.__setattr__(self, name, _list(value) if isinstance(value, str) else tuple(value))
        if self.kinds is not None:
            kinds = _list(self.kinds) if isinstance(self.kinds, str) else tuple(self.kinds)
            if not kinds or set(kinds) - set(KINDS) or len(set(kinds)) != len(kinds):
                raise ValueError(f"--kinds must name each of {', '.join(KINDS)} at most once, got {','.join(kinds)}")
            object.__setattr__(self, "kinds", kinds)
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"--methods must name each method once, got {','.join(self.methods) or 'none'}")
        for m in self.methods:
            get_detection_method(m)
        object.__setattr__(self, "units", parse_units(self.units))
        arms_of(self.unit_kinds(), self.methods)  # dictionaries read now: a bad one is refused before the model loads
        if "lape" in self.methods and self.kinds is not None and "ffn" not in self.kinds:
            raise ValueError("LAPE scores FFN neurons only: --kinds must include ffn when lape is compared")
        corpus = parse_corpus_specs(self.corpus, "--corpus")
        heldout = parse_corpus_specs(self.heldout, "--heldout")
        if list(corpus) != list(heldout):
            raise ValueError(f"--heldout must name the languages of --corpus, in the same order: corpus "
                             f"{','.join(corpus)}, heldout {','.join(heldout)}")
        if len(corpus) < 2:
            raise ValueError("compare at least two languages (a language-specific set needs others to differ from)")
        if not self.sizes:
            raise ValueError("give at least one set size (--sizes 0.5%,1%)")
        for s in self.sizes:
            kind, value = parse_size(s)
            for k in self.unit_kinds():  # a count is known now; a percentage once the model is (runner)
                if kind == "count" and not k.is_neurons and value > k.dictionary.count():
                    raise ValueError(f"--sizes {s}: every unit kind gets {value} units, and the dictionary of --units "
                                     f"{k.label} has {k.dictionary.count()} features; choose smaller sizes")
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"--sizes repeats a size: {','.join(self.sizes)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must name at least one seed, each once; got {list(self.seeds)}")
        if not self.interventions or set(self.interventions) - set(INTERVENTIONS) or \
                len(set(self.interventions)) != len(self.interventions):
            raise ValueError(f"--interventions must be zero and/or mean, each once; got {','.join(self.interventions)}")
        for name in ("max_length", "batch_size", "eval_max_length", "cost_docs", "cost_repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.eval_max_length < 2:
            raise ValueError("--eval-max-length must be at least 2")
        for name in ("limit", "max_docs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")

    def compute(self, model: Any, tokenizer: Any) -> WrittenResult:
        """The comparison (``run_methods``); finished cells and scores are kept under ``out``."""
        import mwork.experiments.methods.schema as schema
        from mwork.experiments.methods.runner import run_methods

        data = run_methods(self, model=model, tokenizer=tokenizer, progress=self.progress)
        folder = Path(self.out)
        names = (schema.SELECTIVITY.name, schema.SUMMARY.name, schema.MATRIX.name, schema.STABILITY.name,
                 schema.AGREEMENT.name, schema.COST.name, schema.LANGID.name, schema.REPORT_MD, schema.RESULTS.name,
                 schema.SELECTIVITY_PLOT, schema.AGREEMENT_PLOT)
        return WrittenResult(folder, {n: folder / n for n in names if (folder / n).exists()}, data,
                             extra={"out": self.out})

    def unit_kinds(self) -> list:
        """The kinds of ``units`` (``units.UnitKind``), dictionaries read once per config."""
        kinds = self.__dict__.get("_unit_kinds")
        if kinds is None:
            kinds = read_unit_kinds(self.units)
            object.__setattr__(self, "_unit_kinds", kinds)
        return kinds

    @property
    def shows_units(self) -> bool:
        """Whether the tables name each row's unit kind (anything but neurons alone)."""
        return self.units != (NEURONS,)

    def size_counts(self, total: int) -> dict[str, int]:
        """Each of ``sizes`` as a number of neurons of a model with ``total`` (``size_count``)."""
        return {s: size_count(s, total) for s in self.sizes}

    @property
    def langs(self) -> tuple[str, ...]:
        from mwork.neurons.methods.run import parse_corpus_specs

        return tuple(parse_corpus_specs(self.corpus))

    def corpus_specs(self) -> dict[str, str]:
        from mwork.neurons.methods.run import parse_corpus_specs

        return parse_corpus_specs(self.corpus, "--corpus")

    def heldout_specs(self) -> dict[str, str]:
        from mwork.neurons.methods.run import parse_corpus_specs

        return parse_corpus_specs(self.heldout, "--heldout")

    def method_config(self, name: str) -> Any:
        """The settings of method ``name`` in this comparison: its defaults, with the shared
        detection settings (windows, truncation, batch size, kinds) of this experiment."""
        from mwork.neurons.methods import get_detection_method

        method = get_detection_method(name)
        fields = set(method.config_class.__dataclass_fields__)
        shared = {"max_length": self.max_length, "truncate": self.truncate, "batch_size": self.batch_size}
        if self.kinds is not None and "kinds" in fields:
            shared["kinds"] = self.kinds
        if name == "plnd":
            shared["qk_method"] = self.plnd_qk_method
        return method.make_config(**{k: v for k, v in shared.items() if k in fields})
