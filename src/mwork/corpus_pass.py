"""One streaming pass over a corpus: statistics of the values at named hook sites.

Every per-token statistic mwork measures over a corpus comes out of :func:`corpus_pass`:
steering's activation statistics (``mwork.neurons.statistics``), the statistics of the detection
methods LAPE and activation AP and of mean-patching (``mwork.neurons.methods.stats``), the
mixture-of-experts router counts (``mwork.neurons.router_stats``) and the per-layer residual
means (:func:`residual_means`, for language vectors).

**The pass.** Each language's documents (``{lang: documents}``, languages one after the other)
are tokenized and cut by the token rule (below), batched ``batch_size`` units (windows or
documents) at a time with the *packed* padding policy of ``mwork.hooks`` (real tokens first, an
all-ones mask: padding never changes a real token) and run through the model's decoder body (no
LM head; eval mode, no gradients). Each (site, layer) that some request names is read by ONE
``Hooks.read`` on ``adapter.site(name, layer)``, whatever the number of statistics there; each
distinct ``read`` transform is applied once per call, and each form of the values a statistic
takes (:attr:`Statistic.takes`) is made once per call, then given to every statistic that wants
it. Only the counted tokens' values reach a statistic.

**Which tokens count** (``tokens=``; one rule, three named choices -- the behaviours of the
passes this module replaced, kept bit for bit):

* ``"windows"`` (the default; detection methods and mean-patching): each document is tokenized
  without special tokens and cut into windows of ``max_length`` tokens with the tokenizer's
  special tokens added to every window (``mwork.neurons.windows``; with ``truncate``, the first
  window only). Counted: the text tokens -- never the special tokens, which are the same in every
  language. Units sorted longest first (ties: document, window number).
* ``"truncate-sorted"`` (steering's statistics): each document is tokenized with its special
  tokens and cut at ``max_length`` tokens. Counted: every token except the leading special
  tokens (the BOS); a document with nothing counted is not run. Units sorted longest first
  (ties: corpus order).
* ``"truncate-in-order"`` (router counts): each document is tokenized with its special tokens
  and the tokenizer's own truncation at ``max_length``. Counted: every token except the leading
  special tokens; every document with a token is run, in corpus order.

Empty documents (``mwork.texts.is_empty``, or no token at all) are never run; their corpus
positions are reported. A statistic sees where each counted token is: its document (corpus
position) and its position in the document (``Batch.positions``: for ``"windows"`` among the
document's text tokens, a window starting where the previous one ended; for the truncate rules
among the tokens after the leading special tokens), e.g. ``top_activations``, each unit's largest
values and where they happened. ``parts``: document ``i`` belongs to part ``i % parts``; statistics that
keep parts (means, firing counts) give disjoint halves of a corpus from the same pass.

**Requests.** A :class:`Request` names a statistic (a name in :data:`STATISTICS` or a
:class:`Statistic` subclass), a site, layers, the statistic's options and optionally a ``read``
transform, a callable ``(..., width) -> (..., n)`` (or one per layer: ``{layer: callable}``)
applied to the site's channels before the statistic sees them -- to read directions or
dictionary features instead of raw neurons. Results (:class:`PassResult`) are kept per request,
language and layer. :func:`unit_request` asks for a statistic of a unit set's values (dictionary
features: the encoder's activations at the site it reads, a transcoder's read site), so every
registered statistic (mean, firing_probability, quantiles, doc_means ...) works on features as
on neurons, in the same pass.

**A new statistic** is one class (:mod:`mwork.corpus_statistics`: what a statistic sees, the
registry and the built-in ones).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from mwork.corpus_statistics import STATISTICS, Batch, Corpus, Statistic
from mwork.hooks import MOE_SITES, SITES, Hooks, feature_width, packed_ids
from mwork.models.adapters import get_adapter
from mwork.models.loading import input_device
from mwork.neurons.windows import Windowing
from mwork.texts import is_empty

#: the token rules (``tokens=``), see the module docstring
TOKEN_RULES: dict[str, str] = {
    "windows": ("text tokens only: each window's special tokens (e.g. BOS) are run but not counted; documents in "
                "windows of max_length tokens (all windows, or the first with truncate), packed padding"),
    "truncate-sorted": ("every token of each document up to max_length tokens, except the tokenizer's leading "
                        "special tokens; documents batched with the packed policy (real tokens first, all-ones mask)"),
    "truncate-in-order": ("every real token of each document up to max_length tokens, except the tokenizer's "
                          "leading special tokens; documents batched with the packed policy (real tokens first, "
                          "all-ones mask)"),
}


# ---- requests and results ------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Request:
    """One statistic of the values at ``site`` (a name of ``hooks.SITES`` / ``hooks.MOE_SITES``)
    in ``layers`` (None: every layer). ``statistic``: a name in :data:`STATISTICS` or a
    :class:`Statistic` subclass; ``options``: its constructor's keywords. ``read``: a callable
    ``(..., width) -> (..., n)`` applied to the site's channels first, or ``{layer: callable}``
    (a layer missing from it is not read). ``width``: n (or ``{layer: n}``), when the pass cannot
    tell it (a ``read`` transform, a site that is no projection's input or output); without it a
    statistic makes its tensors at its first batch. ``key``: the name of
    the results (default ``"statistic@site"``)."""

    statistic: str | type[Statistic]
    site: str
    layers: Sequence[int] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    read: Callable[[torch.Tensor], torch.Tensor] | Mapping[int, Callable] | None = None
    width: int | Mapping[int, int] | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.site not in SITES and self.site not in MOE_SITES:
            raise ValueError(f"unknown site {self.site!r}; sites are {', '.join(SITES)} "
                             f"(and in mixture-of-experts layers {', '.join(MOE_SITES)})")
        self.statistic_class()  # a clear error for an unknown name
        if self.key is None:
            object.__setattr__(self, "key", f"{self.statistic_class().name or self.statistic_class().__name__}"
                                            f"@{self.site}")

    def statistic_class(self) -> type[Statistic]:
        if isinstance(self.statistic, type) and issubclass(self.statistic, Statistic):
            return self.statistic
        if self.statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {self.statistic!r}; statistics: {', '.join(STATISTICS)}")
        return STATISTICS[self.statistic]

    def reader(self, layer: int | None) -> Callable | None:
        """The read transform of ``layer`` (None: the raw channels)."""
        return self.read.get(layer) if isinstance(self.read, Mapping) else self.read

    def make(self) -> Statistic:
        return self.statistic_class()(**dict(self.options))


def unit_request(statistic: str | type[Statistic], units: Any, options: Mapping[str, Any] | None = None, *,
                 key: str | None = None) -> Request:
    """A :class:`Request` for ``statistic`` of the values of ``units`` (a unit set with
    ``reads()``, e.g. a ``mwork.units.Dictionary``: its features' activations, encoded from the
    value of the site it reads) at every layer it has units in. Results per layer hold that
    layer's units in the set's order (``units.positions(layer)`` places them in the set). Requests
    made from one set share its encoders, so the pass encodes once per call."""
    reads = getattr(units, "reads", None)
    if reads is None:
        raise TypeError(f"{type(units).__name__} does not say how its values are read (no reads()); the corpus pass "
                        "reads sites, directions and dictionary features")
    site, read, width = reads()
    return Request(statistic, site, sorted(read), dict(options or {}), read=read, width=width,
                   key=key or f"{Request(statistic, site).key}:{getattr(units, 'kind', 'units')}")


@dataclass
class PassResult:
    """What one pass gives, per language: ``tokens`` (parts,) counted tokens, ``doc_tokens``
    (documents run,) and ``corpora`` (:class:`Corpus`: which documents were run), ``empty``
    (corpus positions of the documents not run); ``statistics[key][lang][layer]``: the
    :class:`Statistic` objects (their ``result()``: :meth:`value`); ``info``: the rules."""

    languages: tuple[str, ...]
    parts: int
    corpora: dict[str, Corpus]
    tokens: dict[str, torch.Tensor]
    doc_tokens: dict[str, torch.Tensor]
    empty: dict[str, list[int]]
    statistics: dict[str, dict[str, dict[int | None, Statistic]]]
    info: dict[str, Any] = field(default_factory=dict)

    def value(self, key: str, lang: str, layer: int | None) -> Any:
        return self.statistics[key][lang][layer].result()

    def stacked(self, key: str, lang: str) -> torch.Tensor:
        """The results of ``key`` for ``lang``, stacked over its layers (in layer order)."""
        per = self.statistics[key][lang]
        return torch.stack([per[layer].result() for layer in sorted(per, key=lambda i: -1 if i is None else i)])

    def n_tokens(self, lang: str) -> int:
        return int(self.tokens[lang].sum())


# ---- the token rule --------------------------------------------------------------------------------


@dataclass
class _Unit:
    doc: int
    ids: list[int]
    start: int  # counted positions: ids[start:stop]
    stop: int
    offset: int = 0  # the position in its document of ids[start] (a window's first text token)


def _units(rule: str, tokenizer: Any, documents: Sequence[str], max_length: int, windowing: Windowing | None,
           what: str, progress: bool) -> tuple[list[_Unit], list[int], list[int]]:
    """The units (windows or documents) to run, in run order; the corpus positions of the
    documents run; those of the documents not run."""
    units: list[_Unit] = []
    measured: list[int] = []
    empty: list[int] = []
    if rule == "windows":
        assert windowing is not None
        lengths: dict[int, int] = {}
        windows = []
        for i, text in enumerate(documents):
            ids = [] if is_empty(text) else tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            if not ids:
                empty.append(i)
                continue
            measured.append(i)
            lengths[i] = len(ids)
            windows.extend(windowing.split(i, ids))
        line = windowing.survey(lengths, what)
        if progress:
            tqdm.write(f"[mwork] {line}", file=sys.stderr)
        windows.sort(key=lambda w: (-len(w.ids), w.doc, w.part))
        start, tail = len(windowing.prefix), len(windowing.suffix)
        step = windowing.max_length - start - tail  # text tokens per window
        return [_Unit(w.doc, w.ids, start, len(w.ids) - tail, w.part * step) for w in windows], measured, empty
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, text in enumerate(documents):
        if is_empty(text):
            empty.append(i)
            continue
        if rule == "truncate-sorted":
            ids = list(tokenizer(text).input_ids)[:max_length]
        else:
            ids = list(tokenizer(text, truncation=True, max_length=max_length)["input_ids"])
        lead = 0
        while lead < len(ids) and ids[lead] in special:
            lead += 1
        if not ids or (rule == "truncate-sorted" and len(ids) - lead < 1):
            empty.append(i)
            continue
        measured.append(i)
        units.append(_Unit(i, ids, lead, len(ids)))
    if rule == "truncate-sorted":
        units.sort(key=lambda u: -len(u.ids))  # stable: ties in corpus order
    return units, measured, empty


# ---- reading the sites -------------------------------------------------------------------------------


def site_width(adapter: Any, site: Any) -> int | None:
    """The channels of a site's tensor, where the pass can tell (None: it cannot)."""
    if site.index is not None:
        return len(site.index)
    if site.width is not None:
        return int(site.width)
    if site.name in ("layer.in", "layer.out", "attn.out", "o.out", "ffn.out", "final_norm.in"):
        return int(adapter.hidden_size)
    try:
        return feature_width(site.module, site.port == "in")
    except (AttributeError, TypeError):
        return None


class _SiteReader:
    """The one reader of a (site, layer): applies each read transform once per call, makes each
    form of the values once, gives them to the statistics there."""

    def __init__(self, site: Any):
        self.site = site
        self.groups: list[tuple[Callable | None, list[tuple[str, Request]]]] = []
        self.current: dict[str, Statistic] = {}  # request key -> this language's statistic
        self.batch: Batch | None = None

    def add(self, request: Request, read: Callable | None) -> None:
        for fn, members in self.groups:
            if fn is read:
                members.append((request.key, request))
                return
        self.groups.append((read, [(request.key, request)]))

    def __call__(self, value: Any) -> None:
        batch = self.batch
        for read, members in self.groups:
            forms: dict[str, Any] = {}
            for key, _ in members:
                stat = self.current[key]
                if stat.takes not in forms:
                    forms[stat.takes] = self._form(stat.takes, value, read, forms, batch)
                stat.update(forms[stat.takes], batch)

    def _form(self, takes: str, value: Any, read: Callable | None, forms: dict, batch: Batch) -> Any:
        if takes == "value":
            return value
        if "rows" not in forms:
            v = self.site.channels(value.detach())
            forms["rows"] = v if read is None else read(v)
        v = forms["rows"]
        if takes == "rows":
            return v
        if takes == "tokens":
            return v[batch.mask_on(v.device)].to("cpu", torch.float64)
        if takes == "row_sums":
            x = v if v.dtype in (torch.float32, torch.float64) else v.float()  # no half-precision sums
            return torch.bmm(batch.mask_on(x.device)[:, None, :].to(x.dtype), x)[:, 0].to("cpu", torch.float64)
        raise ValueError(f"a statistic takes 'tokens', 'row_sums', 'rows' or 'value', not {takes!r}")


@dataclass(frozen=True)
class PassOptions:
    """Which tokens a pass counts and how it batches them: ``tokens``, the token rule
    (:data:`TOKEN_RULES`); ``max_length`` tokens per window; ``truncate``: the first window of
    each document only (``"windows"``); ``batch_size`` windows per forward pass; ``parts``: the
    documents dealt into this many parts by index (per-part statistics, e.g. even/odd halves)."""

    tokens: str = "windows"
    max_length: int = 512
    truncate: bool = False
    batch_size: int = 8
    parts: int = 1


def corpus_pass(model: torch.nn.Module, tokenizer: Any, corpora: Mapping[str, Iterable[str]],
                requests: Sequence[Request], options: PassOptions = PassOptions(), *, progress: bool = True,
                desc: str = "statistics {lang}", unit: str = "batch") -> PassResult:
    """Every statistic of ``requests`` over ``corpora`` (``{lang: documents}``) in one pass
    (module docstring), with the token rule and batching of ``options``. Progress: ``desc``
    ("{lang}": one bar per language) over batches, or with ``unit="doc"`` one bar over every
    language's documents. No request: plain forward passes (the baseline of a cost measurement)."""
    tokens, max_length, truncate = options.tokens, options.max_length, options.truncate
    batch_size, parts = options.batch_size, options.parts
    if tokens not in TOKEN_RULES:
        raise ValueError(f"unknown token rule {tokens!r}; rules: {', '.join(TOKEN_RULES)}")
    for name, value in (("parts", parts), ("batch_size", batch_size), ("max_length", max_length)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    keys = [r.key for r in requests]
    twice = [k for k in dict.fromkeys(keys) if keys.count(k) > 1]
    if twice:
        raise ValueError(f"two requests have the key {twice[0]!r}; give each its own key")
    adapter = get_adapter(model)
    windowing = Windowing.for_tokenizer(tokenizer, max_length, truncate) if tokens == "windows" else None
    pad = (windowing.pad_id if windowing is not None else int(tokenizer.pad_token_id or 0))

    readers: dict[tuple[str, int | None], _SiteReader] = {}
    widths: dict[tuple[str, int | None], int | None] = {}
    hooks = Hooks()
    for r in requests:
        layers = [None] if r.site == "final_norm.in" else (
            range(adapter.num_layers) if r.layers is None else sorted(set(r.layers)))
        for layer in layers:
            if isinstance(r.read, Mapping) and layer not in r.read:
                continue
            where = (r.site, layer)
            if where not in readers:
                site = adapter.site(r.site, layer)
                readers[where] = _SiteReader(site)
                hooks.read(site, readers[where])
            readers[where].add(r, r.reader(layer))
            given = r.width.get(layer) if isinstance(r.width, Mapping) else r.width
            widths[r.key, layer] = (given if given is not None else
                                    site_width(adapter, readers[where].site) if r.reader(layer) is None else None)
    langs = tuple(corpora)
    result = PassResult(langs, parts, {}, {}, {}, {}, {r.key: {} for r in requests},
                        {"token_rule": TOKEN_RULES[tokens], "tokens": tokens, "max_length": max_length,
                         "truncate": truncate, "batch_size": batch_size})
    if windowing is not None:
        result.info.update(window_rule=windowing.rule,
                           special_tokens={"prefix": list(windowing.prefix), "suffix": list(windowing.suffix)})
    documents = {lang: corpora[lang] if isinstance(corpora[lang], Sequence) else list(corpora[lang])
                 for lang in langs}
    bar = None
    if progress and unit == "doc":
        bar = tqdm(total=sum(len(d) for d in documents.values()), desc=desc.format(lang=""), unit="doc")
    device = input_device(model)
    was_training = model.training
    model.eval()
    try:
        with hooks, torch.no_grad():
            for lang in langs:
                what = desc.format(lang=lang)
                units, measured, empty = _units(tokens, tokenizer, documents[lang], max_length, windowing, what,
                                                progress)
                corpus = Corpus(lang, len(documents[lang]), tuple(measured), parts)
                slots = {d: i for i, d in enumerate(measured)}
                result.corpora[lang], result.empty[lang] = corpus, empty
                result.tokens[lang] = torch.zeros(parts, dtype=torch.int64)
                result.doc_tokens[lang] = torch.zeros(len(measured), dtype=torch.int64)
                for (site_name, layer), reader in readers.items():
                    reader.current = {}
                    for _, members in reader.groups:
                        for key, r in members:
                            stat = r.make()
                            stat.start(widths[key, layer], corpus)
                            reader.current[key] = stat
                            result.statistics[key].setdefault(lang, {})[layer] = stat
                n_batches = (len(units) + batch_size - 1) // batch_size
                steps = range(n_batches)
                if progress and unit != "doc":
                    steps = tqdm(steps, desc=what, unit="batch")
                for b in steps:
                    group = units[b * batch_size:(b + 1) * batch_size]
                    ids = packed_ids([u.ids for u in group], pad)
                    mask = torch.zeros(ids.shape, dtype=torch.bool)
                    for row, u in enumerate(group):
                        mask[row, u.start:u.stop] = True
                    doc = torch.tensor([u.doc for u in group], dtype=torch.long)
                    batch = Batch(corpus, mask, doc, torch.tensor([slots[u.doc] for u in group], dtype=torch.long),
                                  doc % parts, torch.tensor([u.offset for u in group], dtype=torch.long))
                    result.tokens[lang].index_add_(0, batch.part, batch.counts)
                    result.doc_tokens[lang].index_add_(0, batch.slot, batch.counts)
                    for reader in readers.values():
                        reader.batch = batch
                    ids = ids.to(device)
                    ones = torch.ones_like(ids)
                    adapter.body(input_ids=ids, attention_mask=ones, use_cache=False, **adapter.forward_kwargs(ones))
                    if bar is not None:
                        bar.update(len(group))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return result


def residual_means(model: torch.nn.Module, tokenizer: Any, corpora: Mapping[str, Iterable[str]], *,
                   layers: Sequence[int] | None = None, **options: Any) -> dict[str, torch.Tensor]:
    """Per language, the mean of ``layer.out`` (the residual stream after each decoder layer)
    over the counted tokens: (layers, hidden) float64 (``options``: the fields of
    :class:`PassOptions`, e.g. ``tokens``, ``max_length``; row sums in the model's dtype, added in
    float64)."""
    request = Request("mean", "layer.out", layers, {"sum": "rows"}, key="residual_mean")
    out = corpus_pass(model, tokenizer, corpora, [request], PassOptions(**options), progress=False)
    return {lang: out.stacked("residual_mean", lang) for lang in out.languages}
