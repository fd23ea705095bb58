"""Detection (PLND over a corpus): documents of one language -> a NeuronSet.

For each document, every neuron gets its importance (``mwork.neurons.importance``); a
per-document rule marks the important ones; a neuron is kept if it is important in every
document (the paper) or in at least a fraction q of them (``mwork.neurons.rules``). Per-neuron
document counts are kept in ``extra["doc_count.<kind>"]`` so a researcher can re-threshold
without rerunning.

The parts, one job each: ``detect_config`` (the settings), ``rules`` (per document and across
documents), ``windows`` (documents as token windows: a long document is scored in windows and
its importance is the norm over all its tokens, sqrt(sum of the squared window importance)),
``scoring`` (a block of documents -> per-document importance, batched, with retries),
``runner`` (blocks, data-parallel sharding, progress) and ``detect_checkpoint`` (resume after a
kill, bit-identical). This module puts them together and writes the metadata.

Settings and metadata come from one dictionary: ``fingerprint(config)`` plus what the model
and tokenizer decide (model id and shape fingerprint, dtype, the scores, special tokens). A
checkpoint is resumed only with the same dictionary (``min_doc_fraction`` aside: the counts do
not depend on it); the NeuronSet records it, with its digest as ``settings_sha256``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from mwork import distributed
from mwork.files import check_output_path
from mwork.models.loading import model_name
from mwork.config import digest, fingerprint
from mwork.models.adapters import get_adapter
from mwork.neurons.detect_checkpoint import Progress, checkpoint_path_for, rank_checkpoint_path
from mwork.neurons.detect_config import (
    AGGREGATION_ONLY, DEFAULT_BATCH_SIZE, DEFAULT_BUFFER_DOCS, DEFAULT_CHECKPOINT_EVERY, DEFAULT_MAX_LENGTH,
    DetectConfig,
)
from mwork.neurons.neuronset import NeuronSet, set_path
from mwork.neurons.rules import (
    DEFAULT_TOP_FRACTION, REFERENCE_TOP_K, DocumentRule, document_rule, kept_masks, min_doc_count,
)
from mwork.neurons.runner import DetectionRun, log
from mwork.neurons.scoring import BlockScorer, Scorer
from mwork.neurons.windows import TRUNCATE_RULE, WINDOW_RULE, Windowing
from mwork.texts import TextHasher

__all__ = [
    "DEFAULT_BATCH_SIZE", "DEFAULT_BUFFER_DOCS", "DEFAULT_CHECKPOINT_EVERY", "DEFAULT_MAX_LENGTH",
    "DEFAULT_TOP_FRACTION", "REFERENCE_TOP_K", "TRUNCATE_RULE", "WINDOW_RULE", "DetectConfig", "DocumentRule",
    "Scorer", "checkpoint_path_for", "detect", "detection_settings", "document_rule", "rank_checkpoint_path",
]

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
class _Setup:
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


def _setup(model: torch.nn.Module, tokenizer: Any, config: DetectConfig, scorer: Scorer | None,
           model_id: str | None) -> _Setup:
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
    return _Setup(config, rule, shapes, windowing, scorer, settings)


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


def detection_settings(model: torch.nn.Module, tokenizer: Any, config: DetectConfig | None = None, *,
                       scorer: Scorer | None = None, model_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    """The settings ``detect`` would record (and key its checkpoint by) for these arguments;
    raises the same errors, before any document is read."""
    return _setup(model, tokenizer, DetectConfig.make(config, **overrides), scorer, model_id).settings


def detect(
    model: torch.nn.Module,
    tokenizer: Any,
    documents: Iterable[str],
    config: DetectConfig | None = None,
    *,
    out: str | Path | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    scorer: Scorer | None = None,
    model_id: str | None = None,
    corpus_info: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> NeuronSet:
    """Detect the neurons of ``model`` important for the ``documents`` of a language.

    Settings: a ``DetectConfig`` and/or its fields as keywords (``language="fr"``,
    ``top_k=...``; keywords replace the config's). Per document (at most one of):
    ``top_fraction`` (default 0.2 per layer and kind), ``top_k`` (per layer and kind),
    ``epsilon`` (absolute, the paper); only positive scores are ever selected. Across documents:
    important in at least ``ceil(min_doc_fraction * n)`` of the n documents scored for that
    kind (1.0: all of them, the paper). Empty documents, documents whose scoring raised, and per
    kind those in which every neuron of the kind scores zero (e.g. one token, for Q/K) are
    listed in ``meta`` and do not count in n.

    ``out``: save the result there (and checkpoint to ``<out>.checkpoint.safetensors`` every
    ``checkpoint_every`` documents, removed at the end); ``checkpoint`` overrides that path.
    With ``resume``, an existing checkpoint with the same settings is continued, one with
    other settings is refused. ``scorer(model, batch, kinds)`` replaces the importance function.
    ``model_id`` and ``corpus_info`` are recorded (defaults: the model's name, the corpus's
    ``describe()``).
    """
    config = DetectConfig.make(config, **overrides)
    if out is not None:  # a path that cannot hold the result is refused before any document is scored
        check_output_path(out, "NeuronSet")
        if set_path(out).is_dir():
            raise ValueError(f"cannot write the NeuronSet to {set_path(out)}: it is a folder; choose another --out")
    setup = _setup(model, tokenizer, config, scorer, model_id)
    rank, world = distributed.rank(), distributed.world_size()
    if checkpoint is None and out is not None:
        checkpoint = checkpoint_path_for(out)
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
    result = _result(setup, state, corpus)
    if out is not None:
        if rank == 0:
            result.save(out)
        distributed.barrier()  # the result exists before any rank drops its checkpoint
        if ckpt is not None and ckpt.exists():
            ckpt.unlink()
    return result


def _result(setup: _Setup, state: Progress, corpus: Mapping[str, Any]) -> NeuronSet:
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
