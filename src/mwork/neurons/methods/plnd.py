"""PLND, a detection method like the others: one language's pass (:func:`run_plnd`: the settings,
``DetectConfig``, resolved against the model; every document scored; the document counts and
the kept neurons with the run's metadata), and from several languages' passes a score per
neuron and language and the paper's sets. The ``mwork detect --method plnd`` pipeline
(``mwork.neurons.detect.detect``: the output file, its checkpoint, the data-parallel save) runs
the pass on one language; ``detect_languages(..., method="plnd")`` runs it on each.

PLND marks, per document, the neurons important by a rule (default: the top 20 % per layer and
kind) and keeps a language's neurons important in at least a fraction q of its documents
(q = 1: all of them); a language's *specific* neurons are its set minus the neurons in the sets
of all languages (the reference code's rule, ``mwork.neurons.specific.minus_shared``).

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
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from mwork import distributed
from mwork.config import digest, fingerprint
from mwork.fingerprints import TextHasher
from mwork.models.adapters import get_adapter
from mwork.models.loading import model_name
from mwork.neurons.detect_checkpoint import Progress, rank_checkpoint_path
from mwork.neurons.detect_config import AGGREGATION_ONLY, DetectConfig
from mwork.neurons.methods.base import DetectionMethod, LanguageScores, check_languages
from mwork.neurons.methods.registry import register_detection_method
from mwork.neurons.neuronset import NeuronSet
from mwork.neurons.rules import DocumentRule, kept, kept_masks, min_doc_count
from mwork.neurons.runner import DetectionRun, log
from mwork.neurons.scoring import BlockScorer, Scorer
from mwork.neurons.windows import Windowing
from mwork.neurons.specific import minus_shared

ANY_LANGUAGE = "(each corpus)"


# ---- one language's pass (what ``mwork detect --method plnd`` runs) -----------------------------

UNSCORABLE_RULE = ("a document in which every neuron of a kind scores zero (e.g. a one-token document: no Q/K "
                   "channel can change attention over a single key) cannot rank that kind's neurons; it is listed "
                   "in unscorable_documents and not counted for that kind")


def default_scorer(config: DetectConfig) -> tuple[Scorer, str]:
    """The importance function the settings choose, and how the metadata names it."""
    if config.reference_compat:
        from mwork.neurons.reference import reference_importance

        def ref(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], kinds: Any) -> Mapping:
            return reference_importance(model, batch)

        return ref, "reference code's scores (sum |up_proj(x)| for FFN, unscaled outer product for Q/K, |V output|)"
    from mwork.neurons.importance import importance

    if config.qk_method == "approx":
        def approx(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], kinds: Any) -> Mapping:
            return importance(model, batch, kinds=kinds, method="approx")

        return approx, "mwork.importance: exact Eq. 1 (FFN, V), first-order approximation of Eq. 8 (Q, K)"
    return importance, "mwork.importance: exact Eq. 1 (FFN, V) and Eq. 8 (Q, K)"


@dataclass(frozen=True)
class PlndSetup:
    """A run's settings resolved against the model and tokenizer (checked before any document is read)."""

    config: DetectConfig
    rule: DocumentRule
    shapes: dict[str, tuple[int, int]]
    windowing: Windowing
    scorer: Scorer
    settings: dict[str, Any]

    @property
    def checkpoint_settings(self) -> dict[str, Any]:
        return {k: v for k, v in self.settings.items() if k not in AGGREGATION_ONLY}


def plnd_setup(model: torch.nn.Module, tokenizer: Any, config: DetectConfig, scorer: Scorer | None,
           model_id: str | None) -> PlndSetup:
    rule = config.document_rule()
    adapter = get_adapter(model)
    per_layer = adapter.neuron_counts()
    windowing = Windowing.for_tokenizer(tokenizer, config.max_length, config.truncate)
    if scorer is None:
        scorer, scores_label = default_scorer(config)
    else:
        scores_label = f"custom scorer {getattr(scorer, '__qualname__', repr(scorer))}"
    _warn_if_unselective(rule, config.kinds, per_layer)
    settings = {
        **fingerprint(config),
        "document_rule": rule.describe(),
        "model_id": model_id or model_name(model) or "unknown",
        "fingerprint": adapter.fingerprint(),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "scores": scores_label,
        "special_tokens": {"prefix": list(windowing.prefix), "suffix": list(windowing.suffix)},
        "padding_side": tokenizer.padding_side,
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "vocab_size": len(tokenizer),
    }
    shapes = {k: (adapter.num_layers, per_layer[k]) for k in config.kinds}
    return PlndSetup(config, rule, shapes, windowing, scorer, settings)


def _warn_if_unselective(rule: DocumentRule, kinds: Iterable[str], per_layer: Mapping[str, int]) -> None:
    everything = [k for k in kinds if rule.selects_everything(k, per_layer[k])]
    if not everything:
        return
    values = {k: rule.for_kind(k) for k in everything}
    shown = values if isinstance(rule.value, Mapping) else rule.value
    if rule.name == "top_k":
        log(f"top-k {values} is at least the layer size for {', '.join(everything)}: every neuron of those kinds "
            "is selected in every document")
    elif rule.name == "epsilon":
        log(f"epsilon {shown} is not positive for {', '.join(everything)}: every neuron with a non-zero score is "
            "selected in every document")
    else:
        log(f"top fraction {shown} keeps the whole layer for {', '.join(everything)}: every neuron with a non-zero "
            "score is selected in every document")


def run_plnd(model: torch.nn.Module, tokenizer: Any, documents: Iterable[str], setup: PlndSetup, *,
             checkpoint: str | Path | None = None, resume: bool = True, progress: bool = True,
             corpus_info: Mapping[str, Any] | None = None) -> NeuronSet:
    """One language's PLND pass with the resolved settings ``setup`` (:func:`plnd_setup`): every
    document scored, the per-document rule applied, the document counts merged (over the ranks
    of a data-parallel run) and the kept neurons with the run's metadata. ``checkpoint``: where
    to checkpoint (this rank's file beside it) and, with ``resume``, to resume from. Nothing else
    is written: ``mwork.neurons.detect.detect`` (the pipeline) saves the result."""
    config = setup.config
    rank, world = distributed.rank(), distributed.world_size()
    ckpt = rank_checkpoint_path(checkpoint, rank, world) if checkpoint is not None else None
    # a rank's checkpoint also depends on which blocks it owns; one process keeps the plain settings
    ckpt_settings = setup.checkpoint_settings
    if world > 1:
        ckpt_settings = {**ckpt_settings, "shard": {"rank": rank, "world_size": world}}
    run = DetectionRun(
        score_block=BlockScorer(model, tokenizer, setup.scorer, config.kinds, setup.windowing, config.batch_size,
                                log=log),
        rule=setup.rule, shapes=setup.shapes, buffer_docs=config.buffer_docs, settings=ckpt_settings,
        checkpoint=ckpt, checkpoint_every=config.checkpoint_every, progress=progress, desc=f"detect {config.language}",
    )
    state = run.run(documents, resume=resume)
    corpus = dict(corpus_info or (documents.describe() if hasattr(documents, "describe") else {}))
    return plnd_result(setup, state, corpus)


def plnd_result(setup: PlndSetup, state: Progress, corpus: Mapping[str, Any]) -> NeuronSet:
    """The NeuronSet from the merged counts, with the run's metadata."""
    config, kinds = setup.config, setup.config.kinds
    if state.scored == 0:
        raise ValueError(f"no document could be scored ({state.consumed} read: {len(state.empty)} empty, "
                         f"{len(state.failed)} failed); check the corpus and the text field")
    n_docs = {k: state.n_docs(k) for k in kinds}
    if not any(n_docs.values()):
        raise ValueError(f"no document could be scored for {', '.join(kinds)}: in each of the {state.scored} "
                         "non-empty documents every neuron scores zero (too short? one token cannot rank Q/K "
                         "channels); use longer documents")
    missing = [k for k in kinds if n_docs[k] == 0]
    if missing:
        log(f"no document could be scored for {', '.join(missing)} (every one scores zero there); the set holds no "
            f"{'/'.join(missing)} neurons")
    need = min_doc_count(config.min_doc_fraction, state.scored)
    excluded = f"{len(state.empty)} empty and {len(state.failed)} failed documents excluded"
    short = {k: len(v) for k, v in state.unscorable.items() if v}
    if short:
        excluded += "; per kind, those scoring zero for every neuron of the kind: " + ", ".join(
            f"{k} {n}" for k, n in short.items())
    world = distributed.world_size()
    meta = {
        **setup.settings,
        "name": config.language,
        "across_documents": {
            "rule": "all" if config.min_doc_fraction == 1 else "min_fraction",
            "min_doc_fraction": config.min_doc_fraction,
            "min_doc_count": need,
            "counted_over": f"the {state.scored} successfully scored documents only ({excluded})",
            "n_docs_per_kind": n_docs,
            "min_doc_count_per_kind": {k: min_doc_count(config.min_doc_fraction, n) if n else None
                                       for k, n in n_docs.items()},
            "unscorable_rule": UNSCORABLE_RULE,
        },
        "corpus": dict(corpus),
        "corpus_sha256": state.corpus_sha256,
        "corpus_sha256_rule": TextHasher.RULE,
        "n_docs_read": state.consumed,
        "n_docs": state.scored,
        "empty_documents": state.empty,
        "failed_documents": state.failed,
        "unscorable_documents": {k: list(state.unscorable[k]) for k in kinds},
        "document_numbering": "0-based position in the corpus (text/JSONL: line number - 1)",
        "window_rule": setup.windowing.rule,
        "settings_sha256": digest(setup.checkpoint_settings),
    }
    if world > 1:
        meta["data_parallel"] = {"world_size": world, "sharding": "block i of buffer_docs documents scored by "
                                 "rank i % world_size; counts summed over ranks"}
    if config.reference_compat:
        meta["label"] = ("REFERENCE-COMPAT: reproduces the reference code's scores and top-k rule, "
                         "not the paper's equations")
    masks = kept_masks(state.counts, n_docs, config.min_doc_fraction)
    return NeuronSet(masks, meta, {f"doc_count.{k}": state.counts[k].clone() for k in kinds})


# ---- the method: scores and native sets from several languages' passes ------------------------

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


@register_detection_method
class Plnd(DetectionMethod):
    name = "plnd"
    description = "parallel language-specific neuron detection (Zhao et al., NeurIPS 2024): mwork detect"
    config_class = DetectConfig
    one_language = True
    units_refusal = ("PLND's importance is the exact change of a layer's output (or attention) when one neuron is "
                     "zeroed, computed for every neuron at once from the model's own weights (Eq. 1, 8); a "
                     "dictionary feature has no such closed form (it would take one ablation per feature and "
                     "token); use --method lape, ap or monolinguality on features")

    def make_config(self, config: DetectConfig | None = None, **overrides: Any) -> DetectConfig:
        if config is None:
            return DetectConfig(**{"language": ANY_LANGUAGE, **overrides})
        return DetectConfig.make(config, **overrides)

    def kinds(self, config: DetectConfig) -> tuple[str, ...]:
        return tuple(config.kinds)

    def counts(self, model: torch.nn.Module, tokenizer: Any, documents: Sequence[str], config: DetectConfig,
               lang: str, *, progress: bool = True, model_id: str | None = None) -> PlndCounts:
        """One language's document counts: its pass (:func:`run_plnd`, as ``mwork detect`` runs it,
        nothing written)."""
        setup = plnd_setup(model, tokenizer, DetectConfig.make(config, language=lang), None, model_id)
        return PlndCounts.of(run_plnd(model, tokenizer, documents, setup, progress=progress))

    def scores(self, model: torch.nn.Module, tokenizer: Any, corpora: Mapping[str, Sequence[str]],
               config: DetectConfig, *, progress: bool = True) -> LanguageScores:
        check_languages(list(corpora), "PLND's language-specific rule")
        counts = {lang: self.counts(model, tokenizer, docs, config, lang, progress=progress)
                  for lang, docs in corpora.items()}
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
        keep = [NeuronSet({k: kept(scores.extra[lang][f"doc_count.{k}"], scores.meta["n_docs"][lang][k],
                                   config.min_doc_fraction) for k in kinds}, {"fingerprint": scores.fingerprint})
                for lang in scores.langs]
        out = {}
        for lang, specific in zip(scores.langs, minus_shared(keep)):
            ns = scores.top(lang, 0)
            for k in kinds:
                ns.masks[k] = specific.masks[k]
            ns.meta.update(rule=f"PLND (the paper's rule): important in at least a fraction {config.min_doc_fraction} "
                                "of the language's documents, minus the neurons kept for every language",
                           size=ns.count(), beyond_rule=0)
            out[lang] = ns
        return out

