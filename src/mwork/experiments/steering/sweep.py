"""The steering sweep: prompts -> generations for every strength, with the target language's
neurons and with random neurons, against the unsteered model -> ``steer.csv``,
``generations.jsonl``, ``steer.png``.

Cells, one per (method, seed, strength) plus the unsteered model, are kept in ``cells.jsonl``
through ``mwork.experiments.kernel`` (under ``SteerKey``; content-keyed: the model's weights, the sets
and their statistics, the prompts and generation settings), so a rerun computes only what is
missing or changed, and a folder holding a sweep with other settings is refused. A strength at
which the edit is the identity (0 in ``set`` / ``add``, 1 in ``scale``) is the unsteered model
itself: its rows reuse the unsteered cell (no neuron is switched off either).

Random baselines (``method="random"``, one per seed): neurons drawn with ``random_like`` (the same
count per layer and kind, never the set's own), steered with *their* statistics on the same corpus;
with ``off``, a random set of the off set's size is switched off instead of it.

Refused before any generation: a set with no neuron (``require_neurons``, the rule of eval and ppl
too), an ``off`` set holding every steered neuron (``mwork.steering.steered_and_off``). Warned: a
partial overlap with ``off``, a set whose recorded language is not the target. A row whose
generations met non-finite logits (``mwork.numerics``) is not measured: empty measures, its
``nonfinite`` count, and a warning.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from mwork.config import digest, fingerprint
from mwork.experiments.kernel import Cell, CellInputs, CellKey, CellStore, execute
from mwork.files import make_folder
from mwork.experiments.steering.generation import continuation_nll, generate_measured
from mwork.experiments.steering.metrics import aggregate, is_nonfinite, item_metrics
from mwork.experiments.steering.prompts import SteerPrompt, prompts_record, source_language
from mwork.experiments.steering.vocab import vocab_languages
from mwork.fingerprints import model_digest, neurons_digest
from mwork.intervene import parse_kinds, parse_layers
from mwork.neurons.neuronset import NeuronSet, require_neurons
from mwork.numerics import NONFINITE
from mwork.neurons.statistics import MeasureOptions, add_statistics, statistics_digest
from mwork.sentence_langid import default_identifier
from mwork.steering import NEEDS_STATISTIC, Steering, is_identity, steered_and_off

if TYPE_CHECKING:
    from mwork.experiments.steering.config import SteerConfig

SPECIFIC, RANDOM, UNSTEERED = "specific", "random", "unsteered"


def say(message: str) -> None:
    print(f"[mwork steer] {message}", file=sys.stderr, flush=True)


def _variant(method: str, seed: int | None) -> str:
    return method if seed is None else f"{method}{seed}"


@dataclass(frozen=True)
class SteerKey(CellKey):
    """What one steering cell measures: the ``source`` prompts' generations with the ``variant``
    set (``specific`` or ``random<seed>``) steered toward ``target`` at ``strength``; the
    unsteered cell has only ``source``."""

    strength: float | None
    variant: str
    target: str | None
    source: str

    @classmethod
    def original(cls, source: str) -> "SteerKey":
        return cls(None, UNSTEERED, None, source)

    @classmethod
    def from_older(cls, value: Any) -> "SteerKey | None":
        """The keys of mwork before named fields: the grid's key, its region "strength=1.0"."""
        if not isinstance(value, dict) or set(value) != {"region", "variant", "neurons_of", "eval_lang"}:
            return None
        if value["region"] == "original":
            return cls.original(value["eval_lang"])
        name, _, strength = str(value["region"]).partition("=")
        try:
            return cls(float(strength), value["variant"], value["neurons_of"], value["eval_lang"]) \
                if name == "strength" else None
        except ValueError:
            return None

    def inputs_of(self) -> tuple[str | None, str]:
        return self.target, self.source


def _is_unsteered(mode: str, strength: float, off: NeuronSet | None) -> bool:
    """Whether this cell is the unsteered model: an identity edit and nothing switched off."""
    return is_identity(mode, strength) and (off is None or off.count() == 0)


def _has_stat(ns: NeuronSet, stat: str) -> bool:
    for kind in ns.kinds:
        values = ns.statistic(stat, kind)
        if ns.count(kind) and (values is None or not bool(torch.isfinite(values[ns.masks[kind]]).all())):
            return False
    return True


def _lang(code: str) -> str:
    return code.strip().lower().replace("_", "-").split("-")[0]


def language_mismatch(neurons: NeuronSet, target: str) -> str | None:
    """A sentence when the steered set records another language than ``target`` (its metadata's
    ``language``): the rows are labelled with the target either way, so the user is told."""
    lang = neurons.meta.get("language")
    if not isinstance(lang, str) or not lang.strip() or _lang(lang) == _lang(target):
        return None
    return (f"the steered NeuronSet is {lang}'s (its metadata records language {lang!r}), but the target is "
            f"{target!r}: the rows are labelled target {target}; steer with {target}'s set, or give --target {lang}")


@dataclass(frozen=True)
class SteerSets:
    """What a sweep steers, loaded (its settings are a ``SteerConfig``): the target language's
    set, a set switched off at the same time (or None), and the target-language texts the
    statistics are measured on when a set carries none (or None) with their record
    (``corpus_info``, kept with the statistics)."""

    neurons: NeuronSet
    off: NeuronSet | None = None
    corpus: Sequence[str] | None = None
    corpus_info: Any = None


def steer_scope(config: SteerConfig, model: torch.nn.Module) -> tuple[list[int] | None, list[str] | None]:
    """The layers and kinds a sweep steers (None: all): ``config.layers``, or the layers of
    ``config.region`` (U and G given or estimated from ``config.lens``), and ``config.kinds``."""
    from mwork.models.adapters import get_adapter

    return _region_layers(config, get_adapter(model).num_layers), parse_kinds(config.kinds)


def _region_layers(config: SteerConfig, num_layers: int) -> list[int] | None:
    if config.region == "all":
        return parse_layers(config.layers)
    from mwork.layer_regions import region_layers
    from mwork.lens.regions import resolve_regions

    u, g, _ = resolve_regions(num_layers, config.lens, config.understanding, config.generation)
    layers = region_layers(num_layers, u, g)[config.region]
    if not layers:
        raise ValueError(f"the {config.region} region is empty with U={u}, G={g}")
    return list(layers)


def _keep_extra(restricted: NeuronSet, full: NeuronSet) -> NeuronSet:
    return NeuronSet(restricted.masks, dict(full.meta, restricted=restricted.meta.get("restricted")), full.extra)


def prepare_sets(model: torch.nn.Module, tokenizer: Any, sets: SteerSets, config: SteerConfig, *,
                 cache_dir: Path | None = None) -> tuple[dict[str, tuple[NeuronSet, NeuronSet | None]], NeuronSet | None]:
    """The steered and switched-off sets of every method (``{"specific": (set, off), "random0": ...}``),
    restricted to the layers and kinds of ``config`` (``steer_scope``), with the statistic
    ``config.stat`` where ``config.mode`` needs one (measured on ``sets.corpus``, cached under
    ``cache_dir``); and the full set with its statistics when they were measured here (else None)."""
    neurons, off, corpus = sets.neurons, sets.off, sets.corpus
    mode, stat, seeds = config.mode, config.stat, config.seeds
    layers, kinds = steer_scope(config, model)
    restricted = layers is not None or kinds is not None
    spec = _keep_extra(neurons.restrict(layers, kinds), neurons) if restricted else neurons
    off_spec = (off.restrict(layers, kinds) if restricted else off) if off is not None else None
    require_neurons(spec, "steer", restricted=restricted)
    both = steered_and_off(spec, off_spec)
    if both:
        warnings.warn(f"{both} of the {spec.count()} steered neurons are also in --off: they are switched off, "
                      "not steered", stacklevel=2)
    methods: dict[str, tuple[NeuronSet, NeuronSet | None]] = {SPECIFIC: (spec, off_spec)}
    for s in seeds:
        r_off = off_spec.random_like(seed=10_000 + s, exclude=off_spec) if off_spec is not None else None
        methods[_variant(RANDOM, s)] = (spec.random_like(seed=s, exclude=spec), r_off)
        if r_off is not None and (methods[_variant(RANDOM, s)][0] - r_off).count() == 0:
            raise ValueError(f"the random baseline of seed {s} drew only neurons that its random off set switches "
                             "off: its steering would be cancelled; choose other --seeds")
    measured_full = None
    if mode in NEEDS_STATISTIC:
        need = {name: ns for name, (ns, _) in methods.items() if not _has_stat(ns, stat)}
        if need:
            if corpus is None:
                which = "the set carries no " + stat if SPECIFIC in need else "the random baselines need theirs"
                raise ValueError(f"mode {mode!r} needs the {stat} activation of every steered neuron on the target "
                                 f"language and {which}: give target-language texts (--corpus / corpus=)")
            names = [n for n in need]
            measured = [neurons if n == SPECIFIC else need[n] for n in names]
            key = digest({"model": model_digest(model), "sets": [neurons_digest(s) for s in measured],
                          "corpus": digest(list(corpus)), "stat": stat, "max_length": config.stats_max_length})[:16]
            cached = _read_stats(cache_dir, key, names)
            if cached is None:
                stats = sorted({stat, "mean"})
                say(f"measuring the target language's {', '.join(stats)} activations of {', '.join(names)} on "
                    f"{len(corpus)} documents (one pass)")
                options = MeasureOptions(max_length=config.stats_max_length, batch_size=config.batch_size,
                                         progress=config.progress)
                cached = dict(zip(names, add_statistics(model, tokenizer, measured, corpus, stats,
                                                        language=config.target, corpus=sets.corpus_info,
                                                        options=options)))
                _write_stats(cache_dir, key, cached)
            for name, with_stats in cached.items():
                if name == SPECIFIC:
                    measured_full = with_stats
                    ns = _keep_extra(spec, with_stats) if restricted else with_stats
                    methods[name] = (ns, methods[name][1])
                else:
                    methods[name] = (with_stats, methods[name][1])
    return methods, measured_full


def _read_stats(folder: Path | None, key: str, names: Sequence[str]) -> dict[str, NeuronSet] | None:
    if folder is None or not all((folder / f"{key}-{n}.safetensors").is_file() for n in names):
        return None
    try:
        return {n: NeuronSet.load(folder / f"{key}-{n}.safetensors") for n in names}
    except (ValueError, OSError):
        return None


def _write_stats(folder: Path | None, key: str, sets: Mapping[str, NeuronSet]) -> None:
    if folder is not None:
        for name, ns in sets.items():
            ns.save(folder / f"{key}-{name}.safetensors")


def run_steer_sweep(model: torch.nn.Module, tokenizer: Any, sets: SteerSets, prompts: Sequence[SteerPrompt],
                    config: SteerConfig, *, notes: Sequence[str] = ()) -> dict[str, Any]:
    """Run the sweep (module docstring) that ``config`` describes on ``sets`` and ``prompts``, and
    write its files under ``config.out``; returns ``{"rows", "unsteered", "generations", "info"}``.
    ``config.neurons``, ``.off``, ``.corpus``, ``.prompts`` and ``.model`` are not read here (the
    loaded ``sets``, ``prompts`` and ``model`` are used; ``run_steer`` loads them), only recorded
    with the results. Every input is checked before any generation."""
    from mwork.experiments.steering.report import write_outputs

    neurons, off = sets.neurons, sets.off
    target, mode, stat, positions = config.target, config.mode, config.stat, config.positions
    strengths, max_new_tokens, batch_size = list(config.strengths), config.max_new_tokens, config.batch_size
    progress = config.progress
    settings = {k: v for k, v in fingerprint(config).items() if k not in ("target", "mode", "stat", "positions",
                                                                          "max_new_tokens", "batch_size", "layers",
                                                                          "kinds", "strengths", "seeds")}
    if not prompts:
        raise ValueError("no prompts to generate from")
    neurons.check_compatible(model)
    if off is not None:
        off.check_compatible(model)
    notes = list(notes)
    mismatch = language_mismatch(neurons, target)
    if mismatch:
        warnings.warn(mismatch, stacklevel=2)
        notes.append(mismatch)
    layers, kinds = steer_scope(config, model)
    out = make_folder(config.out)
    vocab = vocab_languages(tokenizer, progress=progress)
    if vocab.code(target) is None:
        raise ValueError(f"the token-level identifier labels no token of this vocabulary as {target!r}: use a "
                         f"language code it knows ({', '.join(vocab.names[1:])})")
    identifier = default_identifier()
    methods, measured = prepare_sets(model, tokenizer, sets, config, cache_dir=out / "statistics")
    if measured is not None:
        measured.save(out / "neurons.safetensors")
    source = source_language(prompts)
    recorded = {"target": target, "source": source, "mode": mode, "stat": stat, "positions": positions,
                "layers": None if layers is None else list(layers), "kinds": None if kinds is None else list(kinds),
                "max_new_tokens": max_new_tokens, "batch_size": batch_size, "sentence_langid": identifier.settings(),
                "token_langid": vocab.settings, **settings}
    sets_key = {name: {"steer": neurons_digest(ns), "stats": statistics_digest(ns) if mode in NEEDS_STATISTIC else None,
                       "off": neurons_digest(o) if o is not None else None} for name, (ns, o) in methods.items()}
    inputs = CellInputs(model_digest(model), {target: digest(sets_key)},
                        {source: digest({"prompts": prompts_record(prompts), "max_new_tokens": max_new_tokens})})
    plan = [Cell(SteerKey.original(source))]
    for name, (_, o) in methods.items():
        for s in strengths:
            if not _is_unsteered(mode, s, o):
                plan.append(Cell(SteerKey(float(s), name, target, source), lever=(name, s)))
    store = CellStore(out / "cells.jsonl", recorded, inputs, {c.key: inputs.for_cell(c.key) for c in plan},
                      key_type=SteerKey, name="the steering sweep", label="steer")
    rendered = [p.rendered for p in prompts]
    start = time.time()

    def measure(cell: Cell) -> dict[str, Any]:
        name, strength = cell.lever or (None, None)
        if name is None:
            gens = generate_measured(model, tokenizer, rendered, vocab, target, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, progress=False)
            count = 0
        else:
            ns, o = methods[name]
            with Steering(model, ns, mode, strength, stat=stat, positions=positions, off=o):
                gens = generate_measured(model, tokenizer, rendered, vocab, target, max_new_tokens=max_new_tokens,
                                         batch_size=batch_size, progress=False)
            count = ns.count()
        scores = continuation_nll(model, tokenizer, rendered, [g["ids"] for g in gens], batch_size=batch_size)
        items = []
        for p, g, (nll, n) in zip(prompts, gens, scores):
            items.append({"prompt_id": p.id, "prompt": p.text, "lang": p.lang, "text": g["text"], "ids": g["ids"],
                          "mass_first": g["mass_first"], "mass_mean": g["mass_mean"], "rank_first": g["rank_first"],
                          "lang_rank_first": g["lang_rank_first"], "lang_rank_mean": g["lang_rank_mean"],
                          "nonfinite": g["nonfinite"] or not math.isfinite(nll),
                          "nll": nll if math.isfinite(nll) else None, "scored": n,
                          **item_metrics(g, p, target, vocab, identifier)})
        rate = sum(it["detected_language"] == target for it in items) / len(items)
        return {"score": rate, "n": len(items), "metric": "target_rate", "higher_is_better": True, "off": count,
                "items": items}

    cells = execute(plan, store, measure, progress=progress)
    base = cells[SteerKey.original(source)]
    rows, generations = [], []
    detection = methods[SPECIFIC][0].meta.get("method", "plnd")  # which detection method made the set
    for name, (ns, o) in methods.items():
        method, seed = (SPECIFIC, None) if name == SPECIFIC else (RANDOM, int(name[len(RANDOM):]))
        for s in strengths:
            same = _is_unsteered(mode, s, o)
            cell = base if same else cells[SteerKey(float(s), name, target, source)]
            rows.append({"target": target, "source": source, "method": method, "detection": detection,
                         "seed": seed, "strength": s,
                         "mode": mode, "stat": stat, "positions": positions, "neurons": ns.count(),
                         "off": 0 if same else (o.count() if o is not None else 0),
                         **aggregate(cell["items"], target)})
            for it, b in zip(cell["items"], base["items"]):
                generations.append({"prompt": it["prompt"], "prompt_id": it["prompt_id"], "strength": s,
                                    "method": method, "seed": seed, "text": it["text"],
                                    "detected_language": it["detected_language"], "lid_score": it["lid_score"],
                                    "token_target_share": it["token_target_share"], "f1": it["f1"],
                                    "nonfinite": is_nonfinite(it),
                                    "unsteered_text": b["text"], "unsteered_language": b["detected_language"]})
    unsteered = {"target": target, "source": source, **aggregate(base["items"], target)}
    overflowed = [f"{_variant(r['method'], r['seed'])} at {r['strength']:g}" for r in rows if r["nonfinite"]]
    if unsteered["nonfinite"]:
        overflowed.insert(0, "the unsteered model")
    if overflowed:
        warnings.warn(f"{NONFINITE} in {len(overflowed)} row{'s' if len(overflowed) > 1 else ''} "
                      f"({', '.join(overflowed[:6])}{', ...' if len(overflowed) > 6 else ''}): their measures are "
                      "left empty in steer.csv, the column nonfinite counts the generations; use smaller strengths",
                      stacklevel=2)
    info = {"settings": recorded, "notes": list(notes), "elapsed_s": time.time() - start,
            "sets": {name: {"neurons": ns.count(), "off": o.count() if o is not None else 0}
                     for name, (ns, o) in methods.items()},
            "statistics": (methods[SPECIFIC][0].meta.get("statistics") if mode in NEEDS_STATISTIC else None)}
    result = {"rows": rows, "unsteered": unsteered, "generations": generations, "info": info}
    write_outputs(out, result)
    return result
