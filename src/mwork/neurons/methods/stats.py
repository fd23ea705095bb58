"""The activation statistics that the statistics-based methods (LAPE, activation AP) and
mean-patching are computed from: a client of the one corpus pass (``mwork.corpus_pass``).

What is read (``StatsRequest``), at the named sites, in one pass over every language's documents:

* ``positive``: per language, for every channel of a site (LAPE: ``ffn.act``, the output of the
  FFN activation), the number of tokens at which the value is > 0 (``firing_probability``);
* ``doc_means``: per document, the sum over its tokens of each channel (activation AP divides
  it by the document's token count: the mean over tokens; ``doc_means``);
* ``site_means``: per language, the sum over its tokens of each channel (mean-patching;
  ``mean`` with row sums);
* ``statistics``: any other ``mwork.corpus_pass.Request`` (results in ``CorpusStats.extra``).

Dictionary features. The name :data:`FEATURES` stands, in ``positive`` / ``doc_means`` /
``site_means``, for the features of the unit set given to :func:`collect_statistics` (``units``,
e.g. a ``mwork.units.Dictionary``): their activations, encoded from the site the dictionary reads
(``mwork.corpus_pass.unit_request``), in the same pass as any neuron site. Their tensors have one
row holding every unit of the set in its order: (parts, 1, units) instead of (parts, layers, n).

Tokens: the pass's ``"windows"`` rule (documents cut into windows of ``max_length`` tokens as in
PLND detection, the tokenizer's special tokens added to every window and never counted; with
``truncate`` the first window only; packed padding; windows sorted longest first), so a run
depends only on the documents and the settings. Nothing is kept per token: the cost over a plain
forward pass is a masked sum per read site and layer (``benchmarks/methods_cost.py`` measures it).

Parts. Document ``i`` of a language belongs to part ``i % parts``; every statistic is kept per
part, so disjoint halves of a corpus (``parts=2``: even and odd documents) come out of the same
pass, and their sum is the whole corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from mwork.corpus_pass import PassOptions, TOKEN_RULES, Request, corpus_pass, unit_request
from mwork.models.adapters import get_adapter

#: which neuron kind's channels each readable site holds
SITE_KIND = {"ffn.act": "ffn", "ffn.up.out": "ffn", "ffn.in": "ffn", "q.out": "q", "k.out": "k", "v.out": "v"}
TOKEN_RULE = TOKEN_RULES["windows"]
#: the name that stands for the features of the unit set a pass is given (module docstring)
FEATURES = "features"


@dataclass(frozen=True)
class StatsRequest:
    """The statistics one pass must collect (site names from ``SITE_KIND``); ``statistics``:
    any further ``mwork.corpus_pass.Request`` (a statistic class of the registry or your own)."""

    positive: tuple[str, ...] = ()
    doc_means: tuple[str, ...] = ()
    site_means: tuple[str, ...] = ()
    statistics: tuple[Request, ...] = ()

    def __post_init__(self) -> None:
        for name in ("positive", "doc_means", "site_means"):
            sites = tuple(dict.fromkeys(getattr(self, name)))
            bad = [s for s in sites if s not in SITE_KIND and s != FEATURES]
            if bad:
                raise ValueError(f"cannot collect statistics at {bad[0]!r}; sites: {', '.join(SITE_KIND)} (and "
                                 f"{FEATURES!r}: a dictionary's features)")
            object.__setattr__(self, name, sites)
        object.__setattr__(self, "statistics", tuple({r.key: r for r in self.statistics}.values()))

    def merge(self, other: "StatsRequest") -> "StatsRequest":
        return StatsRequest(self.positive + other.positive, self.doc_means + other.doc_means,
                            self.site_means + other.site_means, self.statistics + other.statistics)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.positive + self.doc_means + self.site_means
                                   + tuple(r.site for r in self.statistics)))

    @property
    def features(self) -> bool:
        """Whether a unit set's features are asked for (:data:`FEATURES`)."""
        return FEATURES in self.positive + self.doc_means + self.site_means

    def requests(self, width: Mapping[str, int], layers: Sequence[int] | None = None,
                 units: Any = None) -> list[Request]:
        """The corpus-pass requests (``width``: channels per neuron kind; ``units``: the set whose
        features :data:`FEATURES` names)."""
        if self.features and units is None:
            raise ValueError(f"the statistics ask for {FEATURES!r}: give the unit set (a dictionary) they are of")

        def ask(statistic: str, site: str, key: str, **options: Any) -> Request:
            if site == FEATURES:
                return unit_request(statistic, units, options, key=f"{key}@{site}")
            return Request(statistic, site, layers, options, width=width[SITE_KIND[site]], key=f"{key}@{site}")

        return ([ask("firing_probability", s, "positive") for s in self.positive]
                + [ask("mean", s, "site_means", sum="rows") for s in self.site_means]
                + [ask("doc_means", s, "doc_means") for s in self.doc_means] + list(self.statistics))


@dataclass
class CorpusStats:
    """The statistics of one pass (see the module docstring); tensors are on the CPU.

    Per language: ``tokens`` (parts,) counted tokens; ``positive[site]`` (parts, layers, n) int64;
    ``site_sums[site]`` (parts, layers, n) float64; ``doc_sums[site]`` (docs, layers, n) float64
    for the non-empty documents, whose corpus positions are ``doc_index`` and token counts
    ``doc_tokens``; ``empty``: positions of documents with no token. ``extra``: the statistics of
    ``StatsRequest.statistics``, ``{key: {lang: {layer: Statistic}}}`` (of the whole corpus; a
    statistic that keeps parts says so itself)."""

    langs: tuple[str, ...]
    parts: int
    fingerprint: dict[str, Any]
    tokens: dict[str, torch.Tensor]
    positive: dict[str, dict[str, torch.Tensor]]
    site_sums: dict[str, dict[str, torch.Tensor]]
    doc_sums: dict[str, dict[str, torch.Tensor]]
    doc_tokens: dict[str, torch.Tensor]
    doc_index: dict[str, torch.Tensor]
    empty: dict[str, list[int]]
    info: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def part(self, p: int | None) -> "CorpusStats":
        """The statistics of part ``p`` alone (None: the whole corpus), as a one-part result."""
        if p is not None and not 0 <= p < self.parts:
            raise ValueError(f"part {p} out of range: the statistics have parts 0..{self.parts - 1}")

        def pick(t: torch.Tensor) -> torch.Tensor:
            return (t.sum(0) if p is None else t[p])[None].clone()

        docs = {lang: (torch.ones_like(self.doc_index[lang], dtype=torch.bool) if p is None
                       else self.doc_index[lang] % self.parts == p) for lang in self.langs}
        empty = {lang: [i for i in self.empty[lang] if p is None or i % self.parts == p] for lang in self.langs}
        info = dict(self.info, part=None if p is None else f"{p} of {self.parts} (documents i with i % {self.parts} "
                    f"== {p})")
        return CorpusStats(
            self.langs, 1, self.fingerprint, {lang: pick(t) for lang, t in self.tokens.items()},
            {lang: {s: pick(t) for s, t in d.items()} for lang, d in self.positive.items()},
            {lang: {s: pick(t) for s, t in d.items()} for lang, d in self.site_sums.items()},
            {lang: {s: t[docs[lang]].clone() for s, t in d.items()} for lang, d in self.doc_sums.items()},
            {lang: t[docs[lang]].clone() for lang, t in self.doc_tokens.items()},
            {lang: t[docs[lang]].clone() for lang, t in self.doc_index.items()}, empty, info, self.extra)

    def n_tokens(self, lang: str) -> int:
        return int(self.tokens[lang].sum())

    def check_tokens(self, what: str) -> None:
        """A clear error for a language without a single counted token."""
        none = [lang for lang in self.langs if self.n_tokens(lang) == 0]
        if none:
            raise ValueError(f"{what}: the corpus of {', '.join(none)} has no token to count (all documents empty?)")

    def language_means(self, site: str) -> dict[str, torch.Tensor]:
        """Per language, the mean over its tokens of every channel at ``site`` (layers, n)."""
        self.check_tokens(f"means at {site}")
        return {lang: self.site_sums[lang][site].sum(0) / self.n_tokens(lang) for lang in self.langs}

    def doc_means(self, site: str) -> dict[str, torch.Tensor]:
        """Per language, each non-empty document's mean over its tokens at ``site`` (docs, layers, n)."""
        return {lang: self.doc_sums[lang][site] / self.doc_tokens[lang].to(torch.float64)[:, None, None]
                for lang in self.langs}


def collect_statistics(
    model: torch.nn.Module,
    tokenizer: Any,
    corpora: Mapping[str, Sequence[str]],
    request: StatsRequest,
    options: PassOptions = PassOptions(),
    *,
    progress: bool = True,
    layers: Sequence[int] | None = None,
    units: Any = None,
) -> CorpusStats:
    """The statistics ``request`` asks for over ``corpora`` (``{lang: documents}``), in one
    forward pass per batch (module docstring), with the windows and batching of ``options``
    (``parts``: per-part counts, e.g. even and odd documents); ``units``: the dictionary whose
    features :data:`FEATURES` names (checked against the model first). An empty request runs the
    plain forward passes (the baseline of the cost measurement)."""
    parts = options.parts
    if options.tokens != "windows":
        raise ValueError(f"the detection statistics count every token of every window (tokens='windows'), not "
                         f"{options.tokens!r}")
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    if options.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {options.batch_size}")
    adapter = get_adapter(model)
    width = adapter.neuron_counts()
    L = adapter.num_layers
    layer_list = None if layers is None else sorted(set(layers))
    if request.features and units is not None:
        units.check_compatible(model)
    run = corpus_pass(model, tokenizer, corpora, request.requests(width, layer_list, units), options,
                      progress=progress, desc="statistics {lang}")

    def gather(key: str, site: str, lang: str, rows: int, dtype: torch.dtype, attr: str) -> torch.Tensor:
        if site == FEATURES:  # one row: every unit of the set, in its order
            t = torch.zeros(rows, 1, units.count(), dtype=dtype)
            for layer, stat in run.statistics[f"{key}@{site}"][lang].items():
                t[:, 0, units.positions(layer)] = getattr(stat, attr)
            return t
        t = torch.zeros(rows, L, width[SITE_KIND[site]], dtype=dtype)
        for layer, stat in run.statistics[f"{key}@{site}"][lang].items():
            t[:, layer] = getattr(stat, attr)
        return t

    langs = tuple(corpora)
    n_docs = {lang: len(run.corpora[lang].measured) for lang in langs}
    return CorpusStats(
        langs, parts, adapter.fingerprint(), run.tokens,
        {lang: {s: gather("positive", s, lang, parts, torch.int64, "counts") for s in request.positive}
         for lang in langs},
        {lang: {s: gather("site_means", s, lang, parts, torch.float64, "sums") for s in request.site_means}
         for lang in langs},
        {lang: {s: gather("doc_means", s, lang, n_docs[lang], torch.float64, "sums") for s in request.doc_means}
         for lang in langs},
        run.doc_tokens, {lang: torch.tensor(run.corpora[lang].measured, dtype=torch.int64) for lang in langs},
        run.empty,
        {"token_rule": TOKEN_RULE, "max_length": options.max_length, "truncate": options.truncate,
         "batch_size": options.batch_size,
         "window_rule": run.info["window_rule"], "special_tokens": run.info["special_tokens"]},
        {r.key: run.statistics[r.key] for r in request.statistics})
