"""The paper's deactivation experiments (§3-4, Tables 1-6) on any model, task and languages.

For every non-English language T with a language-specific NeuronSet, T's neurons are switched
off (restricted to a layer region and neuron kinds) and the task is measured on English and on
T. The same is done with random neurons of the same count per layer and kind (several seeds).

Columns (the paper's definitions, averaged over the non-English languages T):

* ``Eng``: English performance with T's neurons off; ``n-Eng``: T's performance with T's off.
* ``ΔEng`` / ``Δn-Eng``: change of performance against the unmodified model; positive means
  better. For accuracy-like metrics it is ``after - before`` (metric units); for perplexity it
  is ``-ln(ppl_after / ppl_before)``, the change in mean log-likelihood per token (nats), so a
  perplexity multiplied by ``r`` gives ``-ln r``. ``Eng``/``n-Eng`` of perplexity are geometric
  means.
* ``Δ = ΔEng - Δn-Eng``: large when non-English suffers much more than English.

Every finished cell is appended to ``cells.jsonl``; a rerun with the same settings skips them.
Under torchrun the cells are dealt out over the ranks (see ``run_deactivation_experiment``);
each cell is computed by one process as it would be alone, so the results are identical.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from mwork import distributed
from mwork.intervene import deactivate
from mwork.models.adapters import KINDS, get_adapter
from mwork.neurons.neuronset import NeuronSet

ATTN_KINDS = ("q", "k", "v")
Evaluate = Callable[[str], dict[str, Any]]  # language -> {"score", "n", "metric", "higher_is_better"}


@dataclass(frozen=True)
class Region:
    """A row of the grid: which layers and kinds are switched off."""

    name: str
    layers: tuple[int, ...]
    kinds: tuple[str, ...]


def layer_regions(num_layers: int, understanding: int, generation: int) -> list[Region]:
    """The paper's regions: understanding = first U layers, generation = last G layers,
    task-solving = the rest, split into attention and FFN; plus all layers together."""
    if understanding < 0 or generation < 0 or understanding + generation > num_layers:
        raise ValueError(
            f"understanding ({understanding}) + generation ({generation}) layers must be >= 0 and "
            f"fit in the model's {num_layers} layers"
        )
    task = tuple(range(understanding, num_layers - generation))
    regions = [
        Region("understanding", tuple(range(understanding)), KINDS),
        Region("task-solving attention", task, ATTN_KINDS),
        Region("task-solving FFN", task, ("ffn",)),
        Region("generation", tuple(range(num_layers - generation, num_layers)), KINDS),
        Region("all layers", tuple(range(num_layers)), KINDS),
    ]
    return [r for r in regions if r.layers]


def performance_delta(before: float, after: float, higher_is_better: bool) -> float:
    """Change of performance, positive = better (see module docstring)."""
    if higher_is_better:
        return after - before
    return -math.log(after / before)


def _aggregate(scores: Sequence[float], higher_is_better: bool) -> float:
    """Mean of scores (geometric for lower-is-better metrics such as perplexity)."""
    if not scores:
        return math.nan
    if higher_is_better:
        return statistics.fmean(scores)
    return math.exp(statistics.fmean(math.log(s) for s in scores))


def load_language_sets(folder: str | Path, langs: Iterable[str], model: torch.nn.Module) -> dict[str, NeuronSet]:
    """``<folder>/<lang>.safetensors`` for each language (e.g. the output of ``mwork specific``)."""
    folder = Path(folder)
    sets = {}
    for lang in langs:
        path = folder / f"{lang}.safetensors"
        if not path.exists():
            have = sorted(p.stem for p in folder.glob("*.safetensors"))
            raise FileNotFoundError(f"no NeuronSet for {lang!r} at {path}; the folder has: {', '.join(have) or 'none'}")
        sets[lang] = NeuronSet.load(path, model)
    return sets


class _Cells:
    """Finished measurements, keyed by a string, persisted one JSON line each.

    Data parallel: every rank reads the files, only rank 0 writes them."""

    def __init__(self, path: Path, settings: dict[str, Any]):
        self.path = path
        self.done: dict[str, dict[str, Any]] = {}
        fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
        settings_path = path.with_name("settings.json")
        if settings_path.exists() and path.exists():
            old = json.loads(settings_path.read_text()).get("fingerprint")
            if old != fingerprint:
                raise ValueError(
                    f"{path.parent} holds cells of an experiment with other settings; use another --out "
                    "folder or delete cells.jsonl to start again"
                )
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    cell = json.loads(line)
                    self.done[cell["key"]] = cell
        distributed.barrier()  # every rank has read the files before rank 0 writes
        if distributed.rank() == 0:
            settings_path.write_text(json.dumps({"fingerprint": fingerprint, **settings}, indent=2, default=str) + "\n")

    def add(self, cell: dict[str, Any]) -> None:
        if distributed.rank() == 0:
            with self.path.open("a") as f:
                f.write(json.dumps(cell) + "\n")
        self.done[cell["key"]] = cell


def run_deactivation_experiment(
    model: torch.nn.Module,
    evaluate: Evaluate,
    neuron_sets: Mapping[str, NeuronSet],
    langs: Sequence[str],
    out_dir: str | Path,
    *,
    understanding: int,
    generation: int,
    english: str = "en",
    seeds: Sequence[int] = (0, 1, 2),
    settings: Mapping[str, Any] | None = None,
    matrix: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the grid and the headline table; write ``table.csv/.md``, ``headline.csv``,
    ``results.json`` and ``deactivation.png`` under ``out_dir``; return the results.

    ``matrix``: also measure every language with every language's neurons off (all layers),
    written to ``matrix.csv`` (rows: whose neurons are off; the paper's cross-language view)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    adapter = get_adapter(model)
    if english not in langs:
        raise ValueError(f"the languages must include English ({english!r}) to measure ΔEng; got {', '.join(langs)}")
    targets = [lang for lang in langs if lang != english]
    if not targets:
        raise ValueError("give at least one non-English language besides English")
    missing = [lang for lang in langs if lang not in neuron_sets]
    if missing:
        raise ValueError(f"no NeuronSet for {', '.join(missing)}")
    regions = layer_regions(adapter.num_layers, understanding, generation)
    all_settings = {"langs": list(langs), "english": english, "understanding": understanding,
                    "generation": generation, "seeds": list(seeds), **dict(settings or {})}
    if matrix:  # older folders without the matrix stay resumable
        all_settings["matrix"] = True
    cells = _Cells(out / "cells.jsonl", all_settings)
    start = time.time()

    def measure(lang: str, off: NeuronSet | None) -> Callable[[], dict[str, Any]]:
        def run() -> dict[str, Any]:
            if off is None or off.count() == 0:
                res = evaluate(lang)
            else:
                with deactivate(model, off):
                    res = evaluate(lang)
            return {"score": res["score"], "n": res.get("n"), "metric": res.get("metric"),
                    "higher_is_better": res.get("higher_is_better", True),
                    "off": 0 if off is None else off.count()}
        return run

    def variants(lang: str, region: Region) -> list[tuple[str, NeuronSet]]:
        spec = neuron_sets[lang].restrict(region.layers, region.kinds)
        return [("specific", spec)] + [(f"random{s}", spec.random_like(seed=s)) for s in seeds]

    # plan every cell first, so the progress bar knows the total; a cell is keyed by what it
    # measures (region, variant, whose neurons, evaluated language), so the headline and the
    # grid's "all layers" row share their cells
    keyed: dict[str, Callable[[], dict[str, Any]]] = {}
    for lang in langs:
        keyed[f"original|{lang}"] = measure(lang, None)
    full = Region("all layers", tuple(range(adapter.num_layers)), KINDS)
    for lang in langs:  # headline: each language with its own neurons off
        for variant, ns in variants(lang, full):
            keyed[f"{full.name}|{variant}|{lang}|{lang}"] = measure(lang, ns)
    for region in regions:
        for t in targets:
            for variant, ns in variants(t, region):
                for ev in (english, t):
                    keyed.setdefault(f"{region.name}|{variant}|{t}|{ev}", measure(ev, ns))
    if matrix:
        for t in langs:
            for variant, ns in variants(t, full):
                for ev in langs:
                    keyed.setdefault(f"{full.name}|{variant}|{t}|{ev}", measure(ev, ns))
    plan = list(keyed.items())

    # data parallel (mwork.distributed): the missing cells are dealt out in rounds of one cell
    # per rank; each rank computes its cell alone (local(): the evaluation does not shard), so
    # every cell is the single process's number; after each round every rank has all the
    # round's cells and rank 0 appends them to cells.jsonl (a crash loses one round at most)
    todo = [(key, fn) for key, fn in plan if key not in cells.done]
    world, rank = distributed.world_size(), distributed.rank()
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="deactivation cells",
               disable=not progress or rank != 0, unit="cell")
    for start in range(0, len(todo), world):
        round_ = todo[start:start + world]
        bar.set_postfix_str(round_[0][0][:40])
        mine = {}
        if rank < len(round_):
            key, fn = round_[rank]
            with distributed.local():
                mine[rank] = {"key": key, **fn()}
        for cell in distributed.gather_in_order(len(round_), mine):
            cells.add(cell)
        bar.update(len(round_))
    bar.close()
    results = {key: cells.done[key] for key, _ in plan}

    higher = next(iter(results.values()))["higher_is_better"]
    metric = next(iter(results.values()))["metric"]
    orig = {lang: results[f"original|{lang}"]["score"] for lang in langs}

    # ---- headline: per language, original / random / specific ----
    headline = []
    for lang in langs:
        rand = [results[f"{full.name}|random{s}|{lang}|{lang}"]["score"] for s in seeds]
        spec = results[f"{full.name}|specific|{lang}|{lang}"]
        headline.append({
            "lang": lang, "original": orig[lang],
            "random_mean": statistics.fmean(rand) if rand else math.nan,
            "random_std": _std(rand),
            "specific": spec["score"],
            "neurons_off": spec["off"],
            "share_off": spec["off"] / adapter.total_neurons(),
        })

    # ---- grid: regions x {specific, random} ----
    rows = []
    for region in regions:
        for kind in ("specific", "random"):
            variants_ = ["specific"] if kind == "specific" else [f"random{s}" for s in seeds]
            per_variant = []
            for v in variants_:
                eng = [results[f"{region.name}|{v}|{t}|{english}"]["score"] for t in targets]
                neng = [results[f"{region.name}|{v}|{t}|{t}"]["score"] for t in targets]
                d_eng = statistics.fmean(performance_delta(orig[english], e, higher) for e in eng)
                d_neng = statistics.fmean(performance_delta(orig[t], s, higher) for t, s in zip(targets, neng))
                off = statistics.fmean(results[f"{region.name}|{v}|{t}|{english}"]["off"] for t in targets)
                per_variant.append({"Eng": _aggregate(eng, higher), "n-Eng": _aggregate(neng, higher),
                                    "ΔEng": d_eng, "Δn-Eng": d_neng, "Δ": d_eng - d_neng, "neurons": off})
            row = {"region": region.name, "kinds": "+".join(region.kinds),
                   "layers": f"{region.layers[0]}-{region.layers[-1]}", "neurons_off": kind}
            for col in ("Eng", "n-Eng", "ΔEng", "Δn-Eng", "Δ"):
                vals = [p[col] for p in per_variant]
                row[col] = statistics.fmean(vals)
                row[f"{col}_std"] = _std(vals)
            row["mean_neurons"] = statistics.fmean(p["neurons"] for p in per_variant)
            row["share_off"] = row["mean_neurons"] / adapter.total_neurons()
            rows.append(row)
    original_row = {"region": "none (original)", "kinds": "", "layers": "", "neurons_off": "none",
                    "Eng": orig[english], "n-Eng": _aggregate([orig[t] for t in targets], higher),
                    "ΔEng": 0.0, "Δn-Eng": 0.0, "Δ": 0.0, "mean_neurons": 0, "share_off": 0.0}
    rows.insert(0, original_row)

    cross = []
    if matrix:
        for t in langs:
            for ev in langs:
                rand = [results[f"{full.name}|random{s}|{t}|{ev}"]["score"] for s in seeds]
                spec = results[f"{full.name}|specific|{t}|{ev}"]["score"]
                rm = statistics.fmean(rand) if rand else math.nan
                cross.append({"neurons_of": t, "eval_lang": ev, "original": orig[ev], "random_mean": rm,
                              "random_std": _std(rand), "specific": spec,
                              "specific_change": performance_delta(orig[ev], spec, higher),
                              "random_change": performance_delta(orig[ev], rm, higher)})

    info = {"metric": metric, "higher_is_better": higher, "english": english, "targets": targets,
            "understanding": understanding, "generation": generation, "seeds": list(seeds),
            "regions": [asdict(r) for r in regions], "total_neurons": adapter.total_neurons(),
            "elapsed_s": time.time() - start, "settings": all_settings}
    result = {"info": info, "grid": rows, "headline": headline, "original": orig, "matrix": cross}
    if rank == 0:
        _write_outputs(out, result)
    distributed.barrier()  # the outputs exist when any rank returns
    return result


_GRID_COLUMNS = ["region", "kinds", "layers", "neurons_off", "Eng", "n-Eng", "ΔEng", "Δn-Eng", "Δ",
                 "Eng_std", "n-Eng_std", "ΔEng_std", "Δn-Eng_std", "Δ_std", "mean_neurons", "share_off"]


def _std(values: Sequence[float]) -> float | None:
    """Sample standard deviation over the random seeds; None (not 0) for a single seed."""
    return statistics.stdev(values) if len(values) > 1 else None


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _write_outputs(out: Path, result: dict[str, Any]) -> None:
    info = result["info"]
    with (out / "table.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=_GRID_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(result["grid"])
    head_cols = ["lang", "original", "random_mean", "random_std", "specific", "neurons_off", "share_off"]
    with (out / "headline.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=head_cols)
        w.writeheader()
        w.writerows(result["headline"])
    if result["matrix"]:
        with (out / "matrix.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(result["matrix"][0]))
            w.writeheader()
            w.writerows(result["matrix"])
    (out / "results.json").write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    metric = info["metric"]
    delta_unit = "metric units" if info["higher_is_better"] else "-ln(ppl ratio)"
    md = [f"# Deactivation: {metric} ({'higher' if info['higher_is_better'] else 'lower'} is better)", "",
          f"English = `{info['english']}`; non-English = {', '.join(info['targets'])}; U = {info['understanding']}, "
          f"G = {info['generation']}; random rows: mean over seeds {info['seeds']}; Δ in {delta_unit}.", "",
          "| region | kinds | layers | neurons off | Eng | n-Eng | ΔEng | Δn-Eng | Δ | share off |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["grid"]:
        md.append("| " + " | ".join(_fmt(r[c]) for c in ("region", "kinds", "layers", "neurons_off", "Eng", "n-Eng",
                                                           "ΔEng", "Δn-Eng", "Δ")) + f" | {r['share_off']:.3%} |")
    md += ["", f"## Each language with its own neurons off (all layers): {metric}", "",
           f"| lang | original | random ({'mean ± std' if len(info['seeds']) > 1 else 'one seed'}) | language-specific | neurons off | share |", "|---|---|---|---|---|---|"]
    for h in result["headline"]:
        spread = f" ± {_fmt(h['random_std'])}" if h["random_std"] is not None else ""
        md.append(f"| {h['lang']} | {_fmt(h['original'])} | {_fmt(h['random_mean'])}{spread} | "
                  f"{_fmt(h['specific'])} | {h['neurons_off']} | {h['share_off']:.3%} |")
    if result["matrix"]:
        langs = list(dict.fromkeys(r["eval_lang"] for r in result["matrix"]))
        cell = {(r["neurons_of"], r["eval_lang"]): r for r in result["matrix"]}
        md += ["", f"## Every language with each language's neurons off (all layers): {metric}, "
               "language-specific (random)", "",
               "| neurons off \\ eval | " + " | ".join(langs) + " |", "|---" * (len(langs) + 1) + "|",
               "| none | " + " | ".join(_fmt(result["original"][ev]) for ev in langs) + " |"]
        for t in langs:
            md.append(f"| {t} | " + " | ".join(
                f"{_fmt(cell[t, ev]['specific'])} ({_fmt(cell[t, ev]['random_mean'])})" for ev in langs) + " |")
    (out / "table.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    _plot(out / "deactivation.png", result)


def _plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = result["info"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    head = result["headline"]
    x = range(len(head))
    w = 0.27
    log = not info["higher_is_better"]
    ax = axes[0]
    ax.bar([i - w for i in x], [h["original"] for h in head], w, label="original")
    ax.bar(list(x), [h["random_mean"] for h in head], w, yerr=[h["random_std"] or 0.0 for h in head], label="random")
    ax.bar([i + w for i in x], [h["specific"] for h in head], w, label="language-specific")
    ax.set_xticks(list(x), [h["lang"] for h in head])
    ax.set_ylabel(info["metric"] + (" (log scale)" if log else ""))
    if log:
        ax.set_yscale("log")
    ax.set_title("each language with its own neurons off")
    ax.legend()
    ax = axes[1]
    grid = [r for r in result["grid"] if r["neurons_off"] != "none"]
    labels = sorted({r["region"] for r in grid}, key=[r["region"] for r in grid].index)
    for j, kind in enumerate(("specific", "random")):
        vals = [next(r for r in grid if r["region"] == lab and r["neurons_off"] == kind) for lab in labels]
        ax.bar([i + (j - 0.5) * 0.4 for i in range(len(labels))], [v["Δ"] for v in vals], 0.4,
               yerr=[v.get("Δ_std") or 0.0 for v in vals], label=kind)
    ax.set_xticks(range(len(labels)), labels, rotation=15, fontsize=8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("Δ = ΔEng − Δn-Eng")
    ax.set_title("by layer region (larger: non-English hit harder)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
