"""LAPE (Tang et al., ACL 2024, "Language-Specific Neurons: The Key to Multilingual
Capabilities in Large Language Models"): language activation probability entropy.

For FFN neuron j of layer i and language l, the activation probability p_l is the share of
language-l tokens at which the output of the FFN's non-linearity (``ffn.act``: act(W_gate x) in
gated MLPs, act(W_up x) otherwise) is > 0. Normalised over the languages, p'_l = p_l / sum p,
its entropy H = -sum p'_l ln p'_l is low for a neuron that fires for few languages. The
authors' rule (their ``identify.py``; our implementation, written from their description):

1. tau = the ``filter_rate`` quantile of all activation probabilities (every layer, neuron and
   language: the k-th smallest, k = round(M * filter_rate)); a neuron none of whose languages
   has p > tau is dropped (its entropy set to +inf);
2. the round(N * ``top_rate``) neurons of lowest entropy are kept (N: all FFN neurons; ties:
   lower layer, then lower index);
3. bar = the ``activation_bar_ratio`` quantile of all probabilities; a kept neuron belongs to
   every language whose p exceeds bar -- so a neuron may belong to several languages.

Defaults: ``top_rate`` 0.01, ``filter_rate`` 0.95, ``activation_bar_ratio`` 0.95 -- the paper's
"lowest 1 %" and "95th percentile", and the values of the released ``identify.py`` at commit
fdecc8d. A later commit of that script (1ec944c, for LLaMA-2-70B) has ``top_rate = 0.05``; we
keep the paper's 1 %.

Score per neuron and language (for sets of equal size): -H, eligible where the neuron passes
the filter and p_l > bar. The n highest-scoring eligible neurons of l are the n lowest-entropy
neurons the authors' step 3 would give l; at n = the size of the authors' set for l they are
that set.

**On dictionary features** (``units``: a ``mwork.units.Dictionary``; SAE-LAPE, Andrylie et al.
2025): the same rule and thresholds on the features' firing probabilities -- the share of a
language's counted tokens at which a feature's activation is > 0, read in the same pass through
the dictionary's encoder (``stats.FEATURES``). N is then every feature of the dictionary (all its
layers); sets are subsets of the dictionary, carrying each feature's ``activation_probability``,
``entropy`` and ``mean`` activation for that language.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from mwork.config import fingerprint, option
from mwork.neurons.methods.base import DetectionMethod, LanguageScores, check_languages
from mwork.neurons.methods.registry import register_detection_method
from mwork.neurons.methods.stats import FEATURES, CorpusStats, StatsRequest

SITE = "ffn.act"


@dataclass(frozen=True)
class StatsSettings:
    """How the streaming pass reads the documents (shared by the statistics methods)."""

    max_length: int = option(512, "tokens per window; longer documents are split into windows")
    truncate: bool = option(False, "read only each document's first MAX_LENGTH tokens")
    batch_size: int = option(8, "windows per batch")

    def __post_init__(self) -> None:
        for name in ("max_length", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _rate(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")


@dataclass(frozen=True)
class LapeConfig(StatsSettings):
    """LAPE's thresholds (module docstring) and the pass settings."""

    top_rate: float = option(0.01, "LAPE: keep this share of all FFN neurons, those of lowest entropy",
                             flag="--lape-top-rate")
    filter_rate: float = option(0.95, "LAPE: drop neurons no language of which has an activation probability "
                                "above this quantile of all probabilities", flag="--lape-filter-rate")
    activation_bar_ratio: float = option(0.95, "LAPE: a kept neuron belongs to each language whose activation "
                                         "probability is above this quantile", flag="--lape-activation-bar-ratio")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("top_rate", "filter_rate", "activation_bar_ratio"):
            _rate(name, getattr(self, name))


def kth_smallest(values: torch.Tensor, rate: float, what: str) -> float:
    """The k-th smallest of ``values`` (flattened), k = round(len * rate), as in the authors' code."""
    flat = values.flatten()
    k = round(len(flat) * rate)
    if not 1 <= k <= len(flat):
        raise ValueError(f"{what}: round({len(flat)} * {rate}) = {k} is not a rank in 1..{len(flat)}")
    return float(torch.sort(flat).values[k - 1])


@dataclass
class LapeStatistics:
    """Activation probabilities (layers, ffn, languages) and what the rule derives from them."""

    probs: torch.Tensor
    entropy: torch.Tensor  # +inf where the filter drops the neuron
    filter_threshold: float
    activation_bar: float
    kept: torch.Tensor  # flat indices of the lowest-entropy neurons (the authors' step 2), in rank order


def lape_statistics(probs: torch.Tensor, config: LapeConfig) -> LapeStatistics:
    """Steps 1-3 of the module docstring from probabilities of shape (layers, ffn, languages)."""
    probs = probs.to(torch.float64)
    total = probs.sum(-1, keepdim=True)
    normed = torch.where(total > 0, probs / total.clamp_min(1e-300), torch.zeros_like(probs))
    logs = torch.where(normed > 0, normed.clamp_min(1e-300).log(), torch.zeros_like(normed))
    entropy = -(normed * logs).sum(-1)
    tau = kth_smallest(probs, config.filter_rate, "LAPE filter_rate")
    entropy = torch.where((probs > tau).any(-1), entropy, torch.full_like(entropy, math.inf))
    count = round(entropy.numel() * config.top_rate)
    if count < 1:
        raise ValueError(f"LAPE top_rate {config.top_rate} keeps round({entropy.numel()} * {config.top_rate}) = 0 "
                         "neurons; raise it")
    kept = torch.sort(entropy.flatten(), stable=True).indices[:count]
    bar = kth_smallest(probs, config.activation_bar_ratio, "LAPE activation_bar_ratio")
    return LapeStatistics(probs, entropy, tau, bar, kept)


@register_detection_method
class Lape(DetectionMethod):
    name = "lape"
    description = "language activation probability entropy of FFN neurons (Tang et al., ACL 2024)"
    config_class = LapeConfig
    statistics = True
    unit_kinds = ("neurons", "dictionary")

    def kinds(self, config: Any) -> tuple[str, ...]:
        return ("ffn",)

    def check_units(self, units: Any = None, config: Any = None) -> None:
        super().check_units(units, config)
        if units is not None and config is not None and round(units.count() * config.top_rate) < 1:
            raise ValueError(f"LAPE top_rate {config.top_rate} keeps round({units.count()} * {config.top_rate}) = 0 "
                             "features of this dictionary; raise --lape-top-rate")

    def request(self, config: LapeConfig, units: Any = None) -> StatsRequest:
        if units is not None:
            return StatsRequest(positive=(FEATURES,), site_means=(FEATURES,))
        return StatsRequest(positive=(SITE,))

    def probabilities(self, stats: CorpusStats, site: str = SITE) -> torch.Tensor:
        """(layers, ffn, languages): the share of each language's counted tokens with ffn.act > 0
        (``site``: ``stats.FEATURES`` for a dictionary's features, (1, features, languages))."""
        check_languages(stats.langs, "LAPE")
        stats.check_tokens("LAPE")
        return torch.stack([stats.positive[lang][site].sum(0).to(torch.float64) / stats.n_tokens(lang)
                            for lang in stats.langs], dim=-1)

    def from_stats(self, stats: CorpusStats, config: LapeConfig, units: Any = None) -> LanguageScores:
        if units is not None:
            return self._feature_scores(stats, config, units)
        lape = lape_statistics(self.probabilities(stats), config)
        passes = torch.isfinite(lape.entropy)
        scores, eligible, extra = {}, {}, {}
        for j, lang in enumerate(stats.langs):
            p = lape.probs[..., j]
            scores[lang] = {"ffn": -lape.entropy}
            eligible[lang] = {"ffn": passes & (p > lape.activation_bar)}
            extra[lang] = {"activation_probability.ffn": p.clone(), "entropy.ffn": lape.entropy.clone()}
        meta = {"settings": fingerprint(config), "filter_threshold": lape.filter_threshold,
                "activation_bar": lape.activation_bar, "kept": int(len(lape.kept)),
                "tokens": {lang: stats.n_tokens(lang) for lang in stats.langs}, "site": SITE,
                "statistics": stats.info}
        rule = ("LAPE: score = -entropy of the neuron's activation probabilities (share of tokens with ffn.act > 0) "
                "normalised over the languages; eligible for language l where some language's probability exceeds "
                f"the {config.filter_rate} quantile of all probabilities ({lape.filter_threshold:.6g}) and l's "
                f"exceeds the {config.activation_bar_ratio} quantile ({lape.activation_bar:.6g})")
        return LanguageScores(self.name, stats.langs, stats.fingerprint, scores, eligible, rule, meta, extra)

    def _feature_scores(self, stats: CorpusStats, config: LapeConfig, units: Any) -> LanguageScores:
        """The rule on a dictionary's features (module docstring)."""
        lape = lape_statistics(self.probabilities(stats, FEATURES), config)
        means = stats.language_means(FEATURES)
        passes = torch.isfinite(lape.entropy)
        scores, eligible, extra = {}, {}, {}
        for j, lang in enumerate(stats.langs):
            p = lape.probs[..., j]
            scores[lang] = {FEATURES: -lape.entropy}
            eligible[lang] = {FEATURES: passes & (p > lape.activation_bar)}
            extra[lang] = {"activation_probability": p.clone(), "entropy": lape.entropy.clone(),
                           "mean": means[lang].clone()}
        meta = {"settings": fingerprint(config), "filter_threshold": lape.filter_threshold,
                "activation_bar": lape.activation_bar, "kept": int(len(lape.kept)),
                "tokens": {lang: stats.n_tokens(lang) for lang in stats.langs}, "site": units.read_site or units.site,
                "units": "dictionary features", "statistics": stats.info}
        rule = ("LAPE on dictionary features: score = -entropy of the feature's firing probabilities (share of tokens "
                "with activation > 0) normalised over the languages; eligible for language l where some language's "
                f"probability exceeds the {config.filter_rate} quantile of all probabilities "
                f"({lape.filter_threshold:.6g}) and l's exceeds the {config.activation_bar_ratio} quantile "
                f"({lape.activation_bar:.6g})")
        return LanguageScores(self.name, stats.langs, stats.fingerprint, scores, eligible, rule, meta, extra, units)

    def native_sets(self, scores: LanguageScores, config: LapeConfig) -> dict[str, Any]:
        """The authors' sets: the round(N * top_rate) lowest-entropy neurons (after the filter),
        each given to every language whose probability exceeds the bar (of features: the same,
        over the dictionary's features)."""
        if scores.units is not None:
            return self._feature_sets(scores, config)
        entropy = -scores.scores[scores.langs[0]]["ffn"]
        count = round(entropy.numel() * config.top_rate)
        if count < 1:
            raise ValueError(f"LAPE top_rate {config.top_rate} keeps no neuron of {entropy.numel()}; raise it")
        kept = torch.zeros(entropy.numel(), dtype=torch.bool)
        kept[torch.sort(entropy.flatten(), stable=True).indices[:count]] = True
        kept = kept.view(entropy.shape)
        out = {}
        for lang in scores.langs:
            ns = scores.top(lang, 0)
            probability = scores.extra[lang]["activation_probability.ffn"]
            ns.masks["ffn"] = kept & (probability > scores.meta["activation_bar"])
            ns.meta.update(rule=f"LAPE (the authors' rule): the {count} lowest-entropy FFN neurons (top_rate "
                                f"{config.top_rate} of {entropy.numel()}) whose activation probability for {lang} "
                                f"exceeds the bar {scores.meta['activation_bar']:.6g}",
                           size=int(ns.masks["ffn"].sum()), beyond_rule=0)
            out[lang] = ns
        return out

    def _feature_sets(self, scores: LanguageScores, config: LapeConfig) -> dict[str, Any]:
        entropy = -scores.scores[scores.langs[0]][FEATURES].flatten()
        count = round(entropy.numel() * config.top_rate)
        if count < 1:
            raise ValueError(f"LAPE top_rate {config.top_rate} keeps no feature of {entropy.numel()}; raise it")
        kept = torch.zeros(entropy.numel(), dtype=torch.bool)
        kept[torch.sort(entropy, stable=True).indices[:count]] = True
        bar = scores.meta["activation_bar"]
        out = {}
        for lang in scores.langs:
            ids = (kept & (scores.extra[lang]["activation_probability"].flatten() > bar)).nonzero().flatten()
            out[lang] = scores.pick(lang, ids, {
                "rule": f"LAPE (the authors' rule) on dictionary features: the {count} lowest-entropy features "
                        f"(top_rate {config.top_rate} of {entropy.numel()}) whose firing probability for {lang} "
                        f"exceeds the bar {bar:.6g}"})
        return out
