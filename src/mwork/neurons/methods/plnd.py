"""PLND behind the method interface: today's detection (``mwork.neurons.detect``, its
``DetectConfig`` unchanged) once per language, and a score per neuron and language.

PLND marks, per document, the neurons important by a rule (default: the top 20 % per layer and
kind) and keeps a language's neurons important in at least a fraction q of its documents
(q = 1: all of them); a language's *specific* neurons are its set minus the neurons in the sets
of all languages (the reference code's rule, ``mwork.neurons.specific``).

As a score. Let f_l = the share of language l's documents in which the neuron is important
(``doc_count / n_docs`` of its kind) and m = the minimum of f over the other languages. The
neuron is in l's specific set at threshold q exactly when f_l >= q > m, so it is l-specific for
some q iff f_l > m (*eligible*), and the highest such q is f_l. Score = f_l + (f_l - m) / (2 n + 2),
n being l's number of documents for that kind: neurons rank by f_l (the highest threshold at
which they are specific), ties by the margin f_l - m (the spread of thresholds at which they
are); the margin term is below the 1/n step between two values of f_l, so it never reorders
them. At q = 1 (the paper) the specific set of l is the first ones of this ranking. Neurons
with f_l <= m are never l-specific; they are drawn after all eligible ones, and a drawn set
says how many (``beyond_rule``).

Document counts add up: the counts of two disjoint halves of a corpus sum to the counts of the
whole (``PlndCounts.__add__``), which the comparison experiment uses to detect once per half.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from mwork.config import fingerprint
from mwork.neurons.detect_config import DetectConfig
from mwork.neurons.methods.base import DetectionMethod, LanguageScores, check_languages
from mwork.neurons.neuronset import NeuronSet
from mwork.neurons.rules import kept

ANY_LANGUAGE = "(each corpus)"


@dataclass
class PlndCounts:
    """Per kind: in how many documents each neuron was important, and of how many documents."""

    counts: dict[str, torch.Tensor]
    n_docs: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, ns: NeuronSet) -> "PlndCounts":
        """The counts of a ``detect`` result."""
        per_kind = ns.meta["across_documents"]["n_docs_per_kind"]
        info = {key: ns.meta.get(key) for key in ("n_docs", "n_docs_read", "corpus_sha256", "empty_documents",
                                                   "failed_documents", "unscorable_documents")}
        return cls({k: ns.extra[f"doc_count.{k}"].to(torch.int64) for k in ns.kinds},
                   {k: int(per_kind[k]) for k in ns.kinds}, info)

    def __add__(self, other: "PlndCounts") -> "PlndCounts":
        if set(self.counts) != set(other.counts):
            raise ValueError("PLND counts of different kinds cannot be added")
        return PlndCounts({k: self.counts[k] + other.counts[k] for k in self.counts},
                          {k: self.n_docs[k] + other.n_docs[k] for k in self.counts},
                          {"parts": [self.meta, other.meta]})


class Plnd(DetectionMethod):
    name = "plnd"
    description = "parallel language-specific neuron detection (Zhao et al., NeurIPS 2024): mwork detect"
    config_class = DetectConfig

    def make_config(self, config: DetectConfig | None = None, **overrides: Any) -> DetectConfig:
        if config is None:
            return DetectConfig(**{"language": ANY_LANGUAGE, **overrides})
        return DetectConfig.make(config, **overrides)

    def kinds(self, config: DetectConfig) -> tuple[str, ...]:
        return tuple(config.kinds)

    def counts(self, model: torch.nn.Module, tokenizer: Any, documents: Sequence[str], config: DetectConfig,
               lang: str, *, progress: bool = True, model_id: str | None = None) -> PlndCounts:
        """One language's document counts (``mwork.neurons.detect.detect``, unchanged)."""
        from mwork.neurons.detect import detect

        ns = detect(model, tokenizer, documents, DetectConfig.make(config, language=lang), progress=progress,
                    model_id=model_id)
        return PlndCounts.of(ns)

    def scores(self, model: torch.nn.Module, tokenizer: Any, corpora: Mapping[str, Sequence[str]],
               config: DetectConfig, *, progress: bool = True) -> LanguageScores:
        check_languages(list(corpora), "PLND's language-specific rule")
        counts = {lang: self.counts(model, tokenizer, docs, config, lang, progress=progress)
                  for lang, docs in corpora.items()}
        from mwork.models.adapters import get_adapter

        return self.from_counts(counts, config, get_adapter(model).fingerprint())

    def from_counts(self, counts: Mapping[str, PlndCounts], config: DetectConfig,
                    model_fingerprint: Mapping[str, Any]) -> LanguageScores:
        """Scores (module docstring) from every language's document counts."""
        langs = check_languages(list(counts), "PLND's language-specific rule")
        kinds = tuple(config.kinds)
        frac = {lang: {k: (counts[lang].counts[k].to(torch.float64) / counts[lang].n_docs[k]
                           if counts[lang].n_docs[k] else torch.zeros_like(counts[lang].counts[k], dtype=torch.float64))
                       for k in kinds} for lang in langs}
        scores, eligible, extra = {}, {}, {}
        for lang in langs:
            scores[lang], eligible[lang] = {}, {}
            for k in kinds:
                others = torch.stack([frac[o][k] for o in langs if o != lang]).min(0).values
                margin = frac[lang][k] - others
                n = counts[lang].n_docs[k]
                scores[lang][k] = frac[lang][k] + margin / (2 * n + 2)
                eligible[lang][k] = (margin > 0) & (n > 0)
            extra[lang] = {f"doc_count.{k}": counts[lang].counts[k].to(torch.int32) for k in kinds}
        settings = {key: v for key, v in fingerprint(config).items() if key != "language"}
        meta = {"settings": settings, "n_docs": {lang: counts[lang].n_docs for lang in langs},
                "detection": {lang: counts[lang].meta for lang in langs}}
        rule = ("PLND: f = share of the language's documents in which the neuron is important (per-document rule "
                f"{config.document_rule().describe()}); eligible where f exceeds the minimum f of the other "
                "languages (specific at some threshold q); score = f + (f - min other f) / (2 n_docs + 2)")
        return LanguageScores(self.name, langs, dict(model_fingerprint), scores, eligible, rule, meta, extra)

    def native_sets(self, scores: LanguageScores, config: DetectConfig) -> dict[str, NeuronSet]:
        """The paper's sets: important in at least ceil(q * n) of a language's documents
        (q = ``min_doc_fraction``), minus the neurons kept for every language."""
        kinds = scores.kinds
        keep = {lang: {k: kept(scores.extra[lang][f"doc_count.{k}"], scores.meta["n_docs"][lang][k],
                               config.min_doc_fraction) for k in kinds} for lang in scores.langs}
        shared = {k: torch.stack([keep[lang][k] for lang in scores.langs]).all(0) for k in kinds}
        out = {}
        for lang in scores.langs:
            ns = scores.top(lang, 0)
            for k in kinds:
                ns.masks[k] = keep[lang][k] & ~shared[k]
            ns.meta.update(rule=f"PLND (the paper's rule): important in at least a fraction {config.min_doc_fraction} "
                                "of the language's documents, minus the neurons kept for every language",
                           size=ns.count(), beyond_rule=0)
            out[lang] = ns
        return out

