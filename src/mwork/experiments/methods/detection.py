"""The comparison's detection stage: every method's scores on the whole corpora and on their two
halves, and the mean activations for mean-patching; cached under ``<out>/scores`` by content.

* The statistics methods (LAPE, activation AP) and the means share ONE streaming pass
  (``mwork.neurons.methods.stats``) that keeps every statistic per half (even / odd documents);
  the whole corpus is the sum of the halves.
* PLND runs ``mwork.neurons.detect`` on each half of each language; its document counts add up
  to the whole corpus's (``PlndCounts``). Without ``stability`` it runs once on every document.
* Another registered method is run on each part it is needed for.
* A dictionary's features (``--units sae:DIR``): ``run_feature_detection``, one more pass of the
  same kind per dictionary, for the methods that score features, and the features' means.

Each result is saved as ``scores/<method>.<part>.safetensors`` (``means.safetensors`` for the
means) with a key: the digest of the model's weights, every language's texts and the method's
settings. A rerun reuses a file only with the same key, so a resumed experiment computes the
same sets as an uninterrupted one.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from mwork.config import digest, fingerprint
from mwork.files import read_safetensors, save_safetensors
from mwork.neurons.methods import LanguageScores, get_detection_method
from mwork.neurons.methods.stats import FEATURES, CorpusStats, PassOptions, StatsRequest, collect_statistics

if TYPE_CHECKING:
    from mwork.experiments.methods.config import MethodsConfig

PARTS = ("all", "even", "odd")
NEURON_SITES = {"ffn": "ffn.in", "q": "q.out", "k": "k.out", "v": "v.out"}


def say(message: str) -> None:
    print(f"[mwork methods] {message}", file=sys.stderr, flush=True)


@dataclass
class Detection:
    """Scores per method and part (``all``, and ``even`` / ``odd`` with stability), the means
    per kind for mean-patching (or None), and how long each step took (seconds; not cached)."""

    scores: dict[str, dict[str, LanguageScores]] = field(default_factory=dict)
    means: dict[str, torch.Tensor] | None = None
    seconds: dict[str, float] = field(default_factory=dict)


class ScoreCache:
    """Files under ``<out>/scores`` keyed by the digest of their inputs (a file with another key is recomputed)."""

    def __init__(self, folder: Path, base: Mapping[str, Any]):
        self.folder, self.base = folder, dict(base)

    def key(self, what: str, **extra: Any) -> str:
        return digest({**self.base, "what": what, **extra})

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.safetensors"

    def load(self, name: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        path = self.path(name)
        if not path.exists():
            return None
        tensors, meta = read_safetensors(path, "cached score file", "delete it to recompute")
        header = json.loads(meta.get("mwork_methods", "{}"))
        if header.get("key") != key:
            say(f"{path} was computed from other inputs (model, texts or settings): recomputed")
            return None
        return tensors, header

    def save(self, name: str, key: str, tensors: dict[str, torch.Tensor], header: Mapping[str, Any]) -> None:
        save_safetensors(self.path(name), tensors,
                         {"mwork_methods": json.dumps({**header, "key": key}, sort_keys=True, default=str)})


def halves(docs: Sequence[str]) -> dict[str, list[str]]:
    """The even- and odd-numbered documents (positions 0, 2, 4 ... and 1, 3, 5 ...)."""
    return {"even": list(docs[0::2]), "odd": list(docs[1::2])}


def run_detection(model: torch.nn.Module, tokenizer: Any, config: MethodsConfig, texts: Mapping[str, Sequence[str]],
                  out: Path, base_key: Mapping[str, Any], *, progress: bool = True,
                  methods: Sequence[str] | None = None) -> Detection:
    """Every method's scores on neurons (module docstring; ``methods``: these of the config's)
    and, for ``mean`` patching, the means; recorded as made on ``config.model``."""
    model_id = config.model
    methods = tuple(config.methods if methods is None else methods)
    parts = PARTS if config.stability else ("all",)
    cache = ScoreCache(out / "scores", base_key)
    result = Detection({m: {} for m in methods})
    want_means = "mean" in config.interventions
    stats_methods = [m for m in methods if get_detection_method(m).statistics]
    keys = {(m, p): cache.key("scores", method=m, part=p, settings=fingerprint(config.method_config(m)))
            for m in methods for p in parts}
    means_key = cache.key("means", settings={"max_length": config.max_length, "truncate": config.truncate})
    todo_stats = []
    for m in stats_methods:
        for p in parts:
            loaded = cache.load(f"{m}.{p}", keys[m, p])
            if loaded is None:
                todo_stats.append((m, p))
            else:
                result.scores[m][p] = LanguageScores.from_tensors(*loaded)
    if want_means:
        loaded = cache.load("means", means_key)
        if loaded is not None:
            result.means = {k: t for k, t in loaded[0].items()}
    if todo_stats or (want_means and result.means is None):
        request = StatsRequest()
        for m in dict.fromkeys(m for m, _ in todo_stats):
            request = request.merge(get_detection_method(m).request(config.method_config(m)))
        if want_means and result.means is None:
            request = request.merge(StatsRequest(site_means=tuple(NEURON_SITES.values())))
        start = time.perf_counter()
        stats = collect_statistics(model, tokenizer, texts, request,
                                   PassOptions("windows", config.max_length, config.truncate, config.batch_size,
                                               parts=2 if config.stability else 1), progress=progress)
        result.seconds["statistics pass"] = time.perf_counter() - start
        for m, p in todo_stats:
            part = stats.part(None if p == "all" else PARTS.index(p) - 1)
            scores = get_detection_method(m).from_stats(part, config.method_config(m))
            result.scores[m][p] = scores
            cache.save(f"{m}.{p}", keys[m, p], *scores.to_tensors())
        if want_means and result.means is None:
            result.means = language_mean(stats)
            cache.save("means", means_key, {k: v.contiguous() for k, v in result.means.items()},
                       {"rule": "mean over the languages of each language's token mean"})
    for m in methods:
        if m in stats_methods:
            continue
        missing = [p for p in parts if cache.load(f"{m}.{p}", keys[m, p]) is None]
        for p in parts:
            if p not in missing:
                result.scores[m][p] = LanguageScores.from_tensors(*cache.load(f"{m}.{p}", keys[m, p]))
        if not missing:
            continue
        start = time.perf_counter()
        computed = _other_method(model, tokenizer, m, config, texts, parts, model_id=model_id, progress=progress)
        result.seconds[f"{m} detection"] = time.perf_counter() - start
        for p in missing:
            result.scores[m][p] = computed[p]
            cache.save(f"{m}.{p}", keys[m, p], *computed[p].to_tensors())
    return result


def run_feature_detection(model: torch.nn.Module, tokenizer: Any, config: MethodsConfig,
                          texts: Mapping[str, Sequence[str]], cache: ScoreCache, kind: Any, methods: Sequence[str], *,
                          progress: bool = True) -> Detection:
    """The scores of ``methods`` (statistics methods that score features) on the features of
    ``kind`` (a ``units.UnitKind`` with a dictionary), per part, and with ``mean`` patching the
    features' means ({"features": (units,)}: the mean over the languages of each language's token
    mean); cached as ``scores/<method>.<tag>.<part>`` under the dictionary's digest."""
    from mwork.experiments.methods.units import dictionary_digest, feature_settings

    units = kind.dictionary
    parts = PARTS if config.stability else ("all",)
    result = Detection({m: {} for m in methods})
    settings = {m: feature_settings(m, config.method_config(m), units) for m in methods}
    for m in methods:
        get_detection_method(m).check_units(units, settings[m])
    where = dictionary_digest(units)
    keys = {(m, p): cache.key("scores", method=m, part=p, settings=fingerprint(settings[m]), units=where)
            for m in methods for p in parts}
    want_means = "mean" in config.interventions
    means_key = cache.key("means", units=where,
                          settings={"max_length": config.max_length, "truncate": config.truncate})
    todo = []
    for m in methods:
        for p in parts:
            loaded = cache.load(f"{m}.{kind.tag}.{p}", keys[m, p])
            if loaded is None:
                todo.append((m, p))
            else:
                result.scores[m][p] = LanguageScores.from_tensors(*loaded, units=units)
    if want_means:
        loaded = cache.load(f"means.{kind.tag}", means_key)
        if loaded is not None:
            result.means = dict(loaded[0])
    if not todo and (result.means is not None or not want_means):
        return result
    request = StatsRequest(site_means=(FEATURES,) if want_means else ())
    for m in dict.fromkeys(m for m, _ in todo):
        request = request.merge(get_detection_method(m).request(settings[m], units=units))
    start = time.perf_counter()
    stats = collect_statistics(model, tokenizer, texts, request,
                               PassOptions("windows", config.max_length, config.truncate, config.batch_size,
                                           parts=2 if config.stability else 1), progress=progress, units=units)
    result.seconds[f"statistics pass ({kind.label})"] = time.perf_counter() - start
    for m, p in todo:
        part = stats.part(None if p == "all" else PARTS.index(p) - 1)
        scores = get_detection_method(m).from_stats(part, settings[m], units=units)
        result.scores[m][p] = scores
        cache.save(f"{m}.{kind.tag}.{p}", keys[m, p], *scores.to_tensors())
    if want_means and result.means is None:
        means = stats.language_means(FEATURES)
        result.means = {FEATURES: torch.stack([means[lang] for lang in stats.langs]).mean(0).reshape(-1).contiguous()}
        cache.save(f"means.{kind.tag}", means_key, result.means,
                   {"rule": "mean over the languages of each language's token mean", "units": kind.label})
    return result


def language_mean(stats: CorpusStats) -> dict[str, torch.Tensor]:
    """Per kind, the mean over the languages of each language's mean activation at its neuron site."""
    out = {}
    for kind, site in NEURON_SITES.items():
        means = stats.language_means(site)
        out[kind] = torch.stack([means[lang] for lang in stats.langs]).mean(0)
    return out


def _other_method(model: torch.nn.Module, tokenizer: Any, name: str, config: MethodsConfig,
                  texts: Mapping[str, Sequence[str]], parts: Sequence[str], *, model_id: str,
                  progress: bool) -> dict[str, LanguageScores]:
    method = get_detection_method(name)
    cfg = config.method_config(name)
    from mwork.models.adapters import get_adapter

    fp = get_adapter(model).fingerprint()
    if name == "plnd":
        if config.stability:
            counts = {p: {} for p in ("even", "odd")}
            for lang, docs in texts.items():
                for p, half in halves(docs).items():
                    counts[p][lang] = method.counts(model, tokenizer, half, cfg, lang, progress=progress,
                                                    model_id=model_id)
            counts["all"] = {lang: counts["even"][lang] + counts["odd"][lang] for lang in texts}
        else:
            counts = {"all": {lang: method.counts(model, tokenizer, docs, cfg, lang, progress=progress,
                                                   model_id=model_id) for lang, docs in texts.items()}}
        return {p: method.from_counts(counts[p], cfg, fp) for p in parts}
    out = {}
    for p in parts:
        corpora = dict(texts) if p == "all" else {lang: halves(docs)[p] for lang, docs in texts.items()}
        out[p] = method.scores(model, tokenizer, corpora, cfg, progress=progress)
    return out


__all__ = ["Detection", "NEURON_SITES", "PARTS", "ScoreCache", "halves", "language_mean", "run_detection",
           "run_feature_detection"]
