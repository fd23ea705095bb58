"""``latent_<task>.png``: Wendler et al.'s figure, one panel per lens; per target language its
P(target word) (solid) and P(English word) (dashed) per layer, with 95 % intervals."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mwork.plotting import plain_text, save_figure  # noqa: E402


@plain_text
def plot_latent(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Plot the ``latent.csv`` rows of one task (every pair and lens in them)."""
    lenses = list(dict.fromkeys(r["lens"] for r in rows))
    pairs = list(dict.fromkeys((r["source"], r["target"]) for r in rows))
    if not lenses:
        raise ValueError("nothing to plot: no rows")
    fig, axes = plt.subplots(1, len(lenses), figsize=(4.8 * len(lenses), 3.6), squeeze=False, sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, lens in zip(axes[0], lenses):
        for k, (source, target) in enumerate(pairs):
            rs = sorted((r for r in rows if r["lens"] == lens and (r["source"], r["target"]) == (source, target)),
                        key=lambda r: r["layer"])
            if not rs:
                continue
            c = colours[k % len(colours)]
            x = [r["layer"] for r in rs]
            label = target if source == target else f"{source}→{target}"
            ax.plot(x, [r["p_target"] for r in rs], "-", color=c, label=f"{label}: target")
            ax.fill_between(x, [r["p_target_lo"] for r in rs], [r["p_target_hi"] for r in rs], color=c, alpha=0.12)
            ax.plot(x, [r["p_english"] for r in rs], "--", color=c, label=f"{label}: English")
            ax.fill_between(x, [r["p_english_lo"] for r in rs], [r["p_english_hi"] for r in rs], color=c, alpha=0.06)
        ax.set_title(f"{lens} lens")
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("P(word): solid target, dashed English")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False, fontsize=8)
    if title:
        fig.suptitle(title)
    rows_of_legend = (len(labels) + 5) // 6
    fig.tight_layout(rect=(0, 0.06 * rows_of_legend + 0.02, 1, 1))
    return save_figure(fig, path)
