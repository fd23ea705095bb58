"""``run_control(ControlConfig(...))``: the control experiment, as ``mwork experiment control``
runs it.

1. The inputs (``inputs``): pairs, items (dev and test), unit set files, read and checked before
   the model is loaded; then the unit sets checked against the model, the neurons' mean
   activations measured where missing, the random baselines drawn, the layer ranges resolved.
2. Cells (``mwork.experiments.kernel``), one per (lever, variant, layers, positions, strength,
   source, target) under :class:`ControlKey`, plus the unsteered model once per pair: a cell
   generates every item of its pair (both splits, every item set) inside the lever's context,
   the pending cells of a pair stacked (``--stack`` at a time) into shared batches of
   ``--batch-size`` rows, each cell's edit on its own rows (``measure.generate_stacked``); then
   each cell measures fluency with the model unchanged (``measure``). Cells are
   kept in ``OUT/cells.jsonl``, keyed by the content they are computed from (model weights, the
   unit sets and their statistics, the rendered prompts, the resolved layers, the generation
   settings), so a killed run resumes to the same files and a changed input is recomputed.
3. Rows (``mwork.control.score_row``): per cell, item set and split, against the unsteered
   model's outputs on the same items; with several item sets also their combination
   (``combine_rows``), on which settings are chosen.
4. The choice: per lever (and pair, or over every pair) the best dev setting
   (``choose_settings``) and its test rows (``chosen_test_rows``); then the files (``report``).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from mwork.config import digest, fingerprint
from mwork.control.score import Fluency, Judged, choose_settings, chosen_test_rows, combine_rows, score_row
from mwork.experiments.control.inputs import (PairItems, families, feature_statistics, items_digest, language_seed,
                                              load_feature_sets, load_unit_sets, neuron_statistics, pair_items,
                                              statistics_texts, unit_files, units_digest)
from mwork.experiments.control.layers import resolve_layers
from mwork.experiments.control.levers import UNSTEERED, LeverUnits, Plan, Setting, lever, settings
from mwork.experiments.control.measure import Stacked, generate_stacked, measure_cell
from mwork.experiments.control.prompts import Prompt, render
from mwork.experiments.control.schema import SETTING
from mwork.experiments.kernel import Cell, CellInputs, CellKey, CellStore, execute

if TYPE_CHECKING:
    from mwork.experiments.control.config import ControlConfig


def say(message: str) -> None:
    print(f"[mwork control] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ControlKey(CellKey):
    """What one cell measures: the generations of the ``source`` -> ``target`` items with
    ``lever`` at its setting (``variant``, ``layers``, ``positions``, ``strength``; None where
    the lever has none: the prompt, the unsteered model)."""

    lever: str
    variant: str
    layers: str | None
    positions: str | None
    strength: float | None
    source: str
    target: str

    @classmethod
    def of(cls, setting: Setting, source: str, target: str) -> "ControlKey":
        return cls(setting.lever, setting.variant, setting.layers, setting.positions, setting.strength, source, target)

    def setting(self) -> Setting:
        return Setting(self.lever, self.variant, self.layers, self.positions, self.strength)

    def inputs_of(self) -> tuple[str | None, str]:
        return None, f"{self.source}>{self.target}"


def _regions(config: ControlConfig, num_layers: int) -> dict[str, range] | None:
    if config.lens is None and (config.understanding is None or config.generation is None):
        return None
    from mwork.layer_regions import region_layers
    from mwork.lens.regions import resolve_regions

    u, g, _ = resolve_regions(num_layers, config.lens, config.understanding, config.generation)
    return region_layers(num_layers, u, g)


def resolved_layers(config: ControlConfig, model: torch.nn.Module) -> dict[str, list[int] | None]:
    """Each ``--layers`` entry's layers in ``model`` (None: every layer)."""
    from mwork.models.adapters import get_adapter

    n = get_adapter(model).num_layers
    regions = _regions(config, n)
    return {spec: resolve_layers(spec, n, regions) for spec in config.layer_specs()}


class Prompts:
    """The rendered prompts of each pair and instruction, made once."""

    def __init__(self, items: Mapping[tuple[str, str], PairItems], chat_tokenizer: Any = None):
        self.items, self.chat = items, chat_tokenizer
        self._cache: dict[tuple[str, str, str | None], list[Prompt]] = {}

    def of(self, source: str, target: str, instruction: str | None) -> list[Prompt]:
        key = (source, target, instruction)
        if key not in self._cache:
            self._cache[key] = [render(it, instruction, chat_tokenizer=self.chat)
                                for it in self.items[(source, target)].items]
        return self._cache[key]

    def digest(self, source: str, target: str, instruction: str | None) -> str:
        return digest([[p.text, list(p.stop)] for p in self.of(source, target, instruction)])[:16]


def plan_cells(config: ControlConfig, pairs: Sequence[tuple[str, str]], plan: Plan) -> list[Cell]:
    """The unsteered cell of each pair, then every lever's settings for it."""
    cells = []
    for source, target in pairs:
        cells.append(Cell(ControlKey.of(Setting(UNSTEERED, ""), source, target)))
        for name in config.chosen_levers():
            for s in settings(name, plan, source, target, config.layer_specs_of(), config.positions,
                                  config.strengths_of()):
                cells.append(Cell(ControlKey.of(s, source, target)))
    return cells


def _perplexity(records: Sequence[Mapping[str, Any]]) -> float | None:
    nll = sum(r["nll"] for r in records if r["tokens"])
    n = sum(r["tokens"] for r in records)
    return math.exp(nll / n) if n and math.isfinite(nll) else None


def _setting_fields(key: ControlKey) -> dict[str, Any]:
    return {"lever": key.lever, "variant": key.variant, "layers": key.layers, "positions": key.positions,
            "strength": key.strength, "source": key.source, "target": key.target}


def _judged(record: Mapping[str, Any], base: Mapping[str, Any], idx: Sequence[int], meaning_from: str
            ) -> Judged | None:
    """The judge's relevances of a row's outputs (None when the run has no judge)."""
    if "judge" not in record["items"][0]:
        return None
    return Judged([record["items"][i]["judge"] for i in idx], [base["items"][i]["judge"] for i in idx],
                  primary=meaning_from == "judge")


def cell_rows(key: ControlKey, record: Mapping[str, Any], base: Mapping[str, Any], pair: PairItems,
              item_sets: Sequence[str], meaning_from: str = "measure") -> list[dict[str, Any]]:
    """The rows of one cell: per split, each item set's and (with several) their combination's."""
    rows = []
    main = item_sets[0] if len(item_sets) == 1 else "+".join(item_sets)
    for split in ("dev", "test"):
        per_set = []
        for item_set in item_sets:
            idx = pair.select(item_set, split)
            mine = [record["items"][i] for i in idx]
            row = score_row([pair.items[i] for i in idx], [r["output"] for r in mine],
                            [base["items"][i]["output"] for i in idx], [r["language"] for r in mine],
                            fluency=Fluency([r["distinct_2"] for r in mine], _perplexity(mine)),
                            pool=pair.pools.get(item_set), judged=_judged(record, base, idx, meaning_from))
            per_set.append(row)
            rows.append({**_setting_fields(key), "split": split, **row, "units": record["off"]})
        if len(item_sets) > 1:
            idx = [i for s in item_sets for i in pair.select(s, split)]
            combined = {**combine_rows(per_set), "perplexity": _perplexity([record["items"][i] for i in idx])}
            rows.append({**_setting_fields(key), "split": split, **combined, "item_set": main,
                         "units": record["off"]})
    return rows


def generation_records(key: ControlKey, record: Mapping[str, Any], base: Mapping[str, Any], pair: PairItems,
                       prompts: Sequence[Prompt]) -> list[dict[str, Any]]:
    """``generations.jsonl``'s records of one cell: per item, the prompt, the output and its
    language beside the unsteered model's, its meaning measures and fluency."""
    from mwork.control.meaning import item_measures

    out = []
    for i, (item, split) in enumerate(zip(pair.items, pair.splits)):
        r, b = record["items"][i], base["items"][i]
        out.append({**_setting_fields(key), "split": split, "item_set": item.item_set, "id": item.id,
                    "prompt": prompts[i].text, "output": r["output"], "language": r["language"],
                    "unsteered_output": b["output"], "unsteered_language": b["language"],
                    "references": list(item.references),
                    **item_measures(item, r["output"], pool=pair.pools.get(item.item_set)),
                    "distinct_2": r["distinct_2"], "tokens": r["tokens"], "nll": r["nll"],
                    **({"judge": r["judge"]} if "judge" in r else {})})
    return out


def _judge(config: ControlConfig, model: torch.nn.Module, tokenizer: Any) -> tuple[Any, Any]:
    """The judge model and tokenizer (``--judge``; the model under test when it names the same
    model), or (None, None)."""
    if not config.judge:
        return None, None
    if config.judge == config.model:
        return model, tokenizer
    from mwork.models import load_model

    say(f"loading the judge {config.judge}")
    return load_model(config.judge, dtype=config.dtype, device=config.device)


def run_control(config: ControlConfig, *, model: torch.nn.Module | None = None, tokenizer: Any = None
                ) -> dict[str, Any]:
    """The experiment ``config`` describes (module docstring); writes its files under ``config.out``
    and returns ``{"rows", "chosen", "generations", "info"}``."""
    from mwork.experiments.control.report import write_outputs
    from mwork.files import make_folder
    from mwork.fingerprints import model_digest

    pairs = config.pairs()
    items = pair_items(config, pairs)
    files = unit_files(config, pairs)
    neurons, vectors = load_unit_sets(files)
    features = load_feature_sets(files)
    measured_langs = list(dict.fromkeys([*neurons, *features]))
    stats_texts = statistics_texts(config, measured_langs) if measured_langs else {}
    if model is None:
        model, tokenizer = config.load()
    elif tokenizer is None:
        raise ValueError("pass the model's tokenizer with the model")
    if config.chat:
        from mwork.chat import require_chat_template

        require_chat_template(tokenizer)
    for dirs in vectors.values():
        dirs.check_compatible(model)
    layer_lists = resolved_layers(config, model)
    out = make_folder(config.out)
    levers = config.chosen_levers()
    use_random = "random" in levers
    neurons, random_neurons = neuron_statistics(model, tokenizer, config, neurons, stats_texts,
                                                cache=out / "statistics", random=use_random) if neurons else ({}, {})
    features, random_features = feature_statistics(model, tokenizer, config, features, stats_texts,
                                                   cache=out / "statistics", random=use_random) \
        if features else ({}, {})
    random_vectors = {lang: v.random_like(language_seed(config.seed, lang)) for lang, v in vectors.items()} \
        if use_random else {}
    units = LeverUnits(neurons, vectors, random_neurons, random_vectors, features, random_features)
    have = families(config)
    plan = Plan(config.modes, config.vector_modes, config.instructions, have["neurons"] and bool(neurons),
                have["vectors"] and bool(vectors), have["features"] and bool(features))
    cells = plan_cells(config, pairs, plan)
    prompts = Prompts(items, tokenizer if config.chat else None)
    unit_digests = {f"{family}:{lang}": units_digest(s) for family, sets in
                    (("neurons", neurons), ("vectors", vectors), ("random-neurons", random_neurons),
                     ("random-vectors", random_vectors), ("features", features),
                     ("random-features", random_features)) for lang, s in sets.items()}
    generation = {"max_new_tokens": config.max_new_tokens, "chat": config.chat}
    md = model_digest(model)
    judge_model, judge_tokenizer = _judge(config, model, tokenizer)
    judge_digest = {"judge": model_digest(judge_model)} if judge_model is not None else {}
    pair_digests = {f"{s}>{t}": items_digest(items[(s, t)]) for s, t in pairs}

    def instruction_of(key: ControlKey) -> str | None:
        return lever(key.lever).instruction(key.variant, key.source, key.target)

    def expected(key: ControlKey) -> str:
        used = lever(key.lever).units(key.variant, key.source, key.target)
        return digest({"model": md, "units": {n: unit_digests[n] for n in used},
                       "prompts": prompts.digest(key.source, key.target, instruction_of(key)),
                       "layers": layer_lists[key.layers] if key.layers is not None else None,
                       "generation": generation, "seed": config.seed if key.lever == "random" else None,
                       **judge_digest})[:16]

    recorded = {"experiment": "control", "model": config.model, "dtype": config.dtype, "items": list(config.items),
                "limit": config.limit, "dev_fraction": config.dev_fraction, **generation}
    inputs = CellInputs(md, unit_digests, pair_digests)
    store = CellStore(out / "cells.jsonl", recorded, inputs, {c.key: expected(c.key) for c in cells},
                      key_type=ControlKey, name="the control experiment", label="control")

    pending: dict[tuple[str, str], list[ControlKey]] = {}
    for c in cells:
        if c.key not in store.done:
            assert isinstance(c.key, ControlKey)
            pending.setdefault((c.key.source, c.key.target), []).append(c.key)
    generated: dict[ControlKey, list[str]] = {}
    counts: dict[ControlKey, int] = {}

    def stacked(key: ControlKey) -> Stacked:
        layers = layer_lists[key.layers] if key.layers is not None else None

        def edit(rows: list[int] | None) -> Any:
            made = lever(key.lever).edit(model, units, key.setting(), key.source, key.target, layers, rows)
            counts[key] = int(getattr(made, "count", 0))
            return made
        return Stacked(prompts.of(key.source, key.target, instruction_of(key)), edit)

    def generate_stack(key: ControlKey) -> None:
        """``key``'s outputs and those of the next pending cells of its pair (``--stack`` in all)."""
        todo = pending[(key.source, key.target)]  # in plan order, each cell generated once
        keys = [key] + [k for k in todo if k != key][:config.stack - 1]
        todo[:] = [k for k in todo if k not in keys]
        outputs = generate_stacked(model, tokenizer, [stacked(k) for k in keys], max_new_tokens=config.max_new_tokens,
                                   batch_size=config.batch_size)
        generated.update(zip(keys, outputs))

    def measure(cell: Cell) -> dict[str, Any]:
        key = cell.key
        assert isinstance(key, ControlKey)
        if key not in generated:
            generate_stack(key)
        outputs = generated.pop(key)
        records = measure_cell(model, tokenizer, prompts.of(key.source, key.target, instruction_of(key)), outputs,
                               batch_size=config.batch_size)
        if judge_model is not None:
            from mwork.experiments.control.judge import relevance

            rated = relevance(judge_model, judge_tokenizer, items[(key.source, key.target)].items, outputs,
                              batch_size=config.batch_size)
            records = [{**r, "judge": v} for r, v in zip(records, rated)]
        target = sum(r["language"] == key.target for r in records) / len(records)
        return {"score": target, "n": len(records), "metric": "forcing", "higher_is_better": True,
                "off": counts.get(key, 0), "items": records}

    done = execute(cells, store, measure, progress=config.progress)
    rows, generations = [], []
    for cell in cells:
        key = cell.key
        assert isinstance(key, ControlKey)
        base = done[ControlKey.of(Setting(UNSTEERED, ""), key.source, key.target)]
        pair = items[(key.source, key.target)]
        rows += cell_rows(key, done[key], base, pair, config.items, config.meaning_from)
        generations += generation_records(key, done[key], base, pair,
                                          prompts.of(key.source, key.target, instruction_of(key)))
    main = config.items[0] if len(config.items) == 1 else "+".join(config.items)
    main_rows = [r for r in rows if r["item_set"] == main]
    per = ("lever", "source", "target") if config.choose == "pair" else ("lever",)
    choices = choose_settings(main_rows, per=per, setting=SETTING)
    chosen = chosen_test_rows(main_rows, choices, per=per, setting=SETTING)
    info = {"settings": fingerprint(config), "levers": list(levers), "pairs": [list(p) for p in pairs],
            "item_set": main, "choose_per": list(per),
            "layers": {spec: (list(v) if v is not None else "all") for spec, v in layer_lists.items()},
            "units": {name: {"digest": d} for name, d in unit_digests.items()},
            "files": {family: {lang: str(path) for lang, path in paths.items()} for family, paths in files.items()},
            "items": {f"{s}>{t}": {"dev": list(p.splits).count("dev"), "test": list(p.splits).count("test"),
                                   "ids": [it.id for it in p.items]} for (s, t), p in items.items()}}
    result = {"rows": rows, "chosen": chosen, "generations": generations, "info": info}
    write_outputs(out, result)
    return result
