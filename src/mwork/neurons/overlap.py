"""Counts and overlaps of NeuronSets: neurons per layer and kind, share of all neurons, Jaccard overlaps.

``write_stats`` writes, for researchers to reload or plot again:

* ``counts_per_layer.csv``: set, language, kind, layer, count, neurons in that layer;
* ``summary.csv``: per set and kind (and ``all``), count, total neurons, fraction of them;
  ``fraction_of_model`` is always over all the model's FFN + Q + K + V neurons (the paper's 0.13 %);
* ``jaccard.csv``: pairwise Jaccard overlap (all kinds together) as a matrix;
  ``jaccard_by_kind.csv``: the same per kind, with intersection and union sizes;
* ``per_layer.png``: neurons per layer, one panel per kind, one line per set;
* ``jaccard.png``: the overlap heatmap;
* ``counts_per_expert.csv`` (sets of a mixture-of-experts model only, whose fingerprint records
  its experts): set, language, layer, expert (``shared`` for a shared expert), FFN neurons of the
  set in that expert, the expert's channels.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from mwork.models.adapters import KINDS
from mwork.neurons.neuronset import NeuronSet, set_path
from mwork.plotting import plain_text, save_figure


def _kinds(sets: Sequence[NeuronSet]) -> list[str]:
    present = {k for ns in sets for k in ns.kinds}
    return [k for k in KINDS if k in present]


def summary_rows(sets: Sequence[NeuronSet], names: Sequence[str]) -> list[dict]:
    rows = []
    for name, ns in zip(names, sets):
        model_total = ns.total_neurons()
        for kind in [*ns.kinds, "all"]:
            count = ns.count(None if kind == "all" else kind)
            total = model_total if kind == "all" else ns.masks[kind].numel()
            rows.append({"set": name, "language": ns.meta.get("language", ""), "kind": kind, "count": count,
                         "total": total, "fraction": count / max(total, 1),
                         "fraction_of_model": count / max(model_total, 1)})
    return rows


def layer_rows(sets: Sequence[NeuronSet], names: Sequence[str]) -> list[dict]:
    rows = []
    for name, ns in zip(names, sets):
        for kind, m in ns.masks.items():
            for layer, count in enumerate(m.sum(dim=1).tolist()):
                rows.append({"set": name, "language": ns.meta.get("language", ""), "kind": kind, "layer": layer,
                             "count": count, "neurons_in_layer": m.shape[1]})
    return rows


def jaccard_rows(sets: Sequence[NeuronSet], names: Sequence[str]) -> list[dict]:
    rows = []
    for i, (a_name, a) in enumerate(zip(names, sets)):
        for j, (b_name, b) in enumerate(zip(names, sets)):
            for kind in [*_kinds(sets), "all"]:
                ka = a if kind == "all" else a.restrict(kinds=[kind])
                kb = b if kind == "all" else b.restrict(kinds=[kind])
                inter, union = (ka & kb).count(), (ka | kb).count()
                rows.append({"a": a_name, "b": b_name, "kind": kind, "intersection": inter, "union": union,
                             "jaccard": inter / union if union else 1.0})
    return rows


def expert_rows(sets: Sequence[NeuronSet], names: Sequence[str]) -> list[dict]:
    """FFN neurons per (layer, expert) of sets whose fingerprint records experts (MoE models,
    ``NeuronSet.expert_counts``)."""
    rows = []
    for name, ns in zip(names, sets):
        counts = ns.expert_counts()
        if counts is None:
            continue
        experts = ns.fingerprint["experts"]
        E, I, S = experts["num_experts"], experts["expert_size"], experts["shared_expert_size"]
        labels = [(str(e), I) for e in range(E)] + ([("shared", S)] if S else [])
        for layer, row in enumerate(counts.tolist()):
            for (expert, size), count in zip(labels, row):
                rows.append({"set": name, "language": ns.meta.get("language", ""), "layer": layer, "expert": expert,
                             "count": int(count), "channels": size})
    return rows


def jaccard_matrix(sets: Sequence[NeuronSet]) -> list[list[float]]:
    return [[a.jaccard(b) for b in sets] for a in sets]


def _save_png(fig, path: Path) -> None:
    """Write the figure atomically (a full disk: one line naming the file) and close it."""
    save_figure(fig, path)


def _write_csv(path: Path, rows: list[dict]) -> None:
    from mwork.files import atomic_write

    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def default_names(sets: Sequence[NeuronSet]) -> list[str]:
    """The sets' languages (or names), made unique with a number where they repeat."""
    base = [str(ns.meta.get("language") or ns.meta.get("name") or f"set{i}") for i, ns in enumerate(sets)]
    return [b if base.count(b) == 1 else f"{b}#{i}" for i, b in enumerate(base)]


def named_sets(sets: Sequence[NeuronSet | str | Path]) -> tuple[list[NeuronSet], list[str]]:
    """NeuronSets (or their files, loaded) and a name for each: the file names without suffix
    when they are unique (``fr.safetensors`` -> ``fr``), else ``default_names``."""
    loaded = [s if isinstance(s, NeuronSet) else NeuronSet.load(s) for s in sets]
    names = [None if isinstance(s, NeuronSet) else set_path(s).stem for s in sets]
    if None in names or len(set(names)) != len(names):
        return loaded, default_names(loaded)
    return loaded, names


def write_stats(sets: Sequence[NeuronSet], out_dir: str | Path, names: Sequence[str] | None = None) -> dict[str, Path]:
    """Write the CSV tables and PNG plots described in the module docstring; returns their paths."""
    if not sets:
        raise ValueError("no NeuronSets given")
    names = list(names) if names is not None else default_names(sets)
    if len(names) != len(sets) or len(set(names)) != len(names):
        raise ValueError(f"need one unique name per set, got {names}")
    for ns in sets[1:]:
        sets[0]._check_same_shape(ns)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.csv", "counts_per_layer": out / "counts_per_layer.csv",
             "jaccard": out / "jaccard.csv", "jaccard_by_kind": out / "jaccard_by_kind.csv",
             "per_layer_png": out / "per_layer.png", "jaccard_png": out / "jaccard.png"}
    _write_csv(paths["summary"], summary_rows(sets, names))
    _write_csv(paths["counts_per_layer"], layer_rows(sets, names))
    _write_csv(paths["jaccard_by_kind"], jaccard_rows(sets, names))
    matrix = jaccard_matrix(sets)
    table = [{"set": n, **{m: f"{v:.6f}" for m, v in zip(names, row)}} for n, row in zip(names, matrix)]
    _write_csv(paths["jaccard"], table)
    experts = expert_rows(sets, names)
    if experts:
        paths["counts_per_expert"] = out / "counts_per_expert.csv"
        _write_csv(paths["counts_per_expert"], experts)
    _plot_layers(sets, names, paths["per_layer_png"])
    _plot_jaccard(matrix, names, paths["jaccard_png"])
    return paths


@plain_text
def _plot_layers(sets: Sequence[NeuronSet], names: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    kinds = _kinds(sets)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for name, ns in zip(names, sets):
            if kind in ns.masks:
                per_layer = ns.masks[kind].sum(dim=1).tolist()
                ax.plot(range(len(per_layer)), per_layer, marker="o", markersize=3, label=name)
        ax.set_title(f"{kind} neurons per layer")
        ax.set_xlabel("layer")
        ax.set_ylabel("count")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    _save_png(fig, path)


@plain_text
def _plot_jaccard(matrix: list[list[float]], names: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.6 * n))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i][j]:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if matrix[i][j] > 0.6 else "white")
    ax.set_title("Jaccard overlap")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save_png(fig, path)
