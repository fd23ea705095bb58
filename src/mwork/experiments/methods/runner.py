"""The comparison end to end: texts -> detection (cached scores) -> equal-size sets -> cells
(content-keyed, resumable) -> tables and plots.

For every method, size and language l, l's set is the ``n`` best neurons of the method's scores
(``LanguageScores.top``), n the same for every method: ``size`` of all the model's neurons
(FFN + Q + K + V, every layer). Every method draws from its own kinds (LAPE: FFN only; PLND
and AP: FFN, Q, K, V unless ``kinds`` restricts them), so the total is equal while the counts
per layer and kind differ between methods; each random baseline matches its own set's counts
per layer and kind (``NeuronSet.random_like``).

Cells: every language's held-out perplexity with each language's set switched off (zeroed, or
mean-patched: ``patch.MeanPatch``) -- the full language x language matrix -- and with each
seed's random set on the set's own language, plus the unmodified model on every language.
They are kept in ``cells.jsonl`` (``mwork.experiments.kernel``: keyed by the content
of the model, the set, the intervention's values and the held-out texts; a torn last line is
dropped and recomputed), so a rerun computes only what is missing, and a resumed experiment
equals an uninterrupted one.

Language identification (``langid``): one pass over the held-out texts measures each document's
firing of every set's units (cached in ``scores/doc_firing.safetensors`` by content); each
method, size and variant (its sets, each seed's random sets) then predicts every text's language,
beside fastText on the same texts (``langid.csv``).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from mwork.config import digest, fingerprint
from mwork.experiments.kernel import Cell, CellInputs, CellStore, execute
from mwork.files import make_folder
import mwork.experiments.methods.tables as tables  # the module, not the package (whose __init__ imports this)
from mwork.experiments.methods.cost import measure_costs
from mwork.corpus_pass import PassOptions
import mwork.experiments.methods.langid as langid
from mwork.experiments.methods.detection import Detection, ScoreCache, run_detection, run_feature_detection
from mwork.experiments.methods.patch import FEATURES, MEAN_RULE, MeanPatch
from mwork.experiments.methods.report import without_units, write_outputs
from mwork.experiments.methods.units import (NEURONS, Arm, aligned_means, arms_of, dictionary_digest, random_like,
                                             units_digest)
from mwork.fingerprints import model_digest
from mwork.intervene import deactivate
from mwork.models.adapters import get_adapter
from mwork.neurons.methods import get_detection_method
from mwork.neurons.methods.run import read_corpora
from mwork.texts import EVALUATION_ARTICLES, is_empty

if TYPE_CHECKING:
    from mwork.experiments.methods.config import MethodsConfig


def _means_digest(means: Mapping[str, torch.Tensor] | None) -> str | None:
    if means is None:
        return None
    h = hashlib.sha256()
    for kind in sorted(means):
        h.update(kind.encode())
        h.update(means[kind].to(torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest()


def _refuse_overlap(detection: Mapping[str, Sequence[str]], heldout: Mapping[str, Sequence[str]]) -> None:
    for lang in detection:
        shared = {d for d in detection[lang] if not is_empty(d)} & {d for d in heldout[lang] if not is_empty(d)}
        if shared:
            raise ValueError(f"{len(shared)} held-out text(s) of {lang} are also detection texts; held-out texts must "
                             "be new to the detection (e.g. XQuAD articles 0:24 for detection, 24:48 held out)")


def _check_sizes(config: MethodsConfig, model: torch.nn.Module, arms: Sequence[Arm]) -> dict[str, int]:
    """Each size as a count (of the model's neurons); refused where a method's neurons or a
    dictionary's features are fewer than that count (every kind's sets have the same count)."""
    adapter = get_adapter(model)
    total = adapter.total_neurons()
    counts = config.size_counts(total)
    per_kind = adapter.neuron_counts()
    for m in dict.fromkeys(a.method for a in arms if a.units == NEURONS):
        kinds = get_detection_method(m).kinds(config.method_config(m))
        available = adapter.num_layers * sum(per_kind[k] for k in kinds)
        too_big = [s for s, n in counts.items() if n > available]
        if too_big:
            raise ValueError(f"size {too_big[0]} is {counts[too_big[0]]} neurons, but {m} draws from its "
                             f"{available} {'+'.join(kinds)} neurons; choose smaller sizes")
    for kind in config.unit_kinds():
        if kind.is_neurons:
            continue
        kind.dictionary.check_compatible(model)
        too_big = [s for s, n in counts.items() if n > kind.dictionary.count()]
        if too_big:
            raise ValueError(f"size {too_big[0]} is {counts[too_big[0]]} units (a size counts the model's neurons, "
                             f"and every unit kind gets the same count), but the dictionary of --units {kind.label} "
                             f"has {kind.dictionary.count()} features; choose smaller sizes or a wider dictionary")
    return counts


def run_methods(config: MethodsConfig, *, model: torch.nn.Module | None = None, tokenizer: Any = None,
                progress: bool = True) -> dict[str, Any]:
    """The comparison ``config`` describes (what ``mwork experiment methods`` runs)."""
    from mwork.models.loading import load_model

    if model is None:
        model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
    elif tokenizer is None:
        raise ValueError("pass the model's tokenizer with the model")
    return run_methods_experiment(model, tokenizer, config, progress=progress)


def run_methods_experiment(model: torch.nn.Module, tokenizer: Any, config: MethodsConfig, *,
                           progress: bool = True) -> dict[str, Any]:
    """Run the comparison on a loaded model; write the outputs under ``config.out``; return them."""
    from mwork.tasks.runtime import perplexity_evaluator

    start = time.time()
    langs = config.langs
    kinds = config.unit_kinds()
    arms = arms_of(kinds, config.methods)
    counts = _check_sizes(config, model, arms)
    texts, corpus_info = read_corpora(config.corpus_specs(), max_docs=config.max_docs)
    heldout, heldout_info = read_corpora(config.heldout_specs(), default_articles=EVALUATION_ARTICLES)
    if config.limit is not None:
        heldout = {lang: t[:config.limit] for lang, t in heldout.items()}
    _refuse_overlap(texts, heldout)
    out = make_folder(config.out)
    model_key = model_digest(model)
    model_id = config.model
    base_key = {"model": model_key, "texts": {lang: corpus_info[lang]["sha256"] for lang in langs}}
    detections: dict[str, Detection] = {}
    seconds: dict[str, float] = {}
    for kind in kinds:
        methods = [a.method for a in arms if a.units == kind.label]
        if kind.is_neurons:
            detections[kind.label] = run_detection(model, tokenizer, config, texts, out, base_key,
                                                   progress=progress, methods=methods)
        else:
            detections[kind.label] = run_feature_detection(model, tokenizer, config, texts,
                                                           ScoreCache(out / "scores", base_key), kind, methods,
                                                           progress=progress)
        seconds.update(detections[kind.label].seconds)

    sets: dict[tuple[Arm, str, str], Any] = {}
    halves: dict[tuple[Arm, str, str], tuple[Any, Any]] = {}
    for arm in arms:
        scores = detections[arm.units].scores[arm.method]
        for size, n in counts.items():
            for lang in langs:
                sets[arm, size, lang] = scores["all"].top(lang, n, {"model_id": model_id, "size_spec": size})
                if config.stability:
                    halves[arm, size, lang] = (scores["even"].top(lang, n), scores["odd"].top(lang, n))

    evaluator = perplexity_evaluator(model, tokenizer, heldout, config.batch_size, config.eval_max_length)
    evaluation = {lang: evaluator.inputs_digest(lang) for lang in langs}
    means_keys = {label: _means_digest(d.means) for label, d in detections.items()}
    randoms = {(arm, size, lang, seed): random_like(sets[arm, size, lang], seed)
               for arm in arms for size in config.sizes for lang in langs for seed in config.seeds}
    cells: list[Cell] = [Cell(tables.MethodsKey.original(e), None) for e in langs]
    for iv in config.interventions:
        for arm in arms:
            u, m = arm
            for size in config.sizes:
                for lang in langs:
                    ns = sets[arm, size, lang]
                    for e in langs:
                        cells.append(Cell(tables.cell_key(iv, m, size, "set", lang, e, u), ns))
                    for seed in config.seeds:
                        cells.append(Cell(tables.cell_key(iv, m, size, f"random{seed}", lang, lang, u),
                                          randoms[arm, size, lang, seed]))
    set_digests = {}
    expected = {}
    for cell in cells:
        k = cell.key
        iv = k.intervention
        neurons = units_digest(cell.off) if cell.off is not None else None
        if cell.off is not None:
            prefix = "" if k.units == NEURONS else f"{k.units}|"
            set_digests[f"{prefix}{iv}|{k.method}|{k.size}|{k.variant}|{k.neurons_of}"] = neurons
        expected[cell.key] = digest({"model": model_key, "neurons": neurons,
                                     "evaluation": evaluation[cell.key.eval_lang],
                                     "intervention": None if cell.off is None else iv,
                                     "means": means_keys[k.units] if iv == "mean" and cell.off is not None
                                     else None})[:16]
    settings = {k: v for k, v in fingerprint(config).items()
                if k not in ("cost_docs", "cost_repeats") and (k != "units" or config.shows_units)}
    store = CellStore(out / "cells.jsonl", settings, CellInputs(model_key, set_digests, evaluation), expected,
                      key_type=tables.MethodsKey, name="the methods comparison", label="methods")
    full = {kind.label: kind.dictionary for kind in kinds}

    def intervention(cell: Cell) -> Any:
        if cell.key.intervention == "zero":
            return deactivate(model, cell.off)
        means = detections[cell.key.units].means
        if cell.key.units != NEURONS:
            assert means is not None
            means = {FEATURES: aligned_means(full[cell.key.units], means[FEATURES], cell.off)}
        return MeanPatch(model, cell.off, means)

    def measure(cell: Cell) -> dict[str, Any]:
        if cell.off is None:
            res = evaluator(cell.key.eval_lang)
        else:
            with intervention(cell):
                res = evaluator(cell.key.eval_lang)
        return {"score": res["score"], "n": res["n"], "metric": res["metric"],
                "higher_is_better": res["higher_is_better"], "off": 0 if cell.off is None else cell.off.count()}

    cell_start = time.time()
    results = execute(cells, store, measure, progress=progress)
    cell_seconds = time.time() - cell_start
    cost_start = time.time()
    neuron_methods = tuple(a.method for a in arms if a.units == NEURONS)
    cost = measure_costs(model, tokenizer, config, texts, out, model_key, methods=neuron_methods)
    cost_seconds = time.time() - cost_start
    langid_start = time.time()
    tags = {kind.label: kind.tag for kind in kinds}
    families = langid.set_families(sets, randoms, arms=arms, tags=tags, sizes=config.sizes, langs=langs,
                                   seeds=config.seeds)
    sources = {**langid.NEURON_SOURCES, **{k.tag: langid.feature_source(k.dictionary, dictionary_digest(k.dictionary))
                                            for k in kinds if not k.is_neurons}}
    firing = langid.cached_doc_firing(
        model, tokenizer, heldout, families,
        PassOptions("windows", config.eval_max_length, False, config.batch_size), ScoreCache(out / "scores", base_key),
        progress=progress, sources=sources)
    langid_rows = langid.langid_rows(firing, families, langs, langid.fasttext_right(heldout, firing.docs))
    langid_seconds = time.time() - langid_start
    common = dict(interventions=config.interventions, arms=arms, sizes=config.sizes, langs=langs)
    selectivity = tables.selectivity_rows(results, sets, seeds=config.seeds, **common)
    adapter = get_adapter(model)
    info = {"model": config.model, "langs": list(langs), "methods": list(config.methods), "sizes": counts,
            "total_neurons": adapter.total_neurons(), "seeds": list(config.seeds),
            "interventions": list(config.interventions), "mean_rule": MEAN_RULE, "settings": settings,
            "detection_texts": corpus_info, "heldout_texts": heldout_info,
            "original_ppl": {lang: results[tables.MethodsKey.original(lang)]["score"] for lang in langs},
            "method_rules": {m: detections[NEURONS].scores[m]["all"].rule for m in neuron_methods},
            "langid_rules": {"firing": langid.FIRING_RULE, "ties": langid.TIE_RULE, "fasttext": langid.FASTTEXT_RULE,
                             "identifier": langid.identifier_settings()},
            "seconds": {**seconds, "cells (this run)": cell_seconds, "cost (this run)": cost_seconds,
                        "language identification (this run)": langid_seconds,
                        "total (this run)": time.time() - start}}
    if config.shows_units:
        info["units"] = {kind.label: {"arms": [a.method for a in arms if a.units == kind.label],
                                      **({} if kind.is_neurons else
                                         {"features": kind.dictionary.count(), "site": kind.dictionary.site,
                                          "read_site": kind.dictionary.read_site,
                                          "layers": sorted(kind.dictionary.books),
                                          "method_rules": {a.method: detections[kind.label].scores[a.method]["all"].rule
                                                           for a in arms if a.units == kind.label}})}
                         for kind in kinds}
    result = {"info": info, "selectivity": selectivity, "summary": tables.summary_rows(selectivity),
              "matrix": tables.matrix_rows(results, **common),
              "stability": tables.stability_rows(halves, arms=arms, sizes=config.sizes, langs=langs)
              if config.stability else [],
              "agreement": tables.agreement_rows(sets, arms=arms, sizes=config.sizes, langs=langs,
                                                 num_layers=adapter.num_layers)
              if len(arms) > len({a.units for a in arms}) else [],
              "cost": cost, "langid": langid_rows}
    if not config.shows_units:
        result = without_units(result)
    write_outputs(Path(out), result)
    return result
