"""One streaming pass over every language's documents: the activation statistics that the
statistics-based methods (LAPE, activation AP) and mean-patching are computed from.

What is read (``StatsRequest``), through ``mwork.hooks`` readers on the named sites, during a
plain forward pass of the decoder body (no LM head):

* ``positive``: per language, for every channel of a site (LAPE: ``ffn.act``, the output of the
  FFN activation), the number of tokens at which the value is > 0;
* ``doc_means``: per document, the sum over its tokens of each channel (activation AP divides
  it by the document's token count: the mean over tokens);
* ``site_means``: per language, the sum over its tokens of each channel (mean-patching).

Tokens. Documents are cut into windows of ``max_length`` tokens as in PLND detection
(``mwork.neurons.windows``: the tokenizer's special tokens added to every window; with
``truncate`` the first window only), run with the *packed* padding policy. Only the text tokens
are counted: the special tokens (e.g. Gemma's BOS) are the same in every language and would
only add a per-window constant. Windows of one language are sorted by length (longest first,
ties by document and window number) and batched, so a run depends only on the documents and
the settings. Nothing is kept per token: the cost over a plain forward pass is a masked sum per
read site and layer (``benchmarks/methods_cost.py`` measures it).

Parts. Document ``i`` of a language belongs to part ``i % parts``; every statistic is kept per
part, so disjoint halves of a corpus (``parts=2``: even and odd documents) come out of the same
pass, and their sum is the whole corpus.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from mwork.hooks import Hooks, packed_ids
from mwork.models.adapters import get_adapter
from mwork.models.loading import input_device
from mwork.neurons.windows import Window, Windowing
from mwork.texts import is_empty

#: which neuron kind's channels each readable site holds
SITE_KIND = {"ffn.act": "ffn", "ffn.up.out": "ffn", "ffn.in": "ffn", "q.out": "q", "k.out": "k", "v.out": "v"}
TOKEN_RULE = ("text tokens only: each window's special tokens (e.g. BOS) are run but not counted; documents in "
              "windows of max_length tokens (all windows, or the first with truncate), packed padding")


@dataclass(frozen=True)
class StatsRequest:
    """The statistics one pass must collect (site names from ``SITE_KIND``)."""

    positive: tuple[str, ...] = ()
    doc_means: tuple[str, ...] = ()
    site_means: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("positive", "doc_means", "site_means"):
            sites = tuple(dict.fromkeys(getattr(self, name)))
            bad = [s for s in sites if s not in SITE_KIND]
            if bad:
                raise ValueError(f"cannot collect statistics at {bad[0]!r}; sites: {', '.join(SITE_KIND)}")
            object.__setattr__(self, name, sites)

    def merge(self, other: "StatsRequest") -> "StatsRequest":
        return StatsRequest(self.positive + other.positive, self.doc_means + other.doc_means,
                            self.site_means + other.site_means)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.positive + self.doc_means + self.site_means))


@dataclass
class CorpusStats:
    """The statistics of one pass (see the module docstring); tensors are on the CPU.

    Per language: ``tokens`` (parts,) counted tokens; ``positive[site]`` (parts, layers, n) int64;
    ``site_sums[site]`` (parts, layers, n) float64; ``doc_sums[site]`` (docs, layers, n) float64
    for the non-empty documents, whose corpus positions are ``doc_index`` and token counts
    ``doc_tokens``; ``empty``: positions of documents with no token."""

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
            {lang: t[docs[lang]].clone() for lang, t in self.doc_index.items()}, empty, info)

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


class _Batch:
    """What the readers need to know about the batch being run."""

    mask: torch.Tensor  # (B, T) bool: the counted positions
    slot: torch.Tensor  # (B,) long: row -> the document's slot in doc_sums
    part: torch.Tensor  # (B,) long: row -> the document's part


def collect_statistics(
    model: torch.nn.Module,
    tokenizer: Any,
    corpora: Mapping[str, Sequence[str]],
    request: StatsRequest,
    *,
    max_length: int = 512,
    truncate: bool = False,
    batch_size: int = 8,
    parts: int = 1,
    progress: bool = True,
    layers: Sequence[int] | None = None,
) -> CorpusStats:
    """The statistics ``request`` asks for over ``corpora`` (``{lang: documents}``), in one
    forward pass per batch (module docstring). An empty request runs the plain forward passes
    (the baseline of the cost measurement)."""
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    adapter = get_adapter(model)
    windowing = Windowing.for_tokenizer(tokenizer, max_length, truncate)
    layer_list = list(range(adapter.num_layers)) if layers is None else sorted(set(layers))
    width = adapter.neuron_counts()
    L = adapter.num_layers
    langs = tuple(corpora)
    state = _Batch()
    out = CorpusStats(langs, parts, adapter.fingerprint(), {}, {}, {}, {}, {}, {}, {},
                      {"token_rule": TOKEN_RULE, "max_length": max_length, "truncate": truncate,
                       "batch_size": batch_size, "window_rule": windowing.rule,
                       "special_tokens": {"prefix": list(windowing.prefix), "suffix": list(windowing.suffix)}})
    was_training = model.training
    model.eval()
    try:
        for lang in langs:
            windows, doc_index, empty = _windows(tokenizer, windowing, corpora[lang], f"statistics {lang}", progress)
            slots = {d: i for i, d in enumerate(doc_index)}
            n_docs = len(doc_index)
            out.tokens[lang] = torch.zeros(parts, dtype=torch.int64)
            out.positive[lang] = {s: torch.zeros(parts, L, width[SITE_KIND[s]], dtype=torch.int64)
                                  for s in request.positive}
            out.site_sums[lang] = {s: torch.zeros(parts, L, width[SITE_KIND[s]], dtype=torch.float64)
                                   for s in request.site_means}
            out.doc_sums[lang] = {s: torch.zeros(n_docs, L, width[SITE_KIND[s]], dtype=torch.float64)
                                  for s in request.doc_means}
            out.doc_tokens[lang] = torch.zeros(n_docs, dtype=torch.int64)
            out.doc_index[lang] = torch.tensor(doc_index, dtype=torch.int64)
            out.empty[lang] = empty
            hooks = Hooks()
            for site_name in request.sites:
                for layer in layer_list:
                    site = adapter.site(site_name, layer)
                    hooks.read(site, _reader(site, layer, state, out, lang, request))
            n_batches = (len(windows) + batch_size - 1) // batch_size
            with hooks, torch.no_grad():
                for b in tqdm(range(n_batches), desc=f"statistics {lang}", unit="batch", disable=not progress):
                    group = windows[b * batch_size:(b + 1) * batch_size]
                    ids, mask = _pack(group, windowing)
                    state.mask = mask
                    state.slot = torch.tensor([slots[w.doc] for w in group], dtype=torch.long)
                    state.part = torch.tensor([w.doc % parts for w in group], dtype=torch.long)
                    counted = mask.sum(1)
                    out.tokens[lang].index_add_(0, state.part, counted)
                    out.doc_tokens[lang].index_add_(0, state.slot, counted)
                    device = input_device(model)
                    ids = ids.to(device)
                    adapter.body(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        model.train(was_training)
    return out


def _windows(tokenizer: Any, windowing: Windowing, documents: Sequence[str], what: str = "statistics",
             progress: bool = False) -> tuple[list[Window], list[int], list[int]]:
    """The documents' windows, longest first; says how many (with ``progress``) and warns about a
    document far longer than the others (``Windowing.survey``)."""
    windows: list[Window] = []
    doc_index: list[int] = []
    empty: list[int] = []
    lengths: dict[int, int] = {}
    for i, text in enumerate(documents):
        if is_empty(text):
            empty.append(i)
            continue
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if not ids:
            empty.append(i)
            continue
        doc_index.append(i)
        lengths[i] = len(ids)
        windows.extend(windowing.split(i, ids))
    line = windowing.survey(lengths, what)
    if progress:
        tqdm.write(f"[mwork] {line}", file=sys.stderr)
    windows.sort(key=lambda w: (-len(w.ids), w.doc, w.part))
    return windows, doc_index, empty


def _pack(group: Sequence[Window], windowing: Windowing) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (run with an all-ones mask) and the counted (text) positions."""
    ids = packed_ids([w.ids for w in group], windowing.pad_id)
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    start, tail = len(windowing.prefix), len(windowing.suffix)
    for r, w in enumerate(group):
        mask[r, start:len(w.ids) - tail] = True
    return ids, mask


def _reader(site: Any, layer: int, state: _Batch, out: CorpusStats, lang: str,
            request: StatsRequest) -> Callable[[torch.Tensor], None]:
    name = site.name
    positive = out.positive[lang].get(name)
    sums = out.site_sums[lang].get(name)
    docs = out.doc_sums[lang].get(name)

    def read(value: torch.Tensor) -> None:
        v = site.channels(value)
        mask = state.mask.to(v.device)
        if positive is not None:
            counts = ((v > 0) & mask[..., None]).sum(1).cpu()  # (B, n) tokens with a positive value
            positive[:, layer].index_add_(0, state.part, counts)
        if sums is not None or docs is not None:
            x = v if v.dtype in (torch.float32, torch.float64) else v.float()  # no half-precision sums
            rows = torch.bmm(mask[:, None, :].to(x.dtype), x)[:, 0].to("cpu", torch.float64)  # (B, n) sums over tokens
            if sums is not None:
                sums[:, layer].index_add_(0, state.part, rows)
            if docs is not None:
                docs[:, layer].index_add_(0, state.slot, rows)

    return read
