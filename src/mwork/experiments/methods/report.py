"""The comparison's files: ``selectivity.csv`` (per language), ``summary.csv`` (per method and
size), ``matrix.csv``, ``stability.csv``, ``agreement.csv``, ``cost.csv``, ``langid.csv``
(language identification from the sets' units), ``report.md`` (the
tables in Markdown), ``results.json``, ``selectivity.png`` and ``agreement.png``; every file
written atomically. With several unit kinds (``info["units"]``) every table's first column is
``units`` (``unit_kind`` in ``langid.csv``, whose ``units`` is the count of units)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from mwork.experiments.methods.schema import (AGREEMENT, AGREEMENT_PLOT, COST, LANGID, MATRIX, REPORT_MD, RESULTS,
                                              SELECTIVITY, SELECTIVITY_PLOT, STABILITY, SUMMARY)
from mwork.files import csv_text as _csv_text, float_cell, write_text
from mwork.plotting import plain_text, save_figure

# the files' columns: the folder's schema (``schema``: .columns), shared with the report's section


_cell = float_cell(".6f")
#: the column naming a row's unit kind, per table (langid.csv's ``units`` is a count)
KIND_COLUMN = {"langid": "unit_kind"}
TABLES = ("selectivity", "summary", "matrix", "stability", "agreement", "cost", "langid")


def without_units(result: Mapping[str, Any]) -> dict[str, Any]:
    """``result`` with no row naming its unit kind (neurons alone: the files as before kinds)."""
    out = dict(result)
    for key in TABLES:
        if key in out:
            column = KIND_COLUMN.get(key, "units")
            out[key] = [{k: v for k, v in r.items() if k != column} for r in out[key]]
    return out


def _columns(result: Mapping[str, Any], key: str, columns: Sequence[str]) -> tuple[str, ...]:
    """``columns``, led by the unit-kind column when the result compares unit kinds."""
    if "units" not in result["info"] or key == "cost":
        return tuple(columns)
    return (KIND_COLUMN.get(key, "units"), *columns)


def _label(r: Mapping[str, Any], method: str = "method") -> str:
    """A method's name, with its unit kind when it is not neurons (plots)."""
    units = r.get("units")
    return r[method] if units in (None, "", "neurons") else f"{r[method]} [{units}]"


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    return _csv_text(rows, columns, _cell)


def md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], digits: int = 3) -> str:
    def show(v: Any) -> str:
        if v is None:
            return ""
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(show(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def stability_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("units"), r["method"], r["size"]), []).append(r)
    return [{**({} if u is None else {"units": u}), "method": m, "size": s, "neurons": rs[0]["neurons"],
             "jaccard": statistics.fmean(r["jaccard"] for r in rs), "chance": statistics.fmean(r["chance"] for r in rs),
             "min": min(r["jaccard"] for r in rs), "max": max(r["jaccard"] for r in rs)}
            for (u, m, s), rs in groups.items()]


def agreement_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        if r["layer"] == "all":
            groups.setdefault((r.get("units"), r["size"], r["method_a"], r["method_b"]), []).append(r)
    return [{**({} if u is None else {"units": u}), "size": s, "method_a": a, "method_b": b,
             "jaccard": statistics.fmean(r["jaccard"] for r in rs),
             "min": min(r["jaccard"] for r in rs), "max": max(r["jaccard"] for r in rs)}
            for (u, s, a, b), rs in groups.items()]


def markdown(result: Mapping[str, Any]) -> str:
    info = result["info"]

    def cols(key: str, *columns: str) -> tuple[str, ...]:
        return _columns(result, key, columns)

    parts = [f"# Detection methods head to head: {info['model']}\n",
             f"Languages {', '.join(info['langs'])}; methods {', '.join(info['methods'])}; sizes "
             + ", ".join(f"{s} = {n} neurons" for s, n in info["sizes"].items())
             + f" of {info['total_neurons']}; random seeds {', '.join(map(str, info['seeds']))}. Numbers are "
             "ln(ppl with the set off / ppl of the unmodified model) on held-out texts: own = the set's language, "
             "others = the mean over the other languages, random = random sets of the same count per layer and kind "
             "on the own language; selectivity = own - others.\n",
             "## Summary (mean over languages)\n",
             md_table(result["summary"], cols("summary", "intervention", "method", "size", "neurons", "own", "others",
                                              "random", "selectivity", "selectivity_std", "own_minus_random",
                                              "langs_above_random", "beyond_rule")),
             "\n## Selectivity per language\n",
             md_table(result["selectivity"], cols("selectivity", "intervention", "method", "size", "lang", "own",
                                                  "others", "random", "random_std", "selectivity", "own_minus_random",
                                                  "kinds")),
             "\n## Stability (Jaccard of the sets from the even and odd documents)\n",
             md_table(stability_summary(result["stability"]), cols("stability", "method", "size", "neurons", "jaccard",
                                                                   "chance", "min", "max"))
             if result["stability"] else "not measured\n",
             "\n## Agreement between methods (Jaccard over all layers, mean over languages)\n",
             md_table(agreement_summary(result["agreement"]), cols("agreement", "size", "method_a", "method_b",
                                                                   "jaccard", "min", "max"))
             if result["agreement"] else "one method only\n",
             "\n## Cost (seconds per thousand tokens)\n",
             md_table(result["cost"], COST.columns),
             ]
    if result.get("langid"):
        parts += ["\n## Language identification from the sets' units (all held-out texts)\n",
                  "Each held-out text gets, per language, the mean over that language's units of the share of its "
                  "tokens at which the unit fires (> 0); the prediction is the language of highest score (a tie: "
                  "the language named first, counted in ties). fastText labels the same texts; chance = 1 / "
                  "languages. Per language: langid.csv.\n",
                  md_table([r for r in result["langid"] if r["lang"] == "all"],
                           cols("langid", "method", "size", "variant", "units", "n", "accuracy", "ties",
                                "fasttext_accuracy", "chance"))]
    return "\n".join(parts)


def write_outputs(out: Path, result: Mapping[str, Any]) -> None:
    for key, file in (("selectivity", SELECTIVITY), ("summary", SUMMARY), ("matrix", MATRIX), ("stability", STABILITY),
                      ("agreement", AGREEMENT), ("cost", COST)):
        write_text(out / file.name, csv_text(result[key], _columns(result, key, file.columns)))
    if "langid" in result:
        write_text(out / LANGID.name, csv_text(result["langid"], _columns(result, "langid", LANGID.columns)))
    write_text(out / REPORT_MD, markdown(result))
    write_text(out / RESULTS.name, json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    plot_selectivity(out / SELECTIVITY_PLOT, result)
    if result["agreement"]:
        plot_agreement(out / AGREEMENT_PLOT, result)


def _save(fig: Any, path: Path) -> None:
    save_figure(fig, path, dpi=110, metadata={"Software": None})  # no version in the bytes: reruns compare equal


@plain_text
def plot_selectivity(path: Path, result: Mapping[str, Any]) -> None:
    """Per intervention: selectivity (own - others) and own - random by method and size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info, summary = result["info"], result["summary"]
    ivs = info["interventions"]
    fig, axes = plt.subplots(len(ivs), 2, figsize=(11, 3.6 * len(ivs)), squeeze=False)
    sizes = list(info["sizes"])
    methods = list(dict.fromkeys((r.get("units"), r["method"]) for r in summary))  # arms: a method on a unit kind
    width = 0.8 / len(methods)
    for i, iv in enumerate(ivs):
        for j, (col, title) in enumerate((("selectivity", "own - others"), ("own_minus_random", "own - random"))):
            ax = axes[i][j]
            for k, (u, m) in enumerate(methods):
                rows = [next(r for r in summary if r["intervention"] == iv and r["method"] == m and r.get("units") == u
                             and r["size"] == s) for s in sizes]
                ax.bar([x + (k - (len(methods) - 1) / 2) * width for x in range(len(sizes))], [r[col] for r in rows],
                       width, yerr=[r[f"{col}_std"] or 0.0 for r in rows], label=_label(rows[0]), capsize=2)
            ax.axhline(0, color="black", lw=0.6)
            ax.set_xticks(range(len(sizes)), [f"{s} ({info['sizes'][s]})" for s in sizes])
            ax.set_ylabel("ln ppl ratio (nats/token)")
            ax.set_title(f"{iv}: {title} (mean over languages)")
            ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


@plain_text
def plot_agreement(path: Path, result: Mapping[str, Any]) -> None:
    """Per size: the Jaccard between two methods' sets by layer (mean over languages)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = result["info"]
    sizes = list(info["sizes"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes), 3.4), squeeze=False)
    rows = [r for r in result["agreement"] if r["layer"] != "all"]
    pairs = list(dict.fromkeys((r.get("units"), r["method_a"], r["method_b"]) for r in rows))
    for ax, size in zip(axes[0], sizes):
        for u, a, b in pairs:
            layers = sorted({r["layer"] for r in rows})
            ys = []
            for layer in layers:
                vals = [r["jaccard"] for r in rows if r["size"] == size and (r["method_a"], r["method_b"]) == (a, b)
                        and r.get("units") == u and r["layer"] == layer and r["jaccard"] is not None]
                ys.append(statistics.fmean(vals) if vals else float("nan"))
            label = f"{a} vs {b}" if u in (None, "neurons") else f"{a} vs {b} [{u}]"
            ax.plot(layers, ys, marker=".", label=label)
        ax.set_title(f"size {size}")
        ax.set_xlabel("layer")
        ax.set_ylabel("Jaccard")
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
