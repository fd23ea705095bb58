"""Residual-stream language vectors (DiffMean), the lever CLaS-Bench finds strongest.

For language ``L`` and layer ``l``: ``v_l(L) = mean(h_l over L's tokens) - mean(h_l over the other
languages' tokens)``, ``h_l`` the output of decoder layer ``l`` (the site ``layer.out``; another
residual-stream site may be chosen), the means over every counted token of the corpora, pooled
(the other languages' mean weighs each of their tokens alike). Computed in one corpus pass
(``mwork.corpus_pass``, the detection methods' token rule: text tokens of windows of
``max_length`` tokens, special tokens not counted), sums in float64.

Each language's vectors are a :class:`mwork.units.Directions` set, one direction per layer, with
two statistics per direction: ``mean`` (the mean coordinate of the language's own tokens along
it, what ``mwork.steer(..., mode="set")`` moves toward) and ``mean_other`` (the other languages'
mean coordinate). ``mwork.steer(model, mwork.load_units("out/fr.safetensors"), "add", 4.0,
layers="8")`` adds ``4 v`` to the residual stream after layer 8; ``off=`` the source language's
vectors removes its direction first; ``keep_norm=True`` restores each hidden state's norm.

``mwork vectors --corpus en=SPEC --corpus fr=SPEC ... --out DIR`` writes ``DIR/LANG.safetensors``
(+ ``.json``) per language, ``vectors.csv`` (language, layer, norm, both mean coordinates, the
cosine with each other language's vector), ``vectors.json`` (settings, corpora, model) and
``vectors.png`` (norm per layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from mwork.config import fingerprint, option
from mwork.corpus_pass import PassOptions, Request, corpus_pass
from mwork.jobs import CorpusOptions, Job, ModelOptions, RunOptions
from mwork.models.adapters import get_adapter, model_name
from mwork.units.directions import RESIDUAL_SITES, Directions
from mwork.units.edit import check_layers

RULE = ("DiffMean: per layer, the mean residual stream (the site's value) over the language's counted tokens minus "
        "the mean over every other language's counted tokens, pooled; text tokens of max_length windows, special "
        "tokens not counted; sums in float64")


def _layers(spec: str | None) -> list[int] | None:
    from mwork.intervene import parse_layers

    return parse_layers(spec)


def language_vectors(model: torch.nn.Module, tokenizer: Any, corpora: Mapping[str, Sequence[str]], *,
                     layers: Sequence[int] | None = None, site: str = "layer.out", max_length: int = 512,
                     batch_size: int = 8, progress: bool = True) -> tuple[dict[str, Directions], dict[str, int]]:
    """DiffMean vectors of every language of ``corpora`` (``{lang: documents}``, at least two) at
    ``layers`` (default all) of ``site``; returns ``({lang: Directions}, {lang: counted tokens})``."""
    if len(corpora) < 2:
        raise ValueError("language vectors need at least two languages: each is measured against the others")
    if site not in RESIDUAL_SITES:
        raise ValueError(f"language vectors live in the residual stream; site must be one of {', '.join(RESIDUAL_SITES)}")
    adapter = get_adapter(model)
    check_layers(adapter.num_layers, layers)
    layer_list = list(range(adapter.num_layers)) if layers is None else sorted(set(int(i) for i in layers))
    request = Request("mean", site, layer_list, {"sum": "rows"}, key="mean")
    run = corpus_pass(model, tokenizer, corpora, [request], PassOptions("windows", max_length, batch_size=batch_size),
                      progress=progress, desc="vectors {lang}")
    counts = {lang: run.n_tokens(lang) for lang in run.languages}
    empty = [lang for lang, n in counts.items() if n == 0]
    if empty:
        raise ValueError(f"no token of {', '.join(empty)} was counted: give those languages some text")
    means = {lang: run.stacked("mean", lang).to(torch.float64) for lang in run.languages}  # (layers, hidden)
    fp = adapter.fingerprint()
    out = {}
    for lang in run.languages:
        others = [o for o in run.languages if o != lang]
        total = sum(counts[o] for o in others)
        rest = sum(means[o] * counts[o] for o in others) / total
        v = means[lang] - rest
        norm2 = (v * v).sum(-1)
        read = v / norm2[:, None]
        stats = {"mean": (means[lang] * read).sum(-1), "mean_other": (rest * read).sum(-1)}
        meta = {"language": lang, "others": others, "rule": RULE, "n_tokens": counts[lang],
                "n_tokens_other": total, "fingerprint": fp, "model_id": model_name(model)}
        out[lang] = Directions(v.float(), layer_list, site=site, read=read.float(), names=[lang] * len(layer_list),
                               stats=stats, meta=meta)
    return out, counts


@dataclass
class VectorsResult:
    """Each language's vectors, a row per (language, layer) and the run's metadata."""

    vectors: dict[str, Directions]
    rows: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def write(self, out: str | Path) -> dict[str, Path]:
        from mwork.files import child_path, make_folder, write_csv, write_json

        folder = make_folder(out)
        files: dict[str, Path] = {}
        for lang, dirs in self.vectors.items():
            files[lang] = dirs.save(child_path(folder, lang, ".safetensors"))
        files["csv"] = write_csv(folder / "vectors.csv", self.rows)
        write_json(folder / "vectors.json", self.meta, indent=2, sort_keys=True)
        files["json"] = folder / "vectors.json"
        files["png"] = plot_norms(self.rows, folder / "vectors.png")
        return files


def plot_norms(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """The norm of each language's vector per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mwork.plotting import plain_text, save_figure

    @plain_text
    def draw() -> Any:
        fig, ax = plt.subplots(figsize=(7, 4))
        for lang in dict.fromkeys(r["language"] for r in rows):
            mine = [r for r in rows if r["language"] == lang]
            ax.plot([r["layer"] for r in mine], [r["norm"] for r in mine], marker="o", label=lang)
        ax.set_xlabel("layer")
        ax.set_ylabel("|v| (DiffMean)")
        ax.set_title("language vectors: norm per layer")
        ax.legend()
        fig.tight_layout()
        return fig

    return save_figure(draw(), path, metadata={"Software": None})


def vector_rows(vectors: Mapping[str, Directions]) -> list[dict[str, Any]]:
    """A row per (language, layer): norm, mean coordinates, cosine with each other language."""
    rows = []
    langs = list(vectors)
    for lang, dirs in vectors.items():
        for j, layer in enumerate(dirs.layers.tolist()):
            v = dirs.write[j].double()
            row = {"language": lang, "layer": layer, "norm": round(float(v.norm()), 6),
                   "mean": round(float(dirs.stats["mean"][j]), 6),
                   "mean_other": round(float(dirs.stats["mean_other"][j]), 6)}
            for other in langs:
                w = vectors[other].write[j].double()
                cos = float(v.dot(w) / (v.norm() * w.norm()))
                row[f"cos_{other}"] = round(cos, 6) if math.isfinite(cos) else None
            rows.append(row)
    return rows


@dataclass(frozen=True, kw_only=True)
class VectorsConfig(ModelOptions, CorpusOptions, RunOptions, Job):
    """Residual-stream language vectors (DiffMean) per language and layer."""

    command = "vectors"
    summary = "residual-stream language vectors (DiffMean) per language and layer, for mwork.steer"

    layers: str | None = option(None, "layers, e.g. 4-12 or 3,7 (default: every layer)")
    site: str = option("layer.out", "the residual-stream site the vectors live at", choices=RESIDUAL_SITES)

    def check(self) -> None:
        self.check_corpus(min_languages=2)
        _layers(self.layers)
        if self.site not in RESIDUAL_SITES:
            raise ValueError(f"site must be one of {', '.join(RESIDUAL_SITES)}, got {self.site!r}")

    def compute(self, model: Any, tokenizer: Any) -> VectorsResult:
        texts, info = self.read_corpus()
        vectors, counts = language_vectors(model, tokenizer, texts, layers=_layers(self.layers), site=self.site,
                                           max_length=self.max_length, batch_size=self.batch_size,
                                           progress=self.progress)
        meta = {"config": fingerprint(self), "rule": RULE, "corpora": info, "n_tokens": counts,
                "model": model_name(model), "fingerprint": get_adapter(model).fingerprint()}
        return VectorsResult(vectors, vector_rows(vectors), meta)


def register(sub: Any) -> None:
    from mwork.jobs import add_job_command

    add_job_command(sub, VectorsConfig, description=__doc__.split("\n\n")[1].replace("\n", " "))
