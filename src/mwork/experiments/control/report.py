"""The control experiment's files, written atomically (``mwork.files``):

* ``control.csv``: one row per lever, setting, source, target, split and item set (with several
  item sets also their combination): forcing, meaning, fluency (distinct-2), score (the harmonic
  mean of forcing and meaning), perplexity and every measure of ``mwork.control.score_row``;
* ``chosen.csv``: per lever (and pair) the setting chosen on dev and its test numbers;
* ``generations.jsonl``: every output a person can read: the prompt, the output, its detected
  language, the unsteered model's output and language, the item's references and measures;
* ``summary.json``: the settings, levers, pairs, items, resolved layers and unit sets;
* ``control_heatmap.png``: the test score at the dev-chosen setting, per lever, source x target;
* ``control_pareto.png``: forcing against meaning of every setting (dev, mean over pairs) per
  lever with each lever's Pareto front, and the chosen settings' test means.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from mwork.experiments.control.schema import CHOSEN, CONTROL, GENERATIONS, HEATMAP, PARETO, SETTING, SUMMARY
from mwork.files import csv_text, number_cell, write_json, write_text
from mwork.plotting import plain_text, save_figure


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _levers(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(str(r["lever"]) for r in rows))


@plain_text
def plot_heatmap(chosen: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """The test score at the dev-chosen setting per lever (a panel each), sources x targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levers = _levers(chosen)
    if not levers:
        raise ValueError("nothing to plot: no chosen rows")
    sources = list(dict.fromkeys(str(r["source"]) for r in chosen))
    targets = list(dict.fromkeys(str(r["target"]) for r in chosen))
    width = max(2.0, 0.6 * len(targets) + 0.8)
    fig, axes = plt.subplots(1, len(levers), figsize=(width * len(levers) + 1.4, 1.6 + 0.5 * len(sources)),
                             squeeze=False, sharey=True, constrained_layout=True)
    image = None
    for ax, name in zip(axes[0], levers):
        grid = [[math.nan] * len(targets) for _ in sources]
        for r in chosen:
            if r["lever"] == name:
                grid[sources.index(str(r["source"]))][targets.index(str(r["target"]))] = _num(r["score"])
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                if math.isfinite(value):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if value < 0.6 else "black")
        ax.set_xticks(range(len(targets)), targets)
        ax.set_yticks(range(len(sources)), sources)
        ax.tick_params(labelsize=8)
        ax.set_xlabel("target")
        ax.set_title(name, fontsize=9)
    axes[0][0].set_ylabel("source")
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), shrink=0.9, label="test score")
    fig.suptitle("score (harmonic mean of forcing and meaning) on test, at the setting chosen on dev", fontsize=9)
    return save_figure(fig, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (ties kept once), by increasing forcing."""
    finite = sorted({p for p in points if all(map(math.isfinite, p))}, key=lambda p: (-p[0], -p[1]))
    front, best = [], -math.inf
    for f, m in finite:
        if m > best:
            front.append((f, m))
            best = m
    return sorted(front)


def _mean_by_setting(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[Any, ...], tuple[float, float]]:
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(str(r.get(k)) for k in ("lever", *SETTING)), []).append(r)
    return {k: (sum(_num(r["forcing"]) for r in g) / len(g), sum(_num(r["meaning"]) for r in g) / len(g))
            for k, g in groups.items()}


@plain_text
def plot_pareto(rows: Sequence[Mapping[str, Any]], chosen: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Forcing against meaning per lever: each setting's dev mean over pairs, the Pareto front,
    and the mean of the chosen settings' test rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dev = [r for r in rows if r["split"] == "dev"]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    means = _mean_by_setting(dev)
    for i, name in enumerate(_levers(dev)):
        color = colors[i % len(colors)]
        points = [v for k, v in means.items() if k[0] == name]
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=14, alpha=0.45, color=color)
        front = pareto_front(points)
        ax.plot([p[0] for p in front], [p[1] for p in front], "-", color=color, label=f"{name} (dev front)")
        mine = [r for r in chosen if r["lever"] == name]
        if mine:
            f = sum(_num(r["forcing"]) for r in mine) / len(mine)
            m = sum(_num(r["meaning"]) for r in mine) / len(mine)
            ax.scatter([f], [m], marker="*", s=160, color=color, edgecolor="black", linewidth=0.6, zorder=3)
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("forcing: share of outputs in the target language")
    ax.set_ylabel("meaning kept (relative to the unsteered model)")
    ax.set_title("forcing against meaning (dots: settings on dev; stars: chosen, on test)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


def write_outputs(out: Path, result: Mapping[str, Any]) -> None:
    """Every file of the folder (module docstring) from :func:`mwork.experiments.control.runner.run_control`'s result."""
    rows, chosen = result["rows"], result["chosen"]
    write_text(out / CONTROL.name, csv_text(rows, CONTROL.columns, number_cell))
    write_text(out / CHOSEN.name, csv_text(chosen, CHOSEN.columns, number_cell))
    write_text(out / GENERATIONS.name,
               "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in result["generations"]))
    write_json(out / SUMMARY.name, result["info"], indent=2, default=str, ensure_ascii=False)
    main = result["info"]["item_set"]
    plot_heatmap(chosen, out / HEATMAP)
    plot_pareto([r for r in rows if r["item_set"] == main], chosen, out / PARETO)
