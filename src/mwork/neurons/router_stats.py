"""Per-language router statistics of mixture-of-experts models: how often the router of each
layer chooses each expert for the texts of each language, and how specific each expert is to
one language.

One streaming pass over the languages (:func:`router_statistics`, a client of
``mwork.corpus_pass``): documents are tokenized (truncated at ``max_length`` tokens), batched in
corpus order with the *packed* policy of ``mwork.hooks`` (real tokens first, all-ones mask, so
padding never changes a real token) and run through the model's body; a read at each layer's
``ffn.route`` site counts the experts chosen at the counted positions
(``corpus_statistics.RouterCounts``). Counted (the pass's ``"truncate-in-order"`` rule): every real
token, except the tokenizer's leading special tokens (the BOS, whose routing is the same for
every language). Reading the route alone stops the hook layer's
recomputation of each block right after its router: the pass costs about one forward pass.

What is reported, per language l, layer i, expert e (``n_l`` counted tokens of l):

* ``selections``: tokens of l the router sent to e; ``frequency`` f = selections / n_l, the
  share of l's tokens that go to e (it sums to k, the experts per token, over the experts);
* ``mean_weight``: the mean routing weight of e over those tokens;
* ``log2_ratio`` = log2(f_l / mean over languages of f): above 0, e is chosen more often for l
  than on average over the languages (-inf where e is never chosen for l);

and per layer and expert, over the languages (two or more):

* ``specificity`` = 1 - H(p) / log2(L), with p_l = f_l / sum_l' f_l' the share of e's (per-token
  normalised) selections that fall on language l and H the entropy in bits: 1 when e is
  chosen for one language only, 0 when it is chosen equally often for every language (NaN for
  an expert no language chose);
* ``top_language``: the language of the largest f, with its ``log2_ratio``.

:func:`write_router_stats` writes them as ``router_frequency.csv``, ``router_specificity.csv``,
``router.png`` and ``router.json`` (columns in docs/moe.md).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from mwork.config import option
from mwork.corpus_pass import PassOptions, TOKEN_RULES, Request, corpus_pass
from mwork.files import check_name, make_folder, write_json, write_text
from mwork.fingerprints import texts_digest
from mwork.hooks import MOE_SITES
from mwork.jobs import Job, ModelOptions, RunOptions
from mwork.models.adapters import get_adapter
from mwork.models.loading import DEFAULT_MODEL
from mwork.plotting import plain_text, save_figure
from mwork.texts import is_empty, read_texts

FILES = {"frequency": "router_frequency.csv", "specificity": "router_specificity.csv", "plot": "router.png",
         "meta": "router.json"}
POSITIONS_RULE = TOKEN_RULES["truncate-in-order"]
SPECIFICITY_RULE = ("1 - H(p)/log2(L), p_l = f_l / sum over languages of f, f_l the share of language l's tokens "
                    "routed to the expert; log2_ratio = log2(f_l / mean over languages of f)")


@dataclass(frozen=True, kw_only=True)
class RouterStatsConfig(ModelOptions, RunOptions, Job):
    """The settings of one router-statistics pass (the options of ``mwork stats --router``), and
    the job: ``RouterStatsConfig(corpora=("en=xquad:en", ...)).run().write(out)``."""

    model: str = option(DEFAULT_MODEL, "a mixture-of-experts model: hub id, local folder or built-in alias "
                        "(e.g. tiny-random-olmoe)")
    corpora: tuple[str, ...] = option((), "texts per language, LANG=SPEC (a file, xquad:LANG[A:B], builtin:LANG, "
                                      "hf:DATASET ...)", cli=False)
    max_length: int = option(512, "tokens per document (longer ones are truncated)")
    batch_size: int = option(8, "documents per batch", record=False)
    max_docs: int | None = option(None, "use the first N documents of each language")

    def __post_init__(self) -> None:
        parse_corpora(self.corpora)
        if self.max_length < 1 or self.batch_size < 1:
            raise ValueError("--max-length and --batch-size must be at least 1")
        if self.max_docs is not None and self.max_docs < 1:
            raise ValueError("--max-docs must be at least 1")

    def check(self) -> None:
        if not self.corpora:
            raise ValueError("--router needs --corpus LANG=SPEC for at least one language (e.g. --corpus en=xquad:en)")
        self.check_model_options()

    def compute(self, model: Any, tokenizer: Any) -> "RouterStatsResult":
        stats = router_statistics(model, tokenizer, parse_corpora(self.corpora), config=self, progress=self.progress)
        return RouterStatsResult(stats, {"model": self.model})


def parse_corpora(items: Sequence[str]) -> dict[str, str]:
    """``["en=a.txt", "fr=xquad:fr"]`` -> ``{"en": "a.txt", "fr": "xquad:fr"}`` (one per language)."""
    out: dict[str, str] = {}
    for item in items:
        lang, sep, spec = item.partition("=")
        if not sep or not lang.strip() or not spec.strip():
            raise ValueError(f"--corpus takes LANG=SPEC (e.g. fr=texts/fr.txt or zh=xquad:zh), got {item!r}")
        check_name(lang.strip(), "language code", "--corpus")
        if lang.strip() in out:
            raise ValueError(f"language {lang.strip()!r} is given twice in --corpus; give each language once")
        out[lang.strip()] = spec.strip()
    return out


@dataclass
class RouterStats:
    """Counts of one pass: ``selections`` and ``weight_sums`` (languages, layers, experts),
    ``tokens`` (languages,) counted per language; ``top_k`` experts per token; ``meta``."""

    languages: list[str]
    selections: torch.Tensor
    weight_sums: torch.Tensor
    tokens: torch.Tensor
    top_k: int
    meta: dict[str, Any] = field(default_factory=dict)

    def frequency(self) -> torch.Tensor:
        """(languages, layers, experts): share of each language's tokens routed to each expert."""
        return self.selections.double() / self.tokens.double().clamp(min=1)[:, None, None]

    def mean_weight(self) -> torch.Tensor:
        """(languages, layers, experts): mean routing weight over the tokens routed to the expert (NaN: none)."""
        return self.weight_sums / self.selections.double().where(self.selections > 0, torch.nan)

    def log2_ratio(self) -> torch.Tensor:
        """(languages, layers, experts): log2(f_l / mean over languages of f)."""
        f = self.frequency()
        return torch.log2(f / f.mean(0, keepdim=True))

    def specificity(self) -> torch.Tensor:
        """(layers, experts): 1 - H(p) / log2(L), p the expert's frequencies normalised over the languages."""
        f = self.frequency()
        L = f.shape[0]
        if L < 2:
            return torch.full(f.shape[1:], torch.nan, dtype=torch.float64)
        p = f / f.sum(0, keepdim=True)
        h = -(p * torch.log2(p)).nan_to_num(0.0).sum(0)  # 0 log 0 = 0
        spec = 1 - h / math.log2(L)
        return spec.where(f.sum(0) > 0, torch.nan)


@dataclass
class RouterStatsResult:
    """A pass's counts; ``write(out)`` writes the tables, the plot and the metadata (``FILES``)."""

    stats: RouterStats
    meta: dict[str, Any] = field(default_factory=dict)

    def write(self, out: str | Path) -> dict[str, Path]:
        return write_router_stats(self.stats, out, self.meta)

    def lines(self) -> list[str]:
        """What ``mwork stats --router`` prints: the tokens counted per language, the specificity."""
        stats = self.stats
        out = [f"{lang}: {n} tokens" for lang, n in zip(stats.languages, stats.tokens.tolist())]
        if len(stats.languages) > 1:
            spec = stats.specificity()
            out.append(f"expert specificity: mean {float(spec.nanmean()):.4f}, max {float(spec.nan_to_num(-1).max()):.4f}")
        return out


@torch.inference_mode()
def router_statistics(model: Any, tokenizer: Any, corpora: Mapping[str, str | Sequence[str]], *,
                      config: RouterStatsConfig | None = None, progress: bool = False) -> RouterStats:
    """Router statistics of ``model`` on the texts of each language (``{lang: spec or texts}``,
    a spec as ``mwork.texts.read_texts`` reads it); see the module docstring."""
    config = config or RouterStatsConfig()
    adapter = get_adapter(model)
    if not corpora:
        raise ValueError("no corpus given: pass at least one language's texts (--corpus LANG=SPEC)")
    try:
        adapter.site("ffn.route", 0)
    except ValueError:
        raise ValueError(f"{type(adapter).__name__} has no router ({', '.join(MOE_SITES)} are sites of "
                         "mixture-of-experts layers): router statistics need a mixture-of-experts model") from None
    texts = {lang: list(read_texts(v) if isinstance(v, (str, Path)) else v) for lang, v in corpora.items()}
    if config.max_docs is not None:
        texts = {lang: t[:config.max_docs] for lang, t in texts.items()}
    empty = [lang for lang, t in texts.items() if not any(not is_empty(x) for x in t)]
    if empty:
        raise ValueError(f"the corpus of {', '.join(empty)} has no non-empty document")
    E, layers, top_k = int(adapter.num_experts), adapter.num_layers, int(adapter.experts_per_token)
    langs = list(texts)
    selections = torch.zeros(len(langs), layers, E, dtype=torch.long)
    weights = torch.zeros(len(langs), layers, E, dtype=torch.float64)
    run = corpus_pass(model, tokenizer, texts, [Request("router_counts", "ffn.route", options={"experts": E},
                                                        key="router")],
                      PassOptions("truncate-in-order", config.max_length, batch_size=config.batch_size),
                      progress=progress, desc="router", unit="doc")
    for li, lang in enumerate(langs):
        for layer, counts in run.statistics["router"][lang].items():
            selections[li, layer], weights[li, layer] = counts.result()
    tokens = torch.tensor([run.n_tokens(lang) for lang in langs], dtype=torch.long)
    meta = {"languages": langs, "tokens": dict(zip(langs, tokens.tolist())), "num_experts": E, "top_k": top_k,
            "num_layers": layers, "max_length": config.max_length, "max_docs": config.max_docs,
            "corpora": {lang: (str(v) if isinstance(v, (str, Path)) else "texts") for lang, v in corpora.items()},
            "texts_sha256": {lang: texts_digest(t) for lang, t in texts.items()},
            "positions": POSITIONS_RULE, "specificity": SPECIFICITY_RULE}
    return RouterStats(langs, selections, weights, tokens, top_k, meta)


def frequency_rows(stats: RouterStats) -> list[dict[str, Any]]:
    f, w, r = stats.frequency(), stats.mean_weight(), stats.log2_ratio()
    rows = []
    for li, lang in enumerate(stats.languages):
        for layer in range(f.shape[1]):
            for e in range(f.shape[2]):
                rows.append({"language": lang, "layer": layer, "expert": e,
                             "selections": int(stats.selections[li, layer, e]), "tokens": int(stats.tokens[li]),
                             "frequency": float(f[li, layer, e]), "mean_weight": float(w[li, layer, e]),
                             "log2_ratio": float(r[li, layer, e])})
    return rows


def specificity_rows(stats: RouterStats) -> list[dict[str, Any]]:
    f, r, spec = stats.frequency(), stats.log2_ratio(), stats.specificity()
    L = f.shape[0]
    rows = []
    for layer in range(f.shape[1]):
        for e in range(f.shape[2]):
            top = int(f[:, layer, e].argmax())
            s = float(spec[layer, e])
            rows.append({"layer": layer, "expert": e, "specificity": s,
                         "entropy_bits": (1 - s) * math.log2(L) if L > 1 else float("nan"),
                         "top_language": stats.languages[top], "top_frequency": float(f[top, layer, e]),
                         "top_log2_ratio": float(r[top, layer, e])})
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_router_stats(stats: RouterStats, out_dir: str | Path, meta: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write the tables, the plot and the metadata (``FILES``) into ``out_dir``; returns their paths."""
    out = make_folder(out_dir)
    paths = {k: out / name for k, name in FILES.items()}
    write_text(paths["frequency"], _csv(frequency_rows(stats)))
    write_text(paths["specificity"], _csv(specificity_rows(stats)))
    write_json(paths["meta"], {**stats.meta, **dict(meta or {}), "files": FILES}, indent=2, sort_keys=True)
    _plot(stats, paths["plot"])
    return paths


@plain_text
def _plot(stats: RouterStats, path: Path) -> None:
    """One heatmap per language (layers x experts) of log2(f / mean f), and the specificity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    ratio, spec = stats.log2_ratio().clamp(-3, 3).nan_to_num(0.0), stats.specificity()
    L, layers, E = ratio.shape
    panels = L + (1 if L > 1 else 0)
    width = max(2.6, 0.16 * E + 1.2)
    fig, axes = plt.subplots(1, panels, figsize=(width * panels + 1.0, max(2.4, 0.25 * layers + 1.4)), squeeze=False,
                             sharey=True, constrained_layout=True)
    ratio_image = None
    for ax, (li, lang) in zip(axes[0], enumerate(stats.languages)):
        ratio_image = ax.imshow(ratio[li].numpy(), cmap="RdBu_r", vmin=-3, vmax=3, aspect="auto",
                                interpolation="nearest")
        ax.set_title(f"{lang}: log2(freq / mean)", fontsize=9)
    if L > 1:
        ax = axes[0][-1]
        image = ax.imshow(spec.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title("expert specificity", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.9)
    fig.colorbar(ratio_image, ax=axes[0][:L].tolist(), shrink=0.9)
    for ax in axes[0]:
        ax.set_xlabel("expert")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("layer")
    save_figure(fig, path, dpi=110)
