"""Activation statistics of a set's neurons on a language's texts: what ``mwork.steer`` sets or adds.

One streaming pass over the corpus (:func:`measure_statistics`): documents are batched with the
*packed* policy of ``mwork.hooks`` (real tokens first, all-ones mask, so padding never changes a
real token), and a ``Hooks.read`` at each neuron site keeps the values of the selected neurons
at the counted positions. Counted: every token of every document up to ``max_length`` tokens,
except the tokenizer's leading special tokens (the BOS, whose activations are not the
language's). The statistics, per neuron, over all counted tokens of all documents:

* ``mean``: the sum (float64) over the count;
* ``median`` and quantiles ``qX``: linear interpolation between order statistics, as
  ``numpy.quantile`` / ``torch.quantile`` (``median`` = ``q0.5``). They need every value, so
  only the selected neurons' values are kept: tokens x neurons x 8 bytes (100 000 tokens of
  1 000 neurons: 0.8 GB); ``mean`` alone keeps sums only.

:func:`add_statistics` stores them in the NeuronSet (extra tensors ``stat.<name>.<kind>``, NaN
at neurons not in the set; ``meta["statistics"]`` records the corpus, its digest, the token
count and these rules), so a saved set can steer without its corpus. Several sets (a set and
its random baselines) are measured in the same single pass.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from typing import Any, Iterable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from mwork.fingerprints import model_digest
from mwork.hooks import Hooks, packed_ids
from mwork.models.adapters import get_adapter
from mwork.models.loading import input_device
from mwork.neurons.neuronset import STATISTIC_PREFIX, NeuronSet
from mwork.steering import parse_stat
from mwork.texts import TextHasher, is_empty

POSITIONS_RULE = ("every token of each document up to max_length tokens, except the tokenizer's leading special "
                  "tokens; documents batched with the packed policy (real tokens first, all-ones mask)")
QUANTILE_RULE = "linear interpolation between order statistics (numpy.quantile's default); median = q0.5"


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


def _union(sets: Sequence[NeuronSet]) -> NeuronSet:
    out = sets[0]
    for ns in sets[1:]:
        out = out | ns
    return out


class _Accumulator:
    """Values of chosen channels at one site, at the counted positions of each batch."""

    def __init__(self, site: Any, channels: torch.Tensor, keep_values: bool, counted: list):
        self.features = site.features(channels)
        self.channels, self.keep_values, self.counted = channels, keep_values, counted
        self.sum = torch.zeros(len(channels), dtype=torch.float64)
        self.values: list[torch.Tensor] = []
        self._index: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> None:
        if self._index is None or self._index.device != x.device:
            self._index = self.features.to(x.device)
        where = self.counted[0]
        v = x.detach().index_select(-1, self._index)[where.to(x.device)].to("cpu", torch.float64)
        self.sum += v.sum(0)
        if self.keep_values:
            self.values.append(v)


def _documents(tokenizer: Any, texts: Iterable[str],
               max_length: int) -> tuple[list[list[int]], list[int], list[int], str, int]:
    """Token ids (truncated), leading special tokens per document, empty documents, corpus digest, count."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    hasher, seqs, prefixes, empty, n = TextHasher(), [], [], [], 0
    for i, text in enumerate(texts):
        n += 1
        hasher.update(text)
        ids = list(tokenizer(text).input_ids)[:max_length] if not is_empty(text) else []
        prefix = 0
        while prefix < len(ids) and ids[prefix] in special:
            prefix += 1
        if len(ids) - prefix < 1:
            empty.append(i)
            continue
        seqs.append(ids)
        prefixes.append(prefix)
    return seqs, prefixes, empty, hasher.hexdigest(), n


def measure_statistics(model: torch.nn.Module, tokenizer: Any, texts: Iterable[str],
                       neurons: NeuronSet | Sequence[NeuronSet],
                       stats: Sequence[str] = ("mean", "median"), *, max_length: int = 256, batch_size: int = 8,
                       progress: bool = True) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """The statistics ``stats`` of the activations of the neurons of ``neurons`` (one set or several:
    their union is measured in one pass) on ``texts``. Returns ``({stat: {kind: (layers, neurons)
    tensor, NaN outside the union}}, info)`` with ``info`` the facts :func:`add_statistics` records."""
    sets = [neurons] if isinstance(neurons, NeuronSet) else list(neurons)
    if not sets:
        raise ValueError("give at least one NeuronSet to measure statistics for")
    names = list(dict.fromkeys(parse_stat(s) for s in stats))
    if not names:
        raise ValueError("give at least one statistic (mean, median or a quantile such as q0.9)")
    if max_length < 1 or batch_size < 1:
        raise ValueError(f"max_length and batch_size must be >= 1, got {max_length} and {batch_size}")
    for ns in sets:
        ns.check_compatible(model)
    union = _union(sets)
    if union.count() == 0:
        raise ValueError("the NeuronSet(s) hold no neuron: there is nothing to measure")
    seqs, prefixes, empty, corpus_sha, n_docs = _documents(tokenizer, texts, max_length)
    if not seqs:
        raise ValueError(f"none of the {n_docs} documents has a token to measure (empty documents: {empty[:10]}); "
                         "give texts of the target language")
    adapter = get_adapter(model)
    keep_values = any(s != "mean" for s in names)
    counted: list = [None]
    hooks = Hooks()
    accs: dict[tuple[str, int], _Accumulator] = {}
    for kind in union.kinds:
        for layer in range(union.num_layers):
            channels = union.indices(kind, layer)
            if channels.numel():
                site = adapter.neuron_site(kind, layer)
                accs[kind, layer] = _Accumulator(site, channels, keep_values, counted)
                hooks.read(site, accs[kind, layer])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    device = input_device(model)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    tokens = 0
    with hooks, torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc="activation statistics", unit="batch",
                          disable=not progress):
            rows = order[start:start + batch_size]
            ids = packed_ids([seqs[i] for i in rows], pad)
            where = torch.zeros(ids.shape, dtype=torch.bool)
            for r, i in enumerate(rows):
                where[r, prefixes[i]:len(seqs[i])] = True
            counted[0] = where
            tokens += int(where.sum())
            model(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device), use_cache=False,
                  **extra)
    out: dict[str, dict[str, torch.Tensor]] = {s: {} for s in names}
    for kind in union.kinds:
        shape = union.masks[kind].shape
        for s in names:
            out[s][kind] = torch.full(shape, float("nan"), dtype=torch.float64)
        for layer in range(union.num_layers):
            acc = accs.get((kind, layer))
            if acc is None:
                continue
            values = torch.cat(acc.values) if keep_values else None
            for s in names:
                if s == "mean":
                    v = acc.sum / tokens
                else:
                    v = quantile(values, 0.5 if s == "median" else float(s[1:]))
                out[s][kind][layer, acc.channels] = v
    if empty and progress:
        print(f"[mwork statistics] {len(empty)} of {n_docs} documents have no token to measure (numbers "
              f"{empty[:10]}{' ...' if len(empty) > 10 else ''}): not counted", file=sys.stderr)
    info = {"stats": names, "documents": n_docs, "measured_documents": len(seqs), "empty_documents": empty,
            "tokens": tokens, "corpus_sha256": corpus_sha, "corpus_sha256_rule": TextHasher.RULE,
            "max_length": max_length, "positions": POSITIONS_RULE, "quantiles": QUANTILE_RULE,
            "sites": {k: f"the neuron site of {k} (mwork.hooks.NEURON_SITES)" for k in union.kinds},
            "model_digest": model_digest(model)}
    return out, info


def add_statistics(model: torch.nn.Module, tokenizer: Any, neurons: NeuronSet | Sequence[NeuronSet],
                   texts: Iterable[str],
                   stats: Sequence[str] = ("mean", "median"), *, language: str | None = None,
                   corpus: Any = None, max_length: int = 256, batch_size: int = 8,
                   progress: bool = True) -> NeuronSet | list[NeuronSet]:
    """``neurons`` (one set or several, measured in one pass) with the target language's activation
    statistics stored in them (``NeuronSet.statistic``; save the set to keep them)::

        zh = NeuronSet.load("neurons/zh.safetensors", model)
        zh = add_statistics(model, tokenizer, zh, read_texts("xquad:zh[0:24]"), ("mean", "median"), language="zh")
        zh.save("neurons/zh.safetensors")          # steers without its corpus from now on

    ``language``: the texts' language (recorded); ``corpus``: a description of them (recorded)."""
    single = isinstance(neurons, NeuronSet)
    sets = [neurons] if single else list(neurons)
    values, info = measure_statistics(model, tokenizer, texts, sets, stats, max_length=max_length,
                                      batch_size=batch_size, progress=progress)
    info = {"language": language, "corpus": corpus, **info}
    out = []
    for ns in sets:
        mine = {s: {k: torch.where(ns.masks[k], v, torch.full_like(v, float("nan"))) for k, v in per_kind.items()
                    if k in ns.masks} for s, per_kind in values.items()}
        out.append(ns.with_statistics(mine, info))
    return out[0] if single else out


def statistics_digest(ns: NeuronSet) -> str:
    """sha256 of the statistics a set carries (names, shapes and bytes): keys cached steering results."""
    h = hashlib.sha256()
    for key in sorted(k for k in ns.extra if k.startswith(STATISTIC_PREFIX)):
        t = ns.extra[key].to(torch.float32).contiguous()
        h.update(f"{key}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def describe(ns: NeuronSet) -> str:
    """One line about the statistics a set carries."""
    info: Mapping[str, Any] = ns.meta.get("statistics") or {}
    if not ns.statistic_names():
        return "no activation statistics"
    return (f"statistics {', '.join(ns.statistic_names())} of {info.get('language') or '?'} activations over "
            f"{info.get('tokens', '?')} tokens of {info.get('measured_documents', '?')} documents")
