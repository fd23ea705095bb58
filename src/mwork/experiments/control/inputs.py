"""The inputs of a control experiment: which unit set files the levers need, the items of every
pair and split, the unit sets loaded and, once the model is there, the neurons' mean activations
and the random baselines.

Everything a user gives is checked by :func:`check_inputs` before a model is loaded: the levers
and the folders they need, every target's (and for ``swap``, every source's) file in them, the
languages against the item sets, the prompts of every source, the texts the mean activations are
measured on. The items (:func:`pair_items`) and the unit set files (:func:`load_unit_sets`) are
read before the model too.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from mwork.config import digest
from mwork.control.items import ITEM_SETS, ParallelItem, load_items
from mwork.control.meaning import POOL_SIZE, ReferencePool
from mwork.control.split import items_of_split
from mwork.experiments.control.levers import lever
from mwork.experiments.control.prompts import prompt_problem

#: the unit families levers steer with, each from its folder of LANG.safetensors files
FAMILIES: tuple[str, ...] = ("neurons", "features", "vectors")
#: what writes each family's files
MADE_BY: dict[str, str] = {"neurons": "mwork detect", "features": "mwork detect --units sae:DIR",
                           "vectors": "mwork vectors"}

if TYPE_CHECKING:
    from mwork.experiments.control.config import ControlConfig
    from mwork.units.dictionary import Dictionary
    from mwork.neurons.neuronset import NeuronSet
    from mwork.units.directions import Directions


def families(config: ControlConfig) -> dict[str, bool]:
    """Which unit families the chosen levers steer with (``random`` with each one given)."""
    levers = config.chosen_levers()
    need = {need for name in levers for need in lever(name).needs}
    if "random" in levers:
        need |= {f for f in FAMILIES if config.has_folder(f)}
    return {f: f in need for f in FAMILIES}


def unit_files(config: ControlConfig, pairs: Sequence[tuple[str, str]]) -> dict[str, dict[str, Path]]:
    """``{family: {lang: path}}`` (:data:`FAMILIES`): every target's set of each family the levers
    use, and every source's vectors when a ``swap`` mode removes them."""
    from mwork.files import child_path

    need = families(config)
    targets = list(dict.fromkeys(t for _, t in pairs))
    sources = list(dict.fromkeys(s for s, _ in pairs))
    swap = any(m.startswith("swap") for m in config.vector_modes)
    out: dict[str, dict[str, Path]] = {f: {} for f in FAMILIES}
    for family in ("neurons", "features"):
        if need[family]:
            out[family] = {t: child_path(config.folder(family), t, ".safetensors") for t in targets}
    if need["vectors"]:
        langs = targets + ([s for s in sources if s not in targets] if swap else [])
        out["vectors"] = {lang: child_path(config.vectors_dir, lang, ".safetensors") for lang in langs}
    return out


def check_inputs(config: ControlConfig) -> None:
    """Refuse, before a model is loaded, what cannot run (module docstring), saying what to change."""
    from mwork.corpora import DATASET_BUILD_CODES
    from mwork.texts import parse_corpus_specs

    levers = config.chosen_levers()
    for name in levers:
        for need in lever(name).needs:
            if not config.has_folder(need):
                raise ValueError(f"--levers {name} steers with language {need}: give --{need}-dir (a folder of "
                                 f"LANG.safetensors, from {MADE_BY[need]})")
    if "random" in levers and not any(config.has_folder(f) for f in FAMILIES):
        raise ValueError("--levers random draws random neurons, features and directions like the language's own: "
                         "give --neurons-dir, --features-dir and / or --vectors-dir")
    for family in FAMILIES:
        flag, folder = f"--{family}-dir", config.folder(family)
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"{flag} {folder} is not a folder (of LANG.safetensors files)")
    pairs = config.pairs()
    for family, files in unit_files(config, pairs).items():
        missing = [lang for lang, path in files.items() if not path.is_file()]
        if missing:
            folder, made = config.folder(family), MADE_BY[family]
            raise FileNotFoundError(
                f"no language {family} for {', '.join(missing)} in {folder} (expected "
                f"{', '.join(str(files[m]) for m in missing)}): make them with {made}, or leave those languages "
                "out of --targets" + (" / --sources (a swap mode removes the source's vector)" if family == "vectors"
                                      else ""))
    sources = list(dict.fromkeys(s for s, _ in pairs))
    for item_set in config.items:
        for source in sources:
            problem = prompt_problem(ITEM_SETS[item_set], source)
            if problem:
                raise ValueError(f"--items {item_set} with source {source}: {problem}")
    if families(config)["neurons"] or families(config)["features"]:
        given = parse_corpus_specs(config.stats_corpus, "--stats-corpus") if config.stats_corpus else {}
        targets = list(dict.fromkeys(t for _, t in pairs))
        stray = [lang for lang in given if lang not in targets]
        if stray:
            raise ValueError(f"--stats-corpus names {', '.join(stray)}, which {'is' if len(stray) == 1 else 'are'} "
                             f"not a target ({', '.join(targets)}): the mean activations are the targets'")
        lacking = [t for t in targets if t not in given and t not in DATASET_BUILD_CODES]
        if lacking:
            raise ValueError(f"no built-in texts in {', '.join(lacking)} for the neurons' mean activations: give "
                             "--stats-corpus LANG=SPEC for " + ", ".join(lacking))
    elif config.stats_corpus:
        raise ValueError("--stats-corpus is read for the neuron and feature levers only (neurons, features, random "
                         "with --neurons-dir or --features-dir)")


# ---- items ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairItems:
    """The items of one (source, target) pair, in order (item sets as given, dev before test),
    with each one's split, and per text item set the pool its items' ``match`` is measured in."""

    items: tuple[ParallelItem, ...]
    splits: tuple[str, ...]
    pools: Mapping[str, ReferencePool] = field(default_factory=dict)

    def select(self, item_set: str, split: str) -> list[int]:
        """Positions of the items of ``item_set`` in ``split``."""
        return [i for i, (it, s) in enumerate(zip(self.items, self.splits)) if it.item_set == item_set and s == split]


def split_sizes(limit: int, dev_fraction: float) -> tuple[int, int]:
    """How many of ``limit`` items go to dev and to test (at least one each)."""
    dev = max(1, min(limit - 1, round(limit * dev_fraction)))
    return dev, limit - dev


def pair_items(config: ControlConfig, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], PairItems]:
    """Every pair's items: per item set the first dev and test items (``limit`` split by
    ``dev_fraction``), an error naming the pair when a split has none; with ``--text-shots 1``
    each text item carries its example (:func:`with_example`); per text item set the pool
    (:func:`reference_pool`)."""
    n_dev, n_test = split_sizes(config.limit, config.dev_fraction)
    out = {}
    for source, target in pairs:
        items: list[ParallelItem] = []
        splits: list[str] = []
        pools: dict[str, ReferencePool] = {}
        for item_set in config.items:
            loaded = load_items(item_set, source, target, data=config.data)
            mine: list[ParallelItem] = []
            for split, n in (("dev", n_dev), ("test", n_test)):
                chosen = items_of_split(loaded, split, config.dev_fraction, limit=n)
                if not chosen:
                    raise ValueError(f"{item_set} has no {split} item for {source} -> {target} ({len(loaded)} items "
                                     "in all): use more data or another --dev-fraction")
                mine += chosen
                splits += [split] * len(chosen)
            if ITEM_SETS[item_set] == "text":
                example = None
                if config.text_shots:
                    example = example_item(loaded, mine, item_set, source, target)
                    mine = [with_example(it, example) for it in mine]
                pools[item_set] = reference_pool(loaded, mine, example)
            items += mine
        out[(source, target)] = PairItems(tuple(items), tuple(splits), pools)
    return out


def example_item(loaded: Sequence[ParallelItem], chosen: Sequence[ParallelItem], item_set: str, source: str,
                 target: str) -> ParallelItem:
    """The example of a text item set's prompts: the last item of the data that is neither a dev
    nor a test item (nor of their paragraphs or problems)."""
    groups = {it.group for it in chosen}
    spare = [it for it in loaded if it.group not in groups]
    if not spare:
        raise ValueError(f"{item_set} has no item left for the prompts' example for {source} -> {target} "
                         f"({len(loaded)} items, {len(chosen)} used): use a smaller --limit or --text-shots 0")
    return spare[-1]


def with_example(item: ParallelItem, example: ParallelItem) -> ParallelItem:
    """``item`` with the source sentence of ``example`` among its fields (the prompt shows it
    restated as it is: ``mwork.experiments.control.prompts``)."""
    return dataclasses.replace(item, fields={**item.fields, "example": example.fields["text"]},
                               meta={**item.meta, "example": example.id})


def reference_pool(loaded: Sequence[ParallelItem], chosen: Sequence[ParallelItem],
                   example: ParallelItem | None) -> ReferencePool:
    """The pool of a pair's text item set: its dev and test items, the example, then the data's
    other items in order, :data:`~mwork.control.meaning.POOL_SIZE` in all (at least those)."""
    first = [*chosen, *([example] if example is not None else [])]
    ids = {it.id for it in first}
    rest = [it for it in loaded if it.id not in ids]
    return ReferencePool.of([*first, *rest[:max(0, POOL_SIZE - len(first))]])


def items_digest(pair: PairItems) -> str:
    """What the items of a pair are (ids, splits, fields, references)."""
    return digest([{"split": s, **it.to_dict()} for it, s in zip(pair.items, pair.splits)])[:16]


# ---- unit sets --------------------------------------------------------------------------------


def load_unit_sets(files: Mapping[str, Mapping[str, Path]]) -> tuple[dict[str, NeuronSet], dict[str, Directions]]:
    """The neuron sets and language vectors of :func:`unit_files` (no model needed)."""
    from mwork.neurons.neuronset import NeuronSet
    from mwork.units.directions import Directions

    neurons = {lang: NeuronSet.load(path) for lang, path in files["neurons"].items()}
    vectors = {lang: _load_kind(path, Directions, "language vectors", "--vectors-dir", "mwork vectors")
               for lang, path in files["vectors"].items()}
    return neurons, vectors


def load_feature_sets(files: Mapping[str, Mapping[str, Path]]) -> dict[str, Dictionary]:
    """The language feature sets of :func:`unit_files` (no model needed)."""
    from mwork.units.dictionary import Dictionary

    return {lang: _load_kind(path, Dictionary, "dictionary features", "--features-dir", MADE_BY["features"])
            for lang, path in files.get("features", {}).items()}


def _load_kind(path: Path, kind: type, noun: str, flag: str, made_by: str) -> Any:
    from mwork.units.files import load_units

    units = load_units(path)
    if not isinstance(units, kind):
        raise ValueError(f"{path} holds {type(units).__name__}, not {noun}: give {flag} the folder {made_by} wrote")
    return units


def units_digest(units: Any) -> str:
    """Content digest of a unit set: a NeuronSet's masks and statistics, directions' tensors, a
    dictionary subset's features, codebooks and statistics."""
    from mwork.fingerprints import neurons_digest
    from mwork.neurons.neuronset import NeuronSet
    from mwork.neurons.statistics import statistics_digest

    if isinstance(units, NeuronSet):
        return digest({"neurons": neurons_digest(units), "statistics": statistics_digest(units)})[:16]
    h = hashlib.sha256(f"{units.site}|{units.layers.tolist()}".encode())
    if hasattr(units, "books"):  # dictionary features: which, their codebooks, and their statistics
        h.update(f"{units.digest()}|{sorted(units.stats)}".encode())
        tensors = [units.stats[k] for k in sorted(units.stats)]
    else:
        tensors = [units.write, units.read]
    for t in tensors:
        h.update(t.to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def language_seed(seed: int, lang: str) -> int:
    """The seed of a language's random baseline: ``seed`` and the language, so that the random
    directions added for the target and removed for the source differ."""
    return int.from_bytes(hashlib.sha256(f"mwork-control:{seed}:{lang}".encode()).digest()[:4], "big")


def _has_mean(ns: NeuronSet) -> bool:
    for kind in ns.kinds:
        values = ns.statistic("mean", kind)
        if ns.count(kind) and (values is None or not bool(torch.isfinite(values[ns.masks[kind]]).all())):
            return False
    return True


def statistics_texts(config: ControlConfig, targets: Sequence[str]) -> dict[str, tuple[list[str], dict[str, Any]]]:
    """Each target's texts for the neurons' mean activations (``--stats-corpus LANG=SPEC``, else
    ``builtin:LANG``; the first ``stats_docs``) and what they are; read before the model loads."""
    from mwork.texts import is_empty, parse_corpus_specs, read_corpora

    given = parse_corpus_specs(config.stats_corpus, "--stats-corpus") if config.stats_corpus else {}
    specs = {lang: given.get(lang, f"builtin:{lang}") for lang in targets}
    texts, info = read_corpora(specs, max_docs=config.stats_docs)
    for lang, docs in texts.items():
        if all(is_empty(t) for t in docs):
            raise ValueError(f"--stats-corpus {lang}={specs[lang]} has no text to measure the mean activations on")
    return {lang: (texts[lang], info[lang]) for lang in targets}


def neuron_statistics(model: torch.nn.Module, tokenizer: Any, config: ControlConfig, neurons: Mapping[str, NeuronSet],
                      texts: Mapping[str, tuple[list[str], dict[str, Any]]], *, cache: Path, random: bool
                      ) -> tuple[dict[str, NeuronSet], dict[str, NeuronSet]]:
    """Each target's set with its mean activation on the target's ``texts`` (measured here when it
    carries none) and, with ``random``, a random set of the same count per layer and kind with
    its own (one pass per target; cached under ``cache``)."""
    from mwork.neurons.neuronset import NeuronSet
    from mwork.neurons.statistics import MeasureOptions, add_statistics

    steered: dict[str, NeuronSet] = {}
    randoms: dict[str, NeuronSet] = {}
    for lang, ns in neurons.items():
        ns.check_compatible(model)
        todo = {} if _has_mean(ns) else {"set": ns}
        if random:
            todo["random"] = ns.random_like(seed=language_seed(config.seed, lang), exclude=ns)

        def measure(sets: dict[str, NeuronSet], lang: str = lang) -> dict[str, NeuronSet]:
            docs, info = texts[lang]
            options = MeasureOptions(config.stats_max_length, config.batch_size, config.progress)
            made = add_statistics(model, tokenizer, list(sets.values()), docs, ("mean",), language=lang,
                                  corpus={"spec": info.get("spec"), "max_docs": config.stats_docs}, options=options)
            return dict(zip(sets, made))

        measured = _cached_means(model, config, lang, texts[lang][1], todo, measure, NeuronSet.load,
                                 cache=cache, tag="")
        steered[lang] = measured.get("set", ns)
        if random:
            randoms[lang] = measured["random"]
    return steered, randoms


def _cached_means(model: torch.nn.Module, config: ControlConfig, lang: str, info: Mapping[str, Any],
                  todo: Mapping[str, Any], measure: Any, load: Any, *, cache: Path, tag: str) -> dict[str, Any]:
    """``measure(todo)`` (the sets with their mean on ``lang``'s texts), kept under ``cache`` by
    the content of the model, the sets, the texts and the window length; read back on a rerun."""
    from mwork.files import child_path, make_folder
    from mwork.fingerprints import model_digest

    if not todo:
        return {}
    key = digest({"model": model_digest(model), "sets": {k: units_digest(v) for k, v in todo.items()},
                  "texts": info["sha256"], "max_length": config.stats_max_length})[:16]
    paths = {k: child_path(make_folder(cache), f"{lang}-{key}-{tag}{k}", ".safetensors") for k in todo}
    if all(p.is_file() for p in paths.values()):
        return {k: load(p) for k, p in paths.items()}
    measured = measure(dict(todo))
    for k, p in paths.items():
        measured[k].save(p)
    return measured


def feature_statistics(model: torch.nn.Module, tokenizer: Any, config: ControlConfig, features: Mapping[str, Dictionary],
                       texts: Mapping[str, tuple[list[str], dict[str, Any]]], *, cache: Path, random: bool
                       ) -> tuple[dict[str, Dictionary], dict[str, Dictionary]]:
    """As :func:`neuron_statistics` for dictionary features: each target's set with its mean
    activation on the target's ``texts`` (measured here when it carries none) and, with
    ``random``, as many other features of the same dictionaries per layer (seeded) with theirs
    (the one corpus pass, ``mwork.corpus_pass.unit_request``; cached under ``cache``)."""
    from mwork.units.dictionary import Dictionary

    steered: dict[str, Dictionary] = {}
    randoms: dict[str, Dictionary] = {}
    for lang, units in features.items():
        units.check_compatible(model)
        todo = {} if "mean" in units.stats else {"set": units}
        if random:
            todo["random"] = units.random_like(language_seed(config.seed, lang), exclude=units)

        def measure(sets: dict[str, Dictionary], lang: str = lang) -> dict[str, Dictionary]:
            return {k: with_feature_means(model, tokenizer, v, texts[lang][0], config) for k, v in sets.items()}

        measured = _cached_means(model, config, lang, texts[lang][1], todo, measure, Dictionary.load,
                                 cache=cache, tag="features-")
        steered[lang] = measured.get("set", units)
        if random:
            randoms[lang] = measured["random"]
    return steered, randoms


def with_feature_means(model: torch.nn.Module, tokenizer: Any, units: Dictionary, docs: Sequence[str],
                       config: ControlConfig) -> Dictionary:
    """``units`` with each feature's mean activation over ``docs``' tokens as its ``mean``."""
    from mwork.corpus_pass import PassOptions
    from mwork.neurons.methods.stats import FEATURES, StatsRequest, collect_statistics
    from mwork.units.dictionary import Dictionary

    stats = collect_statistics(model, tokenizer, {"texts": list(docs)}, StatsRequest(site_means=(FEATURES,)),
                               PassOptions(max_length=config.stats_max_length, batch_size=config.batch_size),
                               progress=config.progress, units=units)
    mean = stats.language_means(FEATURES)["texts"].reshape(-1)
    return Dictionary(units.books, site=units.site, layers=units.layers.tolist(), features=units.features.tolist(),
                      read_site=units.read_site, stats={**units.stats, "mean": mean}, meta=units.meta)
