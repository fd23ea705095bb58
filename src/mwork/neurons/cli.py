"""``mwork detect`` / ``mwork specific`` / ``mwork stats``: thin shims over the Python API.

``detect`` is a job (``mwork.neurons.detect_job.DetectJob``): its options are the job's fields
(the model, where the documents come from, the outputs, progress) and each registered method's
config fields (``mwork.neurons.methods``; PLND's: ``DetectConfig``), options and help generated
from them. ``stats --router`` is the job ``RouterStatsConfig``; ``specific`` and ``stats``
(NeuronSet statistics) take their options from the small configs below.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from mwork.config import add_arguments, from_args, given, option
from mwork.jobs import RunOptions
from mwork.neurons.detect_config import RULE_VALUES, DetectConfig


def _method_settings(args: argparse.Namespace) -> dict:
    """The method options given, of every registered method (the job refuses other methods' ones)."""
    from mwork.neurons.methods import detection_methods, get_detection_method

    settings: dict = {}
    for m in detection_methods():
        settings.update(given(args, get_detection_method(m).config_class))
    return settings


def _detect(args: argparse.Namespace) -> int:
    """Every method alike: the job checks its inputs, then runs the method's way (``one_language``:
    PLND, data-parallel under torchrun, where rank 0 writes and prints)."""
    from mwork import distributed
    from mwork.neurons.detect_job import DetectJob

    job = from_args(DetectJob, args, settings=_method_settings(args))
    job.check()  # bad input is refused before the model loads
    with job.context():
        result = job.run()
        if distributed.rank() == 0:
            result.write()
            for line in result.lines():
                print(line)
    return 0


@dataclass(frozen=True, kw_only=True)
class SpecificConfig:
    """``mwork specific``: each language's set minus the shared neurons, written under ``out_dir``."""

    sets: tuple[str, ...] = option(help="NeuronSet files of several languages (same model)", positional=True,
                                   nargs="+")
    out_dir: str = option(help="output folder (a set per input, under its file name)", required=True,
                          metavar="OUT_DIR", record=False)
    rule: str = option("shared", "shared: minus neurons in all sets (reference); english: minus the English set; "
                       "others: minus the union of the other sets", choices=("shared", "english", "others"))
    english: str = option("en", "language code of the English set for --rule english")


def _specific(args: argparse.Namespace) -> int:
    from mwork.neurons.neuronset import NeuronSet
    from mwork.neurons.specific import save_language_specific

    config = from_args(SpecificConfig, args)
    for path in save_language_specific(config.sets, config.out_dir, rule=config.rule, english=config.english):
        ns = NeuronSet.load(path)
        print(f"{ns.meta['name']}: {ns.count()} neurons ({ns.fraction():.4%} of all; "
              + ", ".join(f"{k}={ns.count(k)}" for k in ns.kinds) + f") -> {path}")
    return 0


@dataclass(frozen=True, kw_only=True)
class StatsConfig:
    """``mwork stats``: where the tables go, and which statistics (NeuronSets', or a model's routing)."""

    sets: tuple[str, ...] = option((), "NeuronSet files", positional=True, nargs="*")
    out: str = option(help="output folder", required=True, metavar="OUT", record=False)
    router: bool = option(False, "router statistics of --model on --corpus texts instead")
    # several LANG=SPEC after one --corpus, as well as --corpus repeated
    corpus: tuple[str, ...] = option((), "with --router: texts per language (a file, xquad:LANG[A:B], builtin:LANG "
                                     "...)", nargs="+", metavar="LANG=SPEC")


def _stats(args: argparse.Namespace) -> int:
    config = from_args(StatsConfig, args)
    if config.router:
        return _router_stats(args, config)
    from mwork.neurons.router_stats import RouterStatsConfig

    router_only = [name for name in given(args, RouterStatsConfig) if name != "progress"]
    stray = [f"--{name.replace('_', '-')}" for name in router_only] + (["--corpus"] if config.corpus else [])
    if stray:
        raise ValueError(f"{', '.join(stray)}: only used for router statistics (--router); without it they would be "
                         "ignored")
    if not config.sets:
        raise ValueError("give NeuronSet files, or --router --model M --corpus LANG=SPEC ... for router statistics")
    from mwork.neurons.overlap import named_sets, write_stats

    sets, names = named_sets(config.sets)
    paths = write_stats(sets, config.out, names)
    for name, ns in zip(names, sets):
        print(f"{name}: {ns.count()} neurons ({ns.fraction():.4%} of all)")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _router_stats(args: argparse.Namespace, stats: StatsConfig) -> int:
    from mwork.neurons.router_stats import RouterStatsConfig

    if stats.sets:
        raise ValueError("--router measures a model's routing on texts; it takes no NeuronSet files")
    job = from_args(RouterStatsConfig, args, corpora=stats.corpus)
    result = job.run()
    paths = result.write(stats.out)
    for line in result.lines():
        print(line)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from mwork.neurons.detect_job import DetectJob
    from mwork.neurons.methods import detection_methods, get_detection_method

    methods = detection_methods()
    p = sub.add_parser(
        DetectJob.command, help=DetectJob.summary,
        description="--method plnd (default): per document, the neurons important by a rule (default: top 20% per "
        "layer and kind); kept if important in all documents (or a fraction q of them); writes OUT.safetensors + "
        "OUT.json for --lang. --method lape / ap: every language at once from --corpus LANG=FILE (repeat it), by the "
        "method's own rule; writes OUT_DIR/LANG.safetensors + .json. --units sae:DIR scores the features of a "
        "dictionary (mwork sae train / load) instead of neurons (lape, ap, monolinguality); each set is then a "
        "dictionary of that language's features. Methods: "
        + "; ".join(f"{m}: {get_detection_method(m).description}" for m in methods) + ". --no-progress (formerly "
        "--quiet, still accepted) hides the progress bars.",
    )
    add_arguments(p, DetectJob)
    # each method's settings, once (a field two methods share, e.g. --max-length, is one option)
    add_arguments(p, DetectConfig, exclude=("language", *RULE_VALUES))
    add_arguments(p.add_mutually_exclusive_group(), DetectConfig,
                  exclude=[f for f in DetectConfig.__dataclass_fields__ if f not in RULE_VALUES])
    added = set(DetectConfig.__dataclass_fields__)
    for m in methods:
        cls = get_detection_method(m).config_class
        if cls is DetectConfig:
            continue
        fresh = [f.name for f in dataclasses.fields(cls) if f.name not in added]
        add_arguments(p, cls, exclude=[f.name for f in dataclasses.fields(cls) if f.name not in fresh])
        added.update(fresh)
    p.set_defaults(func=_detect, output_kinds={"out": None})  # --out X writes X.safetensors (checked there)

    p = sub.add_parser("specific", help="language-specific sets: each language's set minus the shared neurons",
                       description="Writes each input's language-specific set under DIR/<input file name>.")
    add_arguments(p, SpecificConfig)
    p.set_defaults(func=_specific)

    p = sub.add_parser("stats", help="counts per layer and kind, fraction of all neurons, Jaccard overlaps (CSV+PNG); "
                       "with --router: how often a mixture-of-experts model's router picks each expert per language",
                       description="NeuronSet statistics, or (--router) per-language router statistics of a "
                       "mixture-of-experts model: selection frequency per language, layer and expert, and an "
                       "expert-level specificity score (see docs/moe.md).")
    add_arguments(p, StatsConfig)
    from mwork.neurons.router_stats import RouterStatsConfig

    add_arguments(p.add_argument_group("router statistics (--router)"), RouterStatsConfig, exclude=("progress",))
    add_arguments(p, RunOptions)
    p.set_defaults(func=_stats)
