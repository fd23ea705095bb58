"""Activation AP (Kojima et al., NAACL 2024, "On the Multilingual Ability of Decoder-based
Pre-trained Language Models: Finding and Controlling Language-Specific Neurons", after Cuadros
et al. 2022): how well a neuron's activation tells one language's texts from the others'.

Each document of every language gives each neuron one number: its activation averaged over the
document's tokens. For language l, the documents of l are the positives and those of every other
language the negatives; a neuron's score is the average precision (AP) of these numbers as a
detector of l -- exactly ``sklearn.metrics.average_precision_score`` (tied values share one
threshold). The authors then keep, per language, the N neurons of highest AP ("top": they fire
for l) and the N of lowest AP ("bottom": they fire for the others), ranked over every unit of
the model together (N = 1000 in the paper).

Which activation. The authors' code (``selfcond``, after Cuadros et al.) reads the output of
every ``nn.Linear`` of the decoder except the LM head, mean-pooled over the tokens (for
LLaMA-2: q/k/v/o_proj, gate_proj, up_proj, down_proj). In mwork's neuron space that is: Q, K and
V neurons at ``q.out`` / ``k.out`` / ``v.out`` (the projections' outputs, the authors' units
exactly), and FFN neuron k read at ``ffn.up.out`` (the FFN input projection's output: up_proj's
channel k, or dense_h_to_4h's / c_fc's for non-gated MLPs) by default; ``ffn_site`` can read it
at ``ffn.act`` or ``ffn.in`` (the down projection's input, what deactivation switches off)
instead. o_proj and down_proj outputs are hidden-state channels, not neurons here, and are not
scored. The authors intervene by fixing a unit to its median on language-l texts; the
comparison experiment uses zeroing and mean-patching for every method alike.

Score per neuron and language (sets of any size, "top and bottom" as the authors'): over every
scored neuron (all layers and kinds), rank r_top by AP descending and r_bottom by AP ascending
(ties: lower flat index first); score = M - 2 * min(r_top, r_bottom) - [r_bottom < r_top], so the
n highest scores are the ceil(n/2) top and floor(n/2) bottom neurons. Every neuron is eligible.

**On dictionary features** (``units``: a ``mwork.units.Dictionary``): each document's mean
activation of each feature (read in the same pass through the dictionary's encoder,
``stats.FEATURES``) instead of a neuron's; the same AP, the same two-sided score over every feature
of the dictionary, the same native rule (``top`` of highest and ``bottom`` of lowest AP: the
defaults, 1000 each, were set for a model's ~10^5 neurons; a dictionary of a few thousand
features wants smaller ones). ``kinds`` and ``ffn_site`` do not apply. Sets carry each feature's
``ap`` and ``mean`` activation for that language.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mwork.config import fingerprint, option
from mwork.models.adapters import KINDS
from mwork.neurons.methods.base import DetectionMethod, LanguageScores, check_languages
from mwork.neurons.methods.registry import register_detection_method
from mwork.neurons.methods.lape import StatsSettings
from mwork.neurons.methods.stats import FEATURES, CorpusStats, StatsRequest

FFN_SITES = ("ffn.up.out", "ffn.act", "ffn.in")
ATTN_SITES = {"q": "q.out", "k": "k.out", "v": "v.out"}


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


@dataclass(frozen=True)
class ApConfig(StatsSettings):
    """Activation AP's settings (module docstring) and the pass settings."""

    kinds: tuple[str, ...] = option(tuple(KINDS), "neuron kinds, comma-separated", parse=_kinds)
    ffn_site: str = option("ffn.up.out", "AP: where FFN neurons are read (the authors: the input projection's "
                           "output)", choices=FFN_SITES, flag="--ap-ffn-site")
    top: int = option(1000, "AP: the method's own sets keep this many neurons of highest AP per language",
                      flag="--ap-top")
    bottom: int = option(1000, "AP: ... and this many of lowest AP", flag="--ap-bottom")

    def __post_init__(self) -> None:
        super().__post_init__()
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        object.__setattr__(self, "kinds", kinds)
        if not kinds or set(kinds) - set(KINDS) or len(set(kinds)) != len(kinds):
            raise ValueError(f"kinds must name each of {', '.join(KINDS)} at most once, got {','.join(kinds)}")
        if self.ffn_site not in FFN_SITES:
            raise ValueError(f"ffn_site must be one of {', '.join(FFN_SITES)}, got {self.ffn_site!r}")
        for name in ("top", "bottom"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.top + self.bottom == 0:
            raise ValueError("top (--ap-top) and bottom (--ap-bottom) are both 0: the sets would hold no neuron")

    def site(self, kind: str) -> str:
        return self.ffn_site if kind == "ffn" else ATTN_SITES[kind]


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AP of each column of ``scores`` (documents, neurons) as a detector of ``labels``
    ((documents,) bool, or (detectors, documents) for several label sets at once, sharing one
    sort): the sum over the distinct score thresholds, from the highest, of the recall gained
    there times the precision there (``sklearn.metrics.average_precision_score``). Returns
    (neurons,), or (detectors, neurons)."""
    labels = torch.as_tensor(labels).bool()
    single = labels.dim() == 1
    labels = labels[None] if single else labels
    if scores.dim() != 2 or scores.shape[0] != labels.shape[1]:
        raise ValueError(f"scores must be (documents, neurons) with {labels.shape[1]} documents, got "
                         f"{tuple(scores.shape)}")
    positives = labels.sum(1)
    if bool((positives == 0).any() | (positives == labels.shape[1]).any()):
        raise ValueError("average precision needs positive and negative documents")
    if torch.isnan(scores).any():
        raise ValueError("activation means contain NaN; use float32 or a shorter max_length")
    values, order = torch.sort(scores.to(torch.float64), dim=0, descending=True, stable=True)
    end = torch.ones_like(values, dtype=torch.bool)
    end[:-1] = values[:-1] != values[1:]  # the last position of each group of tied values
    rank = torch.arange(1, labels.shape[1] + 1, dtype=torch.float64)[:, None]
    out = []
    for y, p in zip(labels, positives):
        tp = y.to(torch.float64)[order].cumsum(0)
        tp_at_end = torch.where(end, tp, torch.zeros_like(tp))
        before = torch.cat([torch.zeros_like(tp[:1]), torch.cummax(tp_at_end, 0).values[:-1]])
        gain = torch.where(end, (tp - before) * (tp / rank), torch.zeros_like(tp))
        out.append(gain.sum(0) / p)
    result = torch.stack(out)
    return result[0] if single else result


def two_sided_scores(ap: torch.Tensor) -> torch.Tensor:
    """The top-and-bottom score of flat AP values (module docstring), float64."""
    m = len(ap)
    r_top = torch.empty(m, dtype=torch.long)
    r_top[torch.sort(ap, descending=True, stable=True).indices] = torch.arange(m)
    r_bot = torch.empty(m, dtype=torch.long)
    r_bot[torch.sort(ap, stable=True).indices] = torch.arange(m)
    return (m - 2 * torch.minimum(r_top, r_bot) - (r_bot < r_top).long()).to(torch.float64)


@register_detection_method
class ActivationAP(DetectionMethod):
    name = "ap"
    description = ("average precision of each neuron's mean activation as a language detector "
                   "(Kojima et al., NAACL 2024)")
    config_class = ApConfig
    statistics = True
    unit_kinds = ("neurons", "dictionary")

    def kinds(self, config: ApConfig) -> tuple[str, ...]:
        return tuple(k for k in KINDS if k in config.kinds)

    def check_units(self, units: Any = None, config: Any = None) -> None:
        super().check_units(units, config)
        if units is not None and config is not None and config.top + config.bottom > units.count():
            raise ValueError(f"AP top {config.top} + bottom {config.bottom} is more than the {units.count()} features "
                             "of the dictionary; lower --ap-top / --ap-bottom")

    def request(self, config: ApConfig, units: Any = None) -> StatsRequest:
        if units is not None:
            return StatsRequest(doc_means=(FEATURES,), site_means=(FEATURES,))
        return StatsRequest(doc_means=tuple(config.site(k) for k in self.kinds(config)))

    def ap_values(self, stats: CorpusStats, config: ApConfig,
                  sites: dict[str, str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """Per language and kind, each neuron's AP (layers, n); ``sites``: {kind: site} read
        (default: the config's neuron sites; ``{"features": FEATURES}`` for a dictionary)."""
        langs = check_languages(stats.langs, "activation AP")
        few = [lang for lang in langs if len(stats.doc_index[lang]) == 0]
        if few:
            raise ValueError(f"activation AP: the corpus of {', '.join(few)} has no non-empty document")
        out: dict[str, dict[str, torch.Tensor]] = {lang: {} for lang in langs}
        sites = sites or {kind: config.site(kind) for kind in self.kinds(config)}
        for kind, site in sites.items():
            means = stats.doc_means(site)
            docs = torch.cat([means[lang] for lang in langs])  # (D, layers, n)
            owner = torch.cat([torch.full((len(means[lang]),), j) for j, lang in enumerate(langs)])
            labels = torch.stack([owner == j for j in range(len(langs))])  # one detector per language
            per_layer = [average_precision(docs[:, i], labels) for i in range(docs.shape[1])]  # (langs, n) each
            for j, lang in enumerate(langs):
                out[lang][kind] = torch.stack([ap[j] for ap in per_layer])
        return out

    def from_stats(self, stats: CorpusStats, config: ApConfig, units: Any = None) -> LanguageScores:
        if units is not None:
            return self._feature_scores(stats, config, units)
        aps = self.ap_values(stats, config)
        kinds = self.kinds(config)
        scores, eligible, extra = {}, {}, {}
        for lang in stats.langs:
            flat = torch.cat([aps[lang][k].flatten() for k in kinds])
            two = two_sided_scores(flat)
            scores[lang], start = {}, 0
            for k in kinds:
                size = aps[lang][k].numel()
                scores[lang][k] = two[start:start + size].view(aps[lang][k].shape)
                start += size
            eligible[lang] = {k: torch.ones_like(aps[lang][k], dtype=torch.bool) for k in kinds}
            extra[lang] = {f"ap.{k}": aps[lang][k].clone() for k in kinds}
        n_docs = {lang: int(len(stats.doc_index[lang])) for lang in stats.langs}
        meta = {"settings": fingerprint(config), "sites": {k: config.site(k) for k in kinds}, "documents": n_docs,
                "statistics": stats.info}
        rule = ("activation AP: each neuron's mean activation over a document's tokens (sites "
                + ", ".join(f"{k} at {config.site(k)}" for k in kinds) + ") scored by average precision as a "
                "detector of the language among all the languages' documents; score = two-sided rank (the n "
                "highest: the ceil(n/2) of highest AP and the floor(n/2) of lowest AP over every layer and kind)")
        return LanguageScores(self.name, stats.langs, stats.fingerprint, scores, eligible, rule, meta, extra)

    def _feature_scores(self, stats: CorpusStats, config: ApConfig, units: Any) -> LanguageScores:
        """AP of each feature's per-document mean activation (module docstring)."""
        aps = self.ap_values(stats, config, {FEATURES: FEATURES})
        means = stats.language_means(FEATURES)
        scores, eligible, extra = {}, {}, {}
        for lang in stats.langs:
            ap = aps[lang][FEATURES]
            scores[lang] = {FEATURES: two_sided_scores(ap.flatten()).view(ap.shape)}
            eligible[lang] = {FEATURES: torch.ones_like(ap, dtype=torch.bool)}
            extra[lang] = {"ap": ap.clone(), "mean": means[lang].clone()}
        meta = {"settings": fingerprint(config), "site": units.read_site or units.site, "units": "dictionary features",
                "documents": {lang: int(len(stats.doc_index[lang])) for lang in stats.langs}, "statistics": stats.info}
        rule = ("activation AP on dictionary features: each feature's mean activation over a document's tokens scored "
                "by average precision as a detector of the language among all the languages' documents; score = "
                "two-sided rank (the n highest: the ceil(n/2) of highest AP and the floor(n/2) of lowest AP over every "
                "feature)")
        return LanguageScores(self.name, stats.langs, stats.fingerprint, scores, eligible, rule, meta, extra, units)

    def native_sets(self, scores: LanguageScores, config: ApConfig) -> dict[str, Any]:
        """The authors' sets: the ``top`` neurons of highest AP and the ``bottom`` of lowest (of
        features: the same over the dictionary's features)."""
        if scores.units is not None:
            return self._feature_sets(scores, config)
        kinds = scores.kinds
        out = {}
        for lang in scores.langs:
            flat = torch.cat([scores.extra[lang][f"ap.{k}"].flatten() for k in kinds])
            pick = _top_and_bottom(flat, config, "scored neurons")
            ns = scores.top(lang, 0)
            start = 0
            for k in kinds:
                size = ns.masks[k].numel()
                ns.masks[k] = pick[start:start + size].view(ns.masks[k].shape).clone()
                start += size
            ns.meta.update(rule=f"activation AP (the authors' rule): the {config.top} neurons of highest and the "
                                f"{config.bottom} of lowest AP for {lang}, over every layer and kind",
                           size=int(pick.sum()), beyond_rule=0)
            out[lang] = ns
        return out


    def _feature_sets(self, scores: LanguageScores, config: ApConfig) -> dict[str, Any]:
        out = {}
        for lang in scores.langs:
            flat = scores.extra[lang]["ap"].flatten()
            pick = _top_and_bottom(flat, config, "features of the dictionary; lower --ap-top / --ap-bottom")
            out[lang] = scores.pick(lang, pick.nonzero().flatten(), {
                "rule": f"activation AP (the authors' rule) on dictionary features: the {config.top} features of "
                        f"highest and the {config.bottom} of lowest AP for {lang}"})
        return out


def _top_and_bottom(flat: torch.Tensor, config: ApConfig, what: str) -> torch.Tensor:
    """The mask of the ``config.top`` highest and ``config.bottom`` lowest of ``flat`` (stable
    order: ties go to the earlier unit)."""
    if config.top + config.bottom > len(flat):
        raise ValueError(f"AP top {config.top} + bottom {config.bottom} is more than the {len(flat)} {what}")
    pick = torch.zeros(len(flat), dtype=torch.bool)
    pick[torch.sort(flat, descending=True, stable=True).indices[:config.top]] = True
    pick[torch.sort(flat, stable=True).indices[:config.bottom]] = True
    return pick
