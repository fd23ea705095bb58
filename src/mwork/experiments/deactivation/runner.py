"""The grid end to end: plan -> cells -> execute -> aggregate -> report.

``run_deactivation_experiment`` takes a loaded model, an evaluation (``lang -> result``; an
``mwork.tasks.runtime.Evaluator`` also fingerprints its examples, so replaced texts are
noticed) and the NeuronSets; ``run_deactivation(DeactivationConfig(...))`` loads all of those
from settings, as ``mwork experiment deactivation`` does.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import torch

from mwork import distributed
from mwork.experiments.deactivation.aggregate import grid_rows, headline_rows, matrix_rows, originals
from mwork.experiments.deactivation.plan import Cell, CellKey, GridSpec, kinds_switched_off, layer_regions, plan_cells
from mwork.experiments.deactivation.report import write_outputs
from mwork.experiments.kernel import CellInputs, CellStore, execute
from mwork.files import child_path
from mwork.intervene import deactivate
from mwork.models.adapters import get_adapter
from mwork.neurons.neuronset import NeuronSet

if TYPE_CHECKING:
    from mwork.experiments.deactivation.config import DeactivationConfig

Evaluate = Callable[[str], Mapping[str, Any]]  # language -> {"score", "n", "metric", "higher_is_better"}


def load_language_sets(folder: str | Path, langs: Iterable[str], model: torch.nn.Module) -> dict[str, NeuronSet]:
    """``<folder>/<lang>.safetensors`` for each language (e.g. the output of ``mwork specific``)."""
    folder = Path(folder)
    sets = {}
    for lang in langs:
        path = child_path(folder, lang, ".safetensors")
        if not path.exists():
            have = sorted(p.stem for p in folder.glob("*.safetensors"))
            raise FileNotFoundError(f"no NeuronSet for {lang!r} at {path}; the folder has: {', '.join(have) or 'none'}")
        sets[lang] = NeuronSet.load(path, model)
    return sets


def run_deactivation_experiment(
    model: torch.nn.Module,
    evaluate: Evaluate,
    neuron_sets: Mapping[str, NeuronSet],
    spec: GridSpec,
    out_dir: str | Path,
    *,
    settings: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the grid ``spec`` describes (languages, English, U and G, seeds, ``matrix``) and the
    headline table; write ``table.csv/.md``, ``headline.csv``, ``results.json`` and
    ``deactivation.png`` under ``out_dir``; return the results.

    ``spec.matrix``: also measure every language with every language's neurons off (all layers),
    written to ``matrix.csv`` (rows: whose neurons are off; the paper's cross-language view).
    ``settings``: recorded with the results and compared on resume (a folder holding another
    experiment is refused). Finished cells are kept in ``cells.jsonl`` under content keys
    (``cells``): a rerun computes only the missing cells and those whose model, NeuronSet or
    evaluation changed. Under torchrun the cells are dealt out over the ranks (``execute``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    adapter = get_adapter(model)
    english, understanding, generation = spec.english, spec.understanding, spec.generation
    missing = [lang for lang in spec.langs if lang not in neuron_sets]
    if missing:
        raise ValueError(f"no NeuronSet for {', '.join(missing)}")
    regions = layer_regions(adapter.num_layers, understanding, generation)
    recorded = spec.recorded(settings)
    cells = plan_cells(spec, neuron_sets, adapter.num_layers)
    inputs = CellInputs.of(model, neuron_sets, evaluate, spec.langs)
    store = CellStore(out / "cells.jsonl", recorded, inputs, {c.key: inputs.for_cell(c.key) for c in cells},
                      key_type=CellKey, name="the deactivation grid", label="deactivation")
    start = time.time()

    def measure(cell: Cell) -> dict[str, Any]:
        off = cell.off
        if off is None or off.count() == 0:
            res = evaluate(cell.key.eval_lang)
        else:
            with deactivate(model, off):
                res = evaluate(cell.key.eval_lang)
        return {"score": res["score"], "n": res.get("n"), "metric": res.get("metric"),
                "higher_is_better": res.get("higher_is_better", True), "off": 0 if off is None else off.count()}

    results = execute(cells, store, measure, progress=progress)
    first = next(iter(results.values()))
    higher, metric = first["higher_is_better"], first["metric"]
    total = adapter.total_neurons()
    kinds_off = {r.name: kinds_switched_off(r, neuron_sets, spec.targets) for r in regions}
    info = {"metric": metric, "higher_is_better": higher, "english": english, "targets": spec.targets,
            "understanding": understanding, "generation": generation, "seeds": list(spec.seeds),
            "regions": [asdict(r) for r in regions], "total_neurons": total,
            "elapsed_s": time.time() - start, "settings": recorded}
    result = {"info": info, "grid": grid_rows(spec, regions, results, total, kinds_off, higher),
              "headline": headline_rows(spec, results, total), "original": originals(spec, results),
              "matrix": matrix_rows(spec, results, higher)}
    if distributed.rank() == 0:
        write_outputs(out, result)
    distributed.barrier()  # the outputs exist when any rank returns
    return result


def run_deactivation(config: DeactivationConfig, *, model: torch.nn.Module | None = None, tokenizer: Any = None,
                     progress: bool = True) -> dict[str, Any]:
    """The experiment ``config`` describes (what ``mwork experiment deactivation`` runs): load the
    model (unless given), resolve the layer regions (``mwork.lens.regions.resolve_regions``),
    load the sets and the evaluation, run the grid under ``config.out``."""
    from mwork.lens.regions import RegionEstimateError, resolve_regions
    from mwork.models.loading import load_model, parse_device_map

    if model is None:
        model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device,
                                      device_map=parse_device_map(config.device_map))
    elif tokenizer is None:
        raise ValueError("pass the model's tokenizer with the model")
    try:
        understanding, generation, estimate = resolve_regions(get_adapter(model).num_layers, config.lens,
                                                              config.understanding, config.generation)
    except RegionEstimateError as err:
        if distributed.rank() == 0:
            print(err.estimate.describe())
        raise
    if estimate is not None and distributed.rank() == 0:
        print(estimate.describe())
    sets = load_language_sets(config.neurons, config.langs, model)
    settings: dict[str, Any] = {"model": config.model, "task": config.task, "neurons": str(config.neurons),
                                "limit": config.limit, "max_length": config.max_length, "dtype": config.dtype}
    evaluate, texts = config.evaluator(model, tokenizer)
    if texts is not None:
        settings["texts"] = texts
    spec = GridSpec(tuple(config.langs), config.english, understanding, generation, tuple(config.seeds),
                    config.matrix)
    return run_deactivation_experiment(model, evaluate, sets, spec, config.out, settings=settings, progress=progress)
