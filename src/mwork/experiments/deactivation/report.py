"""The grid's files: ``table.csv`` / ``table.md`` (the grid), ``headline.csv``, ``matrix.csv``,
``results.json`` (everything) and ``deactivation.png``. Each is written to a temporary file
and renamed, so a killed run never leaves half a table."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

from mwork.experiments.deactivation.schema import GRID, HEADLINE, MATRIX, PLOT, RESULTS, TABLE_MD
from mwork.files import write_bytes
from mwork.plotting import plain_text, save_figure

# the files' columns: one schema (``schema``), shared with the report's section
GRID_COLUMNS = list(GRID.columns)
HEADLINE_COLUMNS = list(HEADLINE.columns)


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _replace(path: Path, data: bytes) -> None:
    write_bytes(path, data)


def _csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]], *, ignore_extra: bool = False) -> None:
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore" if ignore_extra else "raise")
    w.writeheader()
    w.writerows(rows)
    _replace(path, buf.getvalue().encode("utf-8"))


def markdown(result: dict[str, Any]) -> str:
    """``table.md``: the grid, the headline and (when measured) the matrix."""
    info = result["info"]
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
           f"| lang | original | random ({'mean ± std' if len(info['seeds']) > 1 else 'one seed'}) | "
           "language-specific | neurons off | share |", "|---|---|---|---|---|---|"]
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
    return "\n".join(md) + "\n"


def write_outputs(out: Path, result: dict[str, Any]) -> None:
    """Every file of the grid under ``out``."""
    _csv(out / GRID.name, GRID.columns, result["grid"], ignore_extra=True)
    _csv(out / HEADLINE.name, HEADLINE.columns, result["headline"])
    if result["matrix"]:
        _csv(out / MATRIX.name, MATRIX.columns, result["matrix"])
    _replace(out / RESULTS.name,
             (json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8"))
    _replace(out / TABLE_MD, markdown(result).encode("utf-8"))
    plot(out / PLOT, result)


@plain_text
def plot(path: Path, result: dict[str, Any]) -> None:
    """Left: each language with its own neurons off; right: Δ by layer region, specific vs random."""
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
    save_figure(fig, path, dpi=110)
