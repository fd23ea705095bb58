"""``lens.png``: English / non-English share per layer, one panel per input language (as the
paper's Figure 1)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mwork.plotting import plain_text, save_figure  # noqa: E402


def _get(row: Any, key: str) -> float:
    value = row[key] if isinstance(row, Mapping) else getattr(row, key)
    return math.nan if value is None else float(value)


@plain_text
def plot_shares(
    shares: Mapping[str, Sequence[Any]], path: str | Path, title: str = "", show_unknown: bool = True
) -> Path:
    """Plot per-layer shares (rows as :class:`~mwork.lens.shares.LayerShares` or dicts with
    ``layer``, ``english_share``, ``non_english_share``, ``unknown_share``)."""
    langs = list(shares)
    if not langs:
        raise ValueError("nothing to plot: no input languages")
    ncols = min(len(langs), 3)
    nrows = math.ceil(len(langs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False, sharey=True)
    for ax, lang in zip(axes.flat, langs):
        rows = shares[lang]
        layers = [int(_get(r, "layer")) for r in rows]
        ax.plot(layers, [_get(r, "english_share") for r in rows], "-o", ms=3, color="tab:blue", label="English")
        ax.plot(layers, [_get(r, "non_english_share") for r in rows], "-s", ms=3, color="tab:red",
                label="non-English")
        if show_unknown:
            ax.plot(layers, [_get(r, "unknown_share") for r in rows], ":", color="0.5",
                    label="unknown (of all tokens)")
        ax.set_title(f"input: {lang}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(min(layers), max(layers))
        ax.grid(alpha=0.3)
        ax.set_xlabel("layer (0 = embeddings)")
    for ax in axes[:, 0]:
        ax.set_ylabel("share of decoded tokens")
    for ax in list(axes.flat)[len(langs):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07 if nrows == 1 else 0.04, 1, 1))
    return save_figure(fig, path)
