"""The sweep's files, written atomically (``mwork.files``):

* ``steer.csv``: one row per (method, seed, strength): ``target, source, method`` (``specific`` or
  ``random``), ``seed`` (empty for specific), ``strength``, the settings, then the measures of
  ``metrics.aggregate`` (``target_rate, target_prob_mass, damage_ppl, ...``);
* ``unsteered.csv``: the same measures for the unsteered model (the reference of every row);
* ``generations.jsonl``: every generation a person can read: prompt, strength, method, seed, text,
  detected language, next to the unsteered model's text for the same prompt;
* ``generations.md``: the same, prompt by prompt, for reading: the unsteered text, then the text at
  each strength of the specific neurons and of the first random seed, with the detected language;
* ``steer.png``: the trade-off, per target language: target-language rate against damage (the
  unsteered model's perplexity of the generated text) over strength, specific neurons against
  random ones (mean over seeds, the seeds' range as bars), the unsteered model as a star;
* ``summary.json``: rows, the unsteered model, settings, notes.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mwork.files import csv_text as _csv_text, number_cell, write_json, write_text  # noqa: E402
from mwork.experiments.steering.schema import (GENERATIONS, GENERATIONS_MD, PLOT, STEER, SUMMARY,  # noqa: E402
                                               TEXT_COLUMNS, UNSTEERED)
from mwork.plotting import plain_text, save_figure  # noqa: E402

# the files' columns: one schema (``schema``), shared with the report's section
ROW_COLUMNS: tuple[str, ...] = STEER.columns
UNSTEERED_COLUMNS: tuple[str, ...] = UNSTEERED.columns


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    return _csv_text(rows, columns, number_cell)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """``steer.csv`` back as dicts of numbers (empty cells None)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = {}
            for k, v in r.items():
                if v == "":
                    row[k] = None
                else:
                    try:
                        row[k] = float(v) if k not in TEXT_COLUMNS else v
                    except ValueError:
                        row[k] = v
            out.append(row)
    return out


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


@plain_text
def plot_tradeoff(rows: Sequence[Mapping[str, Any]], path: str | Path,
                  unsteered: Sequence[Mapping[str, Any]] = (), title: str = "") -> Path:
    """``steer.png`` (module docstring) from ``steer.csv`` rows of one or several targets."""
    targets = list(dict.fromkeys(f"{r['source']}->{r['target']}" for r in rows))
    if not targets:
        raise ValueError("nothing to plot: no rows")
    ncols = min(len(targets), 3)
    nrows = math.ceil(len(targets) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 3.8 * nrows), squeeze=False)
    for ax, pair in zip(axes.flat, targets):
        mine = [r for r in rows if f"{r['source']}->{r['target']}" == pair]
        for method, color, marker in (("specific", "tab:red", "o"), ("random", "0.45", "s")):
            by_strength: dict[float, list[Mapping[str, Any]]] = {}
            for r in mine:
                if r["method"] == method:
                    by_strength.setdefault(float(r["strength"]), []).append(r)
            if not by_strength:
                continue
            ss = sorted(by_strength)
            xs = [sum(_num(r["damage_ppl"]) for r in by_strength[s]) / len(by_strength[s]) for s in ss]
            ys = [sum(_num(r["target_rate"]) for r in by_strength[s]) / len(by_strength[s]) for s in ss]
            lo = [min(_num(r["target_rate"]) for r in by_strength[s]) for s in ss]
            hi = [max(_num(r["target_rate"]) for r in by_strength[s]) for s in ss]
            label = method if method == "specific" else f"random (mean of {len(by_strength[ss[0]])} seeds)"
            ax.plot(xs, ys, "-" + marker, color=color, label=label, ms=5)
            if method == "random":
                ax.errorbar(xs, ys, yerr=[[y - a for y, a in zip(ys, lo)], [b - y for y, b in zip(ys, hi)]],
                            fmt="none", ecolor=color, alpha=0.6, capsize=2)
            for x, y, s in zip(xs, ys, ss):
                if math.isfinite(x) and math.isfinite(y):
                    ax.annotate(f"{s:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
        for u in unsteered:
            if f"{u['source']}->{u['target']}" == pair and math.isfinite(_num(u["damage_ppl"])):
                ax.plot([_num(u["damage_ppl"])], [_num(u["target_rate"])], "*", color="tab:blue", ms=11,
                        label="unsteered")
        finite = [x for x in (_num(r["damage_ppl"]) for r in mine) if math.isfinite(x) and x > 0]
        if finite and max(finite) / min(finite) > 20:
            ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{pair} ({mine[0].get('mode')}, {mine[0].get('stat')})")
        ax.set_xlabel("damage: unsteered model's perplexity of the generation")
        ax.set_ylabel("target-language rate")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(targets):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def generations_markdown(generations: Sequence[Mapping[str, Any]], target: str, limit: int = 12) -> str:
    """``generations.md`` (module docstring): the first ``limit`` prompts."""
    by_prompt: dict[str, list[Mapping[str, Any]]] = {}
    for g in generations:
        by_prompt.setdefault(g["prompt_id"], []).append(g)
    seeds = sorted({g["seed"] for g in generations if g["method"] == "random"})
    lines = [f"# Steered generations (target: {target})", ""]
    for pid in list(by_prompt)[:limit]:
        rows = by_prompt[pid]
        lines += [f"## {rows[0]['prompt']}", "", f"- **unsteered** [{rows[0]['unsteered_language']}]: "
                  + _quote(rows[0]["unsteered_text"])]
        for g in rows:
            if g["method"] == "specific" or (seeds and g["seed"] == seeds[0]):
                who = "specific" if g["method"] == "specific" else f"random (seed {g['seed']})"
                lines.append(f"- **{who}, strength {g['strength']:g}** [{g['detected_language']}]: "
                             + _quote(g["text"]))
        lines.append("")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return "`" + " ".join(str(text).split()).replace("`", "'") + "`" if str(text).strip() else "(empty)"


def write_outputs(out: Path, result: Mapping[str, Any]) -> None:
    rows, unsteered = result["rows"], result["unsteered"]
    write_text(out / STEER.name, csv_text(rows, STEER.columns))
    write_text(out / UNSTEERED.name, csv_text([unsteered], UNSTEERED.columns))
    write_text(out / GENERATIONS.name,
               "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in result["generations"]))
    write_text(out / GENERATIONS_MD, generations_markdown(result["generations"], unsteered["target"]))
    write_json(out / SUMMARY.name, {"rows": rows, "unsteered": unsteered, **result["info"]}, indent=2, default=str)
    plot_tradeoff(rows, out / PLOT, [unsteered])
