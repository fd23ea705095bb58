"""Statistics over a corpus: what one sees of a batch, the registry, and mwork's own.

:func:`mwork.corpus_pass.corpus_pass` gives each :class:`Statistic` the counted tokens' values at
one site and layer for one language; a new statistic is one class::

    @register_statistic
    class Maximum(Statistic):
        name = "max"                        # takes = "tokens": (tokens, n) float64 on the CPU
        def start(self, n, corpus):
            self.value = None
        def update(self, values, batch):
            top = values.max(0).values
            self.value = top if self.value is None else torch.maximum(self.value, top)
        def result(self):
            return self.value

(registering is only needed to ask for it by name; ``Request(Maximum, "ffn.in")`` works too).
Built in: ``mean``, ``doc_means``, ``firing_probability``, ``doc_firing``, ``quantiles``, ``median``,
``router_counts``, ``top_activations`` (each unit's largest values and where they happened). ``parse_stat`` (the names of steering's statistics: mean, median, quantiles
``qX``) lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

QUANTILE_RULE = "linear interpolation between order statistics (numpy.quantile's default); median = q0.5"


# ---- names of statistics (steering) ---------------------------------------------------------------


def parse_stat(name: str) -> str:
    """``mean``, ``median`` or a quantile ``qX`` (0 <= X <= 1, e.g. ``q0.9``), canonical form."""
    text = str(name).strip().lower()
    if text in ("mean", "median"):
        return text
    if text.startswith("q"):
        try:
            q = float(text[1:])
        except ValueError:
            q = math.nan
        if 0.0 <= q <= 1.0:
            return f"q{q!r}"
    raise ValueError(f"unknown statistic {name!r}: use mean, median or a quantile such as q0.9 (0 <= q <= 1)")


def stat_quantile(name: str) -> float | None:
    """The quantile a statistic name (``parse_stat``'s form) stands for; None for ``mean``."""
    name = parse_stat(name)
    return None if name == "mean" else 0.5 if name == "median" else float(name[1:])


def quantile(values: torch.Tensor, q: float, dim: int = 0) -> torch.Tensor:
    """The ``q`` quantile of ``values`` along ``dim`` (linear interpolation, as ``numpy.quantile``),
    for any number of values (``torch.quantile`` refuses more than 2**24)."""
    n = values.shape[dim]
    if n == 0:
        raise ValueError("no values to take a quantile of")
    s = values.sort(dim=dim).values
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    a, b = s.select(dim, lo), s.select(dim, hi)
    return torch.lerp(a, b, torch.full_like(a, frac)) if frac else a.clone()


# ---- what a statistic sees ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """One language's corpus as the pass runs it: ``documents`` in the corpus, the corpus
    positions of those run (``measured``: slot i is document ``measured[i]``), ``parts``."""

    language: str
    documents: int
    measured: tuple[int, ...]
    parts: int


class Batch:
    """The batch being run: ``mask`` (rows, positions) bool on the CPU, the counted positions
    (one run of them per row); per row ``doc`` (corpus position), ``slot`` (index in
    ``Corpus.measured``), ``part`` (``doc % parts``) and ``offset`` (the position in its document
    of the row's first counted token: a window's start; default 0), long tensors on the CPU;
    ``language`` and ``corpus``."""

    def __init__(self, corpus: Corpus, mask: torch.Tensor, doc: torch.Tensor, slot: torch.Tensor,
                 part: torch.Tensor, offset: torch.Tensor | None = None):
        self.corpus, self.language = corpus, corpus.language
        self.mask, self.doc, self.slot, self.part = mask, doc, slot, part
        self.offset = torch.zeros_like(doc) if offset is None else offset
        self.counts = mask.sum(1)  # (rows,) counted tokens per row
        self._masks: dict[torch.device, torch.Tensor] = {}
        self._token_part: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None

    def mask_on(self, device: torch.device) -> torch.Tensor:
        """``mask`` on ``device`` (made once per device)."""
        m = self._masks.get(device)
        if m is None:
            m = self._masks[device] = self.mask.to(device)
        return m

    @property
    def positions(self) -> torch.Tensor:
        """(rows, positions) long: each token's position in its document, counted from the
        document's first counted token (meaningful where ``mask`` is set)."""
        if self._positions is None:
            first = self.mask.to(torch.uint8).argmax(1)  # the row's first counted column
            columns = torch.arange(self.mask.shape[1])[None]
            self._positions = columns - first[:, None] + self.offset[:, None]
        return self._positions

    @property
    def token_part(self) -> torch.Tensor:
        """(tokens,) the part of each counted token, in the order of the "tokens" form."""
        if self._token_part is None:
            self._token_part = self.part.repeat_interleave(self.counts)
        return self._token_part


class Statistic:
    """One statistic of the values at one site and layer, for one language (the pass makes one
    instance per request, layer and language).

    ``takes`` says which form of the values ``update`` gets:

    * ``"tokens"``: (tokens, n) float64 on the CPU, the counted tokens of every row, row by row;
    * ``"row_sums"``: (rows, n) float64 on the CPU, each row's sum over its counted tokens,
      computed in the site's dtype (at least float32) by one matrix product on the model's device;
    * ``"rows"``: (rows, positions, n) as the site gives it, on the model's device (the counted
      positions: ``batch.mask_on(values.device)``);
    * ``"value"``: what the site gives, untouched (e.g. a ``Routing`` at ``ffn.route``).

    ``start(n, corpus)`` is called before the language's first batch (``n``: the values per
    token when the pass knows it, else None), ``update(values, batch)`` once per batch,
    ``result()`` at the end. Options come as keyword arguments of the constructor."""

    name: ClassVar[str] = ""
    takes: str = "tokens"

    def start(self, n: int | None, corpus: Corpus) -> None:
        pass

    def update(self, values: Any, batch: Batch) -> None:
        raise NotImplementedError

    def result(self) -> Any:
        raise NotImplementedError


#: statistics by name (:func:`register_statistic`)
STATISTICS: dict[str, type[Statistic]] = {}


def register_statistic(cls: type[Statistic]) -> type[Statistic]:
    """Make ``cls`` known by its ``name`` (a class decorator); a name is registered once."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if STATISTICS.get(cls.name, cls) is not cls:
        raise ValueError(f"a statistic named {cls.name!r} is registered already ({STATISTICS[cls.name].__name__})")
    STATISTICS[cls.name] = cls
    return cls


def _zeros(n: int | None, rows: int, dtype: torch.dtype) -> torch.Tensor | None:
    return None if n is None else torch.zeros(rows, n, dtype=dtype)


@register_statistic
class Mean(Statistic):
    """The mean over the counted tokens of each value, kept per part: ``sums`` (parts, n)
    float64, ``counts`` (parts,) int64; ``result()`` (n,): over every part.

    ``sum="tokens"`` (default): every value in float64, summed over the batch's counted tokens
    on the CPU; ``sum="rows"``: each row's sum in the site's dtype by one matrix product, added
    in float64 (cheap on an accelerator; the detection methods' site means)."""

    name = "mean"

    def __init__(self, sum: str = "tokens"):
        if sum not in ("tokens", "rows"):
            raise ValueError(f"Mean: sum must be 'tokens' or 'rows', got {sum!r}")
        self.takes = "tokens" if sum == "tokens" else "row_sums"

    def start(self, n: int | None, corpus: Corpus) -> None:
        self.parts = corpus.parts
        self.sums = _zeros(n, corpus.parts, torch.float64)
        self.counts = torch.zeros(corpus.parts, dtype=torch.int64)

    def update(self, values: torch.Tensor, batch: Batch) -> None:
        if self.sums is None:
            self.sums = _zeros(values.shape[-1], self.parts, torch.float64)
        self.counts.index_add_(0, batch.part, batch.counts)
        if self.takes == "row_sums":
            self.sums.index_add_(0, batch.part, values)
        elif self.parts == 1:
            self.sums[0] += values.sum(0)
        else:
            self.sums.index_add_(0, batch.token_part, values)

    def result(self) -> torch.Tensor:
        if self.sums is None:
            raise ValueError(f"no counted token of {self.__class__.__name__} to take a mean over")
        return self.sums.sum(0) / int(self.counts.sum())


@register_statistic
class DocMeans(Statistic):
    """Each run document's mean over its tokens (activation AP's per-document means): ``sums``
    (documents run, n) float64 of the row sums (as ``Mean(sum="rows")``), ``tokens``
    (documents run,); ``result()`` (documents run, n), in ``Corpus.measured`` order."""

    name = "doc_means"
    takes = "row_sums"

    def start(self, n: int | None, corpus: Corpus) -> None:
        self.docs = len(corpus.measured)
        self.sums = _zeros(n, self.docs, torch.float64)
        self.tokens = torch.zeros(self.docs, dtype=torch.int64)

    def update(self, values: torch.Tensor, batch: Batch) -> None:
        if self.sums is None:
            self.sums = _zeros(values.shape[-1], self.docs, torch.float64)
        self.sums.index_add_(0, batch.slot, values)
        self.tokens.index_add_(0, batch.slot, batch.counts)

    def result(self) -> torch.Tensor:
        return self.sums / self.tokens.to(torch.float64)[:, None]


@register_statistic
class FiringProbability(Statistic):
    """The share of counted tokens at which each value is > 0 (LAPE's activation probability):
    ``counts`` (parts, n) int64, ``tokens`` (parts,); ``result()`` (n,) float64 over every part."""

    name = "firing_probability"
    takes = "rows"

    def start(self, n: int | None, corpus: Corpus) -> None:
        self.parts = corpus.parts
        self.counts = _zeros(n, corpus.parts, torch.int64)
        self.tokens = torch.zeros(corpus.parts, dtype=torch.int64)

    def update(self, values: torch.Tensor, batch: Batch) -> None:
        if self.counts is None:
            self.counts = _zeros(values.shape[-1], self.parts, torch.int64)
        positive = ((values > 0) & batch.mask_on(values.device)[..., None]).sum(1).cpu()  # (rows, n)
        self.counts.index_add_(0, batch.part, positive)
        self.tokens.index_add_(0, batch.part, batch.counts)

    def result(self) -> torch.Tensor:
        return self.counts.sum(0).to(torch.float64) / int(self.tokens.sum())


@register_statistic
class DocFiring(Statistic):
    """Each run document's share of counted tokens at which each value is > 0 (the rule of
    ``firing_probability``, per document instead of per part; language identification from
    units): ``counts`` (documents run, n) int64, ``tokens`` (documents run,) int64; ``result()``
    (documents run, n) float64, in ``Corpus.measured`` order. A document cut into several windows
    adds up its windows."""

    name = "doc_firing"
    takes = "rows"

    def start(self, n: int | None, corpus: Corpus) -> None:
        self.docs = len(corpus.measured)
        self.counts = _zeros(n, self.docs, torch.int64)
        self.tokens = torch.zeros(self.docs, dtype=torch.int64)

    def update(self, values: torch.Tensor, batch: Batch) -> None:
        if self.counts is None:
            self.counts = _zeros(values.shape[-1], self.docs, torch.int64)
        positive = ((values > 0) & batch.mask_on(values.device)[..., None]).sum(1).cpu()  # (rows, n)
        self.counts.index_add_(0, batch.slot, positive)
        self.tokens.index_add_(0, batch.slot, batch.counts)

    def result(self) -> torch.Tensor:
        if self.counts is None:
            raise ValueError("no document was run: no firing probability per document")
        return self.counts.to(torch.float64) / self.tokens.to(torch.float64)[:, None]


@register_statistic
class Quantiles(Statistic):
    """Quantiles ``qs`` of each value over the counted tokens (:func:`quantile`: linear
    interpolation, as ``numpy.quantile``); ``result()`` (len(qs), n). Every value is kept
    (tokens x n x 8 bytes), once for all the ``qs``."""

    name = "quantiles"

    def __init__(self, qs: Sequence[float] = (0.5,)):
        self.qs = tuple(float(q) for q in qs)
        bad = [q for q in self.qs if not 0.0 <= q <= 1.0]
        if not self.qs or bad:
            raise ValueError(f"Quantiles: give quantiles in [0, 1], got {qs!r}")

    def start(self, n: int | None, corpus: Corpus) -> None:
        self.values: list[torch.Tensor] = []

    def update(self, values: torch.Tensor, batch: Batch) -> None:
        self.values.append(values)

    def result(self) -> torch.Tensor:
        if not self.values:
            raise ValueError("no values to take a quantile of")
        values = torch.cat(self.values)
        return torch.stack([quantile(values, q) for q in self.qs])


@register_statistic
class Median(Quantiles):
    """The median (``Quantiles(qs=(0.5,))``); ``result()`` (n,)."""

    name = "median"

    def __init__(self) -> None:
        super().__init__((0.5,))

    def result(self) -> torch.Tensor:
        return super().result()[0]


@register_statistic
class RouterCounts(Statistic):
    """At ``ffn.route`` (a ``Routing``): ``selections`` (experts,) int64, the counted tokens
    routed to each expert, and ``weight_sums`` (experts,) float64, their routing weights;
    ``result()`` is ``(selections, weight_sums)``. Option ``experts``: the number of experts."""

    name = "router_counts"
    takes = "value"

    def __init__(self, experts: int):
        self.experts = int(experts)

    def start(self, n: int | None, corpus: Corpus) -> None:
        self.selections = torch.zeros(self.experts, dtype=torch.long)
        self.weight_sums = torch.zeros(self.experts, dtype=torch.float64)

    def update(self, routing: Any, batch: Batch) -> None:
        keep = batch.mask_on(routing.experts.device)
        experts = routing.experts[keep]  # (tokens, k)
        E = self.experts
        self.selections += torch.bincount(experts.flatten(), minlength=E).cpu()
        w = routing.weights[keep].to(torch.float64).flatten()
        self.weight_sums += torch.zeros(E, dtype=torch.float64, device=w.device).index_add_(
            0, experts.flatten(), w).cpu()

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.selections, self.weight_sums


@dataclass(frozen=True)
class TopValues:
    """Each unit's largest values over a corpus and where they happened (``top_activations``):
    ``values`` (n, units) float64, largest first, NaN in the rows past the tokens that counted;
    ``doc`` (n, units) long, the document's corpus position, and ``position`` (n, units) long, the
    token's position in it (``Batch.positions``), both -1 where ``values`` is NaN."""

    values: torch.Tensor
    doc: torch.Tensor
    position: torch.Tensor

    def unit(self, j: int) -> list[tuple[float, int, int]]:
        """Unit ``j``'s entries, largest first: (value, document, position)."""
        keep = self.doc[:, j] >= 0
        return list(zip(self.values[keep, j].tolist(), self.doc[keep, j].tolist(), self.position[keep, j].tolist()))


def _lexicographic(values: torch.Tensor, doc: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Per column, the order: larger value first, then lower document, then lower position."""
    order = torch.argsort(position, dim=0, stable=True)
    order = order.gather(0, torch.argsort(doc.gather(0, order), dim=0, stable=True))
    return order.gather(0, torch.argsort(values.gather(0, order), dim=0, descending=True, stable=True))


@register_statistic
class TopActivations(Statistic):
    """Each unit's ``n`` largest values over the counted tokens and where each happened
    (document, position in it); ``result()`` a :class:`TopValues`. Ties go to the earlier
    document, then the earlier position, whatever the batch order. ``above``: only values above it
    count (0 for dictionary features: a token where the feature does not fire is never listed, so
    a feature that fires on fewer than ``n`` tokens lists fewer). Per batch: one ``topk`` over the
    batch's counted tokens (the site's dtype, at least float32, on the model's device), merged with
    the running ``n`` on the CPU; nothing else is kept."""

    name = "top_activations"
    takes = "rows"

    def __init__(self, n: int = 8, above: float | None = None):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"TopActivations: n must be a positive integer, got {n!r}")
        self.n, self.above = n, above

    def start(self, n: int | None, corpus: Corpus) -> None:
        self.width = n
        self.top: TopValues | None = None

    def update(self, values: torch.Tensor, batch: Batch) -> None:
        x = values if values.dtype in (torch.float32, torch.float64) else values.float()
        rows = torch.argsort(batch.doc * (int(batch.positions.max()) + 1) + batch.offset, stable=True)
        counted = batch.mask[rows]
        flat = x[rows.to(x.device)][counted.to(x.device)]  # (tokens, units), in (document, position) order
        if flat.shape[0] == 0:
            return
        doc = batch.doc[rows].repeat_interleave(counted.sum(1)).to(x.device)
        position = batch.positions[rows][counted].to(x.device)
        keep = ~flat.isnan() if self.above is None else flat > self.above
        flat = torch.where(keep, flat, torch.full_like(flat, -math.inf))
        k = min(self.n, flat.shape[0])
        top = flat.topk(k, dim=0)
        at, kth = top.indices, top.values[-1]  # (k, units), (units,)
        places = k - (top.values > kth).sum(0)  # what the tokens tied at the cut share
        cut = ((flat == kth).sum(0) > places) & (kth > -math.inf)  # more tied tokens than places: the earliest
        if cut.any():
            cols = cut.nonzero()[:, 0]
            sub, tied = flat[:, cols], flat[:, cols] == kth[cols]
            take = (sub > kth[cols]) | (tied & (tied.cumsum(0) <= places[cols]))  # exactly k per unit
            first = torch.arange(flat.shape[0], 0, -1, device=x.device, dtype=torch.int32)[:, None]
            at[:, cols] = (take.to(torch.int32) * first).topk(k, dim=0).indices
        self._merge(flat.gather(0, at).to("cpu", torch.float64), doc[at].cpu(), position[at].cpu())

    def _merge(self, values: torch.Tensor, doc: torch.Tensor, position: torch.Tensor) -> None:
        if self.top is not None:
            values = torch.cat([self.top.values, values])
            doc, position = torch.cat([self.top.doc, doc]), torch.cat([self.top.position, position])
        order = _lexicographic(values, doc, position)[:self.n]
        self.top = TopValues(values.gather(0, order), doc.gather(0, order), position.gather(0, order))

    def result(self) -> TopValues:
        if self.top is None and self.width is None:
            raise ValueError("no counted token: no top activations")
        width = self.top.values.shape[1] if self.top is not None else self.width
        values = torch.full((self.n, width), math.nan, dtype=torch.float64)
        doc = torch.full((self.n, width), -1, dtype=torch.long)
        position = doc.clone()
        if self.top is not None:  # fewer rows than n where the corpus has fewer tokens
            found = self.top.values > -math.inf
            rows = len(self.top.values)
            values[:rows] = self.top.values.masked_fill(~found, math.nan)
            doc[:rows], position[:rows] = self.top.doc.masked_fill(~found, -1), self.top.position.masked_fill(~found, -1)
        return TopValues(values, doc, position)
