"""Activation statistics of a set's neurons on a language's texts: what ``mwork.steer`` sets or adds.

One streaming pass over the corpus (:func:`measure_statistics`, a client of ``mwork.corpus_pass``):
documents are batched with the *packed* policy of ``mwork.hooks`` (real tokens first, all-ones
mask, so padding never changes a real token), and one read at each neuron site keeps the values
of the selected neurons at the counted positions. Counted (the pass's ``"truncate-sorted"``
rule): every token of every document up to ``max_length`` tokens, except the tokenizer's leading
special tokens (the BOS, whose activations are not the language's). The statistics, per neuron,
over all counted tokens of all documents (``corpus_statistics.Mean`` and ``corpus_statistics.Quantiles``):

* ``mean``: the sum (float64) over the count;
* ``median`` and quantiles ``qX``: linear interpolation between order statistics, as
  ``numpy.quantile`` / ``torch.quantile`` (``median`` = ``q0.5``). They need every value, so
  only the selected neurons' values are kept, once for all the quantiles: tokens x neurons x 8
  bytes (100 000 tokens of 1 000 neurons: 0.8 GB); ``mean`` alone keeps sums only.

:func:`add_statistics` stores them in the NeuronSet (extra tensors ``stat.<name>.<kind>``, NaN
at neurons not in the set; ``meta["statistics"]`` records the corpus, its digest, the token
count and these rules), so a saved set can steer without its corpus. Several sets (a set and
its random baselines) are measured in the same single pass.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

from mwork.corpus_pass import PassOptions, TOKEN_RULES, Request, corpus_pass
from mwork.corpus_statistics import QUANTILE_RULE, parse_stat, quantile  # noqa: F401
from mwork.fingerprints import model_digest
from mwork.hooks import NEURON_SITES, DeviceCache
from mwork.neurons.neuronset import STATISTIC_PREFIX, NeuronSet
from mwork.texts import TextHasher

POSITIONS_RULE = TOKEN_RULES["truncate-sorted"]


def _union(sets: Sequence[NeuronSet]) -> NeuronSet:
    out = sets[0]
    for ns in sets[1:]:
        out = out | ns
    return out


class _Select:
    """A read transform: the chosen channels of a site's values."""

    def __init__(self, channels: torch.Tensor):
        self.index = DeviceCache(channels)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(-1, self.index.on(x))


@dataclass(frozen=True)
class MeasureOptions:
    """How the one pass of :func:`measure_statistics` runs: ``max_length`` tokens per document
    (recorded: it decides which tokens count), ``batch_size`` documents per forward pass,
    ``progress`` bars and notes on stderr."""

    max_length: int = 256
    batch_size: int = 8
    progress: bool = True


def measure_statistics(model: torch.nn.Module, tokenizer: Any, texts: Iterable[str],
                       neurons: NeuronSet | Sequence[NeuronSet], stats: Sequence[str] = ("mean", "median"), *,
                       options: MeasureOptions = MeasureOptions()) -> tuple[dict[str, dict[str, torch.Tensor]],
                                                                            dict[str, Any]]:
    """The statistics ``stats`` of the activations of the neurons of ``neurons`` (one set or several:
    their union is measured in one pass) on ``texts``. Returns ``({stat: {kind: (layers, neurons)
    tensor, NaN outside the union}}, info)`` with ``info`` the facts :func:`add_statistics` records."""
    max_length, batch_size, progress = options.max_length, options.batch_size, options.progress
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
    texts = list(texts)
    hasher = TextHasher()
    for text in texts:
        hasher.update(text)
    qs = [0.5 if s == "median" else float(s[1:]) for s in names if s != "mean"]
    requests = []
    for kind in union.kinds:
        channels = {layer: union.indices(kind, layer) for layer in range(union.num_layers)}
        channels = {layer: c for layer, c in channels.items() if c.numel()}
        if not channels:
            continue
        read = {layer: _Select(c) for layer, c in channels.items()}
        width = {layer: len(c) for layer, c in channels.items()}
        if "mean" in names:
            requests.append(Request("mean", NEURON_SITES[kind], sorted(channels), read=read, width=width,
                                    key=f"mean.{kind}"))
        if qs:
            requests.append(Request("quantiles", NEURON_SITES[kind], sorted(channels), {"qs": qs}, read=read,
                                    width=width, key=f"quantiles.{kind}"))
    run = corpus_pass(model, tokenizer, {"corpus": texts}, requests,
                      PassOptions("truncate-sorted", max_length, batch_size=batch_size), progress=progress,
                      desc="activation statistics")
    empty, n_docs, measured = run.empty["corpus"], len(texts), len(run.corpora["corpus"].measured)
    if not measured:
        raise ValueError(f"none of the {n_docs} documents has a token to measure (empty documents: {empty[:10]}); "
                         "give texts of the target language")
    out: dict[str, dict[str, torch.Tensor]] = {s: {} for s in names}
    for kind in union.kinds:
        shape = union.masks[kind].shape
        for s in names:
            out[s][kind] = torch.full(shape, float("nan"), dtype=torch.float64)
        for layer in range(union.num_layers):
            channels = union.indices(kind, layer)
            if not channels.numel():
                continue
            quantiles = run.value(f"quantiles.{kind}", "corpus", layer) if qs else None
            for s in names:
                if s == "mean":
                    v = run.value(f"mean.{kind}", "corpus", layer)
                else:
                    v = quantiles[qs.index(0.5 if s == "median" else float(s[1:]))]
                out[s][kind][layer, channels] = v
    if empty and progress:
        print(f"[mwork statistics] {len(empty)} of {n_docs} documents have no token to measure (numbers "
              f"{empty[:10]}{' ...' if len(empty) > 10 else ''}): not counted", file=sys.stderr)
    info = {"stats": names, "documents": n_docs, "measured_documents": measured, "empty_documents": empty,
            "tokens": run.n_tokens("corpus"), "corpus_sha256": hasher.hexdigest(),
            "corpus_sha256_rule": TextHasher.RULE, "max_length": max_length, "positions": POSITIONS_RULE,
            "quantiles": QUANTILE_RULE,
            "sites": {k: f"the neuron site of {k} (mwork.hooks.NEURON_SITES)" for k in union.kinds},
            "model_digest": model_digest(model)}
    return out, info


def add_statistics(model: torch.nn.Module, tokenizer: Any, neurons: NeuronSet | Sequence[NeuronSet],
                   texts: Iterable[str], stats: Sequence[str] = ("mean", "median"), *, language: str | None = None,
                   corpus: Any = None, options: MeasureOptions = MeasureOptions()) -> NeuronSet | list[NeuronSet]:
    """``neurons`` (one set or several, measured in one pass) with the target language's activation
    statistics stored in them (``NeuronSet.statistic``; save the set to keep them)::

        zh = NeuronSet.load("neurons/zh.safetensors", model)
        zh = add_statistics(model, tokenizer, zh, read_texts("xquad:zh[0:24]"), ("mean", "median"), language="zh")
        zh.save("neurons/zh.safetensors")          # steers without its corpus from now on

    ``language``: the texts' language (recorded); ``corpus``: a description of them (recorded);
    ``options``: tokens per document, batching, progress (:class:`MeasureOptions`)."""
    single = isinstance(neurons, NeuronSet)
    sets = [neurons] if single else list(neurons)
    values, info = measure_statistics(model, tokenizer, texts, sets, stats, options=options)
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
