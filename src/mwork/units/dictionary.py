"""Dictionary features as units: sparse-autoencoder (or transcoder-style) features at a site.

A dictionary at one layer has an encoder ``W_enc`` (d, m), ``b_enc`` (m,), a decoder ``W_dec``
(m, d), ``b_dec`` (d,) and an activation: ``f(x) = act((x - b_dec) W_enc + b_enc)`` with ``relu``,
``topk`` (the k largest pre-activations kept, after a ReLU) or ``jumprelu`` (a pre-activation kept
where it exceeds its feature's ``threshold``). The model's value is ``x = f(x) W_dec + b_dec +
err``; editing features changes only the decoded part and keeps ``err``:
``x' = x + (f' - f)[features] W_dec[features]``, so an unedited feature leaves ``x`` exactly as it
was. Unit ``j`` of a set is feature ``features[j]`` of the dictionary at ``layers[j]``.

A **transcoder** reads one site and writes another (MLP input -> MLP output): ``read_site``
names the site its encoder reads (default: the site it writes). Its groups then carry ``reads``,
a read of that site to place beside the edit (the value of the current forward call, kept until
the next), so ``f`` is computed from the read site's value and the edit still keeps ``err``.

Files: safetensors (per layer ``L``: ``L.W_enc``, ``L.b_enc``, ``L.W_dec``, ``L.b_dec``, optional
``L.threshold``; ``layers``, ``features``, ``stat.NAME``) with the metadata in the header, like
every unit set; nothing unpickled. Loading the published layouts (SAELens, Gemma Scope) is a
reader that builds a :class:`Dictionary` (:mod:`mwork.units.sae_layouts`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from mwork.hooks import DeviceCache, Site, module_device
from mwork.units.base import LayeredUnits, RowGroup, register_unit_kind, widen

ACTIVATIONS = ("relu", "topk", "jumprelu")


@dataclass
class Codebook:
    """One layer's dictionary: ``W_enc`` (d, m), ``b_enc`` (m,), ``W_dec`` (m, d), ``b_dec`` (d,),
    ``activation`` and its setting (``k`` for topk, ``threshold`` (m,) for jumprelu)."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    activation: str = "relu"
    k: int | None = None
    threshold: torch.Tensor | None = None

    def __post_init__(self) -> None:
        d, m = self.W_enc.shape
        if self.W_dec.shape != (m, d) or self.b_enc.shape != (m,) or self.b_dec.shape != (d,):
            raise ValueError(f"a dictionary needs W_enc (d, m), b_enc (m,), W_dec (m, d), b_dec (d,); got "
                             f"{tuple(self.W_enc.shape)}, {tuple(self.b_enc.shape)}, {tuple(self.W_dec.shape)}, "
                             f"{tuple(self.b_dec.shape)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; activations are {', '.join(ACTIVATIONS)}")
        if self.activation == "topk" and not (self.k and 0 < self.k <= m):
            raise ValueError(f"a topk dictionary needs k in 1..{m}, got {self.k}")
        if self.activation == "jumprelu" and (self.threshold is None or self.threshold.shape != (m,)):
            raise ValueError("a jumprelu dictionary needs one threshold per feature")

    @property
    def width(self) -> int:
        return int(self.W_enc.shape[1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations (..., m) of ``x`` (..., d)."""
        pre = (x - self.b_dec.to(x)) @ self.W_enc.to(x) + self.b_enc.to(x)
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            return pre * (pre > self.threshold.to(x))
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec.to(f) + self.b_dec.to(f)


class _Encoder:
    """A codebook's encoder keeping the features ``ids`` (None: all), on widened values."""

    def __init__(self, book: Codebook, ids: torch.Tensor | None):
        self.book, self.ids = book, ids
        self.count = book.width if ids is None else int(ids.numel())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        f = self.book.encode(widen(x))
        return f if self.ids is None else f[..., self.ids.to(f.device)]


class FeatureGroupSAE(RowGroup):
    """Features ``ids`` of one layer's dictionary at ``site`` (written there); ``read_site``: where
    a transcoder's encoder reads (None: ``site`` itself). ``reads``: the ``(site, fn)`` reads to
    place beside the group's edit (a transcoder's input; none otherwise)."""

    def __init__(self, site: Site, layer: int, ids: torch.Tensor, features: torch.Tensor, book: Codebook,
                 read_site: Site | None = None):
        self.site, self.book, self.read_site = site, book, read_site
        self.parts = [("features", layer, ids)]
        device = module_device(site.module)
        self.features = features.to(device)
        self._dec = DeviceCache(book.W_dec[features].to(device=device, dtype=torch.float64), keep_dtype=False)
        self._input: list[torch.Tensor] = []
        self.reads: list[tuple[Site, Callable[[torch.Tensor], None]]] = (
            [] if read_site is None else [(read_site, self._keep_input)])

    def _keep_input(self, value: torch.Tensor) -> None:
        assert self.read_site is not None
        self._input[:] = [self.read_site.channels(value.detach())]

    def read(self, x: torch.Tensor) -> torch.Tensor:
        source = x
        if self.read_site is not None:
            if not self._input:
                raise RuntimeError(f"these transcoder features read {self.read_site!r}, and nothing was read there in "
                                   "this forward call: place the group's reads (group.reads) beside its edit")
            source = self._input[0]
        return self.book.encode(widen(source))[..., self.features.to(source.device)]

    def write_rows(self, like: torch.Tensor) -> torch.Tensor:
        return self._dec.on(like)


_BOOK_DIGESTS: dict[int, tuple[Codebook, str]] = {}


def _book_digest(book: Codebook) -> str:
    """sha256 of one layer's dictionary (memoised per object: a language's sets share their books)."""
    cached = _BOOK_DIGESTS.get(id(book))
    if cached is not None and cached[0] is book:
        return cached[1]
    h = hashlib.sha256(f"{book.activation}|{book.k}".encode())
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        t = getattr(book, name)
        if t is not None:
            h.update(name.encode())
            h.update(t.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    _BOOK_DIGESTS[id(book)] = (book, h.hexdigest())
    return h.hexdigest()


@register_unit_kind
class Dictionary(LayeredUnits):
    """Features of dictionaries written at ``site`` (default ``layer.out``): ``books`` maps a layer
    to its :class:`Codebook`; unit ``j`` is feature ``features[j]`` at layer ``layers[j]`` (default:
    every feature of every layer). ``read_site``: where the encoder reads, for a transcoder (None:
    ``site``). ``stats``: per-unit statistics; ``meta``: free JSON."""

    kind = "dictionary"
    noun = "dictionary features"

    def __init__(self, books: Mapping[int, Codebook], *, site: str = "layer.out",
                 layers: Sequence[int] | None = None, features: Sequence[int] | None = None,
                 stats: Mapping[str, torch.Tensor] | None = None, meta: Mapping[str, Any] | None = None,
                 read_site: str | None = None):
        self.books = {int(k): v for k, v in books.items()}
        if layers is None:
            layers = [layer for layer in sorted(self.books) for _ in range(self.books[layer].width)]
            features = [j for layer in sorted(self.books) for j in range(self.books[layer].width)]
        self.layers = torch.as_tensor(list(layers), dtype=torch.long)
        self.features = torch.as_tensor(list(features or []), dtype=torch.long)
        if self.layers.shape != self.features.shape:
            raise ValueError("give one layer per feature")
        for layer, j in zip(self.layers.tolist(), self.features.tolist()):
            if layer not in self.books or not 0 <= j < self.books[layer].width:
                raise ValueError(f"feature {j} of layer {layer}: no such feature in these dictionaries")
        self.site = site
        self.read_site = None if read_site in (None, site) else read_site
        self.stats = {k: torch.as_tensor(v, dtype=torch.float64).reshape(-1) for k, v in (stats or {}).items()}
        self.meta = dict(meta or {})

    def group(self, site: Site, layer: int, ids: torch.Tensor, read_site: Site | None = None) -> FeatureGroupSAE:
        return FeatureGroupSAE(site, layer, ids, self.features[ids], self.books[layer], read_site)

    def groups(self, model: nn.Module) -> list[FeatureGroupSAE]:
        """One group per layer, in layer order; a transcoder's groups read at ``read_site``."""
        from mwork.models.adapters import get_adapter

        adapter = get_adapter(model)
        return [self.group(adapter.site(self.site, layer), layer, (self.layers == layer).nonzero().flatten(),
                           None if self.read_site is None else adapter.site(self.read_site, layer))
                for layer in sorted(set(self.layers.tolist()))]

    def check_compatible(self, model: nn.Module) -> None:
        residual = ("layer.in", "layer.out", "attn.out", "o.out", "ffn.out", "final_norm.in")
        reads = {int(b.W_enc.shape[0]) for b in self.books.values()}
        writes = {int(b.W_dec.shape[1]) for b in self.books.values()}
        self.check_fits(model, writes.pop() if len(writes) == 1 else -1, residual)
        if self.read_site in residual:
            from mwork.models.adapters import get_adapter

            hidden = get_adapter(model).hidden_size
            if reads != {hidden}:
                raise ValueError(f"these {self.noun} read {sorted(reads)} features at {self.read_site} and this "
                                 f"model's hidden size is {hidden}: they were made for another model or site")

    def reads(self) -> tuple[str, dict[int, Callable[[torch.Tensor], torch.Tensor]], dict[int, int]]:
        """Where and how this set's feature activations are read, for statistics over a corpus
        (``mwork.corpus_pass.unit_request``): the site the encoder reads (a transcoder's
        ``read_site``), per layer the function from that site's value (..., d) to the activations
        (..., units at that layer, in this set's order), and per layer how many units that is. The
        functions are made once per set (the corpus pass encodes once per call whatever the number
        of statistics read through them); values are widened to float32 first, as in the edits."""
        if getattr(self, "_reads", None) is None:
            reads = {}
            for layer in sorted(set(self.layers.tolist())):
                ids = self.features[self.layers == layer]
                every = torch.equal(ids, torch.arange(self.books[layer].width))
                reads[layer] = _Encoder(self.books[layer], None if every else ids)
            self._reads = reads
        return (self.read_site or self.site, dict(self._reads),
                {layer: fn.count for layer, fn in self._reads.items()})

    def positions(self, layer: int) -> torch.Tensor:
        """The positions in this set of its units at ``layer`` (the order :meth:`reads` gives them in)."""
        return (self.layers == layer).nonzero().flatten()

    def subset(self, ids: torch.Tensor) -> "Dictionary":
        return Dictionary(self.books, site=self.site, layers=self.layers[ids].tolist(),
                          features=self.features[ids].tolist(), stats={k: v[ids] for k, v in self.stats.items()},
                          meta=self.meta, read_site=self.read_site)

    def digest(self) -> str:
        """sha256 of the dictionaries' weights (every layer), the sites and which features are
        chosen (not the statistics)."""
        h = hashlib.sha256(f"{self.site}|{self.read_site}".encode())
        for layer in sorted(self.books):
            h.update(f"{layer}:{_book_digest(self.books[layer])}".encode())
        h.update(self.layers.contiguous().numpy().tobytes())
        h.update(self.features.contiguous().numpy().tobytes())
        return h.hexdigest()

    def random_like(self, seed: int, exclude: "Dictionary | None" = None) -> "Dictionary":
        """As many features per layer as this set has, drawn from the same dictionaries without
        replacement (seeded), none of ``exclude``'s where enough others remain (the rule of
        ``NeuronSet.random_like``): a random baseline of the same size."""
        gen = torch.Generator().manual_seed(seed)
        layers: list[int] = []
        features: list[int] = []
        for layer in sorted(set(self.layers.tolist())):
            n, width = int((self.layers == layer).sum()), self.books[layer].width
            banned = set(exclude.features[exclude.layers == layer].tolist()) if exclude is not None else set()
            if banned and width - len(banned) >= n:
                pool = torch.tensor([j for j in range(width) if j not in banned])
                pick = pool[torch.randperm(len(pool), generator=gen)[:n]]
            else:
                pick = torch.randperm(width, generator=gen)[:n]
            layers += [layer] * n
            features += pick.sort().values.tolist()
        return Dictionary(self.books, site=self.site, layers=layers, features=features, read_site=self.read_site,
                          meta={"random_like": self.meta.get("name") or self.meta.get("language"), "seed": seed,
                                "rule": "random features, same count per layer"})

    def select(self, layer: int, features: Sequence[int]) -> "Dictionary":
        """The given features of one layer's dictionary (e.g. a language's features)."""
        return Dictionary(self.books, site=self.site, layers=[layer] * len(features), features=list(features),
                          meta=self.meta, read_site=self.read_site)

    def save(self, path: str | Path) -> Path:
        tensors: dict[str, torch.Tensor] = {"layers": self.layers, "features": self.features}
        acts = {}
        for layer, b in self.books.items():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
                if getattr(b, name) is not None:
                    tensors[f"{layer}.{name}"] = getattr(b, name).detach().float().cpu().contiguous()
            acts[str(layer)] = {"activation": b.activation, "k": b.k}
        extra: dict[str, Any] = {"activations": acts}
        if self.read_site is not None:
            extra["read_site"] = self.read_site
        return self.write_file(path, tensors, extra)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> "Dictionary":
        from mwork.units.files import read_unit_file

        tensors, meta = read_unit_file(path)
        acts = meta.pop("activations", {})
        books = {}
        for layer, a in acts.items():
            books[int(layer)] = Codebook(*(tensors[f"{layer}.{n}"] for n in ("W_enc", "b_enc", "W_dec", "b_dec")),
                                         activation=a["activation"], k=a.get("k"),
                                         threshold=tensors.get(f"{layer}.threshold"))
        site = meta.pop("site", "layer.out")
        read_site = meta.pop("read_site", None)
        for key in ("unit_kind", "count"):
            meta.pop(key, None)
        stats = {k[len("stat."):]: v for k, v in tensors.items() if k.startswith("stat.")}
        out = cls(books, site=site, layers=tensors["layers"].tolist(), features=tensors["features"].tolist(),
                  stats=stats, meta=meta, read_site=read_site)
        if model is not None:
            out.check_compatible(model)
        return out

    def __repr__(self) -> str:
        reads = f", reading {self.read_site}" if self.read_site is not None else ""
        return f"Dictionary({self.count()} features at {self.site}{reads}, layers {sorted(self.books)})"
