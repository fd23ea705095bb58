"""Monolinguality of dictionary features (Deng et al., ACL 2025, "Unveiling Language-Specific
Features in Large Language Models via Sparse Autoencoders").

For feature s and language L, mu_s^L is the mean activation of s over L's counted tokens (read in
the one corpus pass through the dictionary's encoder, ``stats.FEATURES``), and the score is

    nu_s^L = mu_s^L - gamma_s^L,   gamma_s^L = mean over the other languages I != L of mu_s^I

(the difference, as the authors' released code computes it: a language's mean minus the mean of
the other languages' means). A feature with a large nu fires much more on L than on the others.
The authors rank the features of each layer's SAE by nu for each language; the method's own sets
here are the ``top_k`` features of highest nu per language and layer of the dictionary, among those
with nu > 0 (eligible). Sets of any size (``scores.top(lang, n)``) rank every feature of every
layer of the dictionary together by nu.

Tokens: the pass's ``"windows"`` rule (text tokens, never the special tokens: the authors drop
the BOS position too). Scores only dictionary features: a neuron's activation is signed (GELU,
SiLU), so a difference of means does not say that it *fires* for a language; use LAPE or AP there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mwork.config import fingerprint, option
from mwork.neurons.methods.base import DetectionMethod, LanguageScores, check_languages
from mwork.neurons.methods.lape import StatsSettings
from mwork.neurons.methods.registry import register_detection_method
from mwork.neurons.methods.stats import FEATURES, CorpusStats, StatsRequest


@dataclass(frozen=True)
class MonolingualityConfig(StatsSettings):
    """How many features each language's own set keeps per layer, and the pass settings."""

    mono_top_k: int = option(10, "monolinguality: the method's own sets keep this many features of highest score per "
                             "language and layer of the dictionary (those with a positive score)",
                             flag="--mono-top-k")

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.mono_top_k, bool) or not isinstance(self.mono_top_k, int) or self.mono_top_k < 1:
            raise ValueError(f"mono_top_k (--mono-top-k) must be a positive integer, got {self.mono_top_k!r}")


def monolinguality(means: torch.Tensor) -> torch.Tensor:
    """nu (..., languages) from the mean activations ``means`` (..., languages): each language's
    mean minus the mean of the other languages' means."""
    n = means.shape[-1]
    if n < 2:
        raise ValueError("monolinguality compares languages: give at least two")
    others = (means.sum(-1, keepdim=True) - means) / (n - 1)
    return means - others


@register_detection_method
class Monolinguality(DetectionMethod):
    name = "monolinguality"
    description = ("monolinguality of dictionary features: a language's mean activation minus the other languages' "
                   "(Deng et al., ACL 2025; --units sae:DIR)")
    config_class = MonolingualityConfig
    statistics = True
    unit_kinds = ("dictionary",)
    units_refusal = ("the score is a difference of mean activations, which says a unit fires for a language only "
                     "when its activation is non-negative (a dictionary feature); give --units sae:DIR, or use "
                     "--method lape / ap on neurons")

    def kinds(self, config: Any) -> tuple[str, ...]:
        return (FEATURES,)

    def request(self, config: MonolingualityConfig, units: Any = None) -> StatsRequest:
        self.check_units(units)
        return StatsRequest(site_means=(FEATURES,))

    def from_stats(self, stats: CorpusStats, config: MonolingualityConfig, units: Any = None) -> LanguageScores:
        self.check_units(units)
        langs = check_languages(stats.langs, "monolinguality")
        means = stats.language_means(FEATURES)
        nu = monolinguality(torch.stack([means[lang] for lang in langs], dim=-1))  # (1, features, languages)
        scores, eligible, extra = {}, {}, {}
        for j, lang in enumerate(langs):
            scores[lang] = {FEATURES: nu[..., j].clone()}
            eligible[lang] = {FEATURES: nu[..., j] > 0}
            extra[lang] = {"monolinguality": nu[..., j].clone(), "mean": means[lang].clone()}
        meta = {"settings": fingerprint(config), "site": units.read_site or units.site, "units": "dictionary features",
                "tokens": {lang: stats.n_tokens(lang) for lang in langs}, "statistics": stats.info}
        rule = ("monolinguality (Deng et al. 2025): score = the feature's mean activation over the language's tokens "
                "minus the mean over the other languages of their mean activations; eligible where it is > 0")
        return LanguageScores(self.name, langs, stats.fingerprint, scores, eligible, rule, meta, extra, units)

    def native_sets(self, scores: LanguageScores, config: MonolingualityConfig) -> dict[str, Any]:
        """Per language, the ``mono_top_k`` features of highest score of each layer of the
        dictionary, among those with a positive score."""
        units = scores.units
        out = {}
        for lang in scores.langs:
            nu = scores.scores[lang][FEATURES].flatten()
            chosen = []
            for layer in sorted(set(units.layers.tolist())):
                at = units.positions(layer)
                at = at[nu[at] > 0]
                order = torch.sort(nu[at], descending=True, stable=True).indices[:config.mono_top_k]
                chosen.append(at[order])
            ids = torch.sort(torch.cat(chosen)).values if chosen else torch.zeros(0, dtype=torch.long)
            out[lang] = scores.pick(lang, ids, {
                "rule": f"monolinguality (Deng et al. 2025): the {config.mono_top_k} features of highest score for "
                        f"{lang} in each layer of the dictionary, among those with a positive score"})
        return out
