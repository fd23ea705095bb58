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
kill, bit-identical). The PLND method (``mwork.neurons.methods.plnd``) puts them together into
one language's pass (``run_plnd``: the settings, the run, the metadata); this module is the
pipeline around it: the output file, its checkpoint, the data-parallel save.

Settings and metadata come from one dictionary: ``fingerprint(config)`` plus what the model
and tokenizer decide (model id and shape fingerprint, dtype, the scores, special tokens). A
checkpoint is resumed only with the same dictionary (``min_doc_fraction`` aside: the counts do
not depend on it); the NeuronSet records it, with its digest as ``settings_sha256``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch

from mwork import distributed
from mwork.files import check_output_path
from mwork.neurons.detect_checkpoint import checkpoint_path_for, rank_checkpoint_path
from mwork.neurons.detect_config import (
    DEFAULT_BATCH_SIZE, DEFAULT_BUFFER_DOCS, DEFAULT_CHECKPOINT_EVERY, DEFAULT_MAX_LENGTH, DetectConfig, DetectOptions,
)
from mwork.neurons.methods.plnd import UNSCORABLE_RULE, default_scorer, plnd_setup as _setup, run_plnd
from mwork.neurons.neuronset import NeuronSet, set_path
from mwork.neurons.rules import DEFAULT_TOP_FRACTION, REFERENCE_TOP_K, DocumentRule, document_rule
from mwork.neurons.scoring import Scorer
from mwork.neurons.windows import TRUNCATE_RULE, WINDOW_RULE

__all__ = [
    "DEFAULT_BATCH_SIZE", "DEFAULT_BUFFER_DOCS", "DEFAULT_CHECKPOINT_EVERY", "DEFAULT_MAX_LENGTH",
    "DEFAULT_TOP_FRACTION", "REFERENCE_TOP_K", "TRUNCATE_RULE", "WINDOW_RULE", "DetectConfig", "DetectOptions",
    "DocumentRule", "Scorer", "UNSCORABLE_RULE", "checkpoint_path_for", "default_scorer", "detect",
    "detection_settings", "document_rule", "rank_checkpoint_path", "run_plnd",
]


def detection_settings(model: torch.nn.Module, tokenizer: Any, config: DetectConfig | None = None, *,
                       scorer: Scorer | None = None, model_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    """The settings ``detect`` would record (and key its checkpoint by) for these arguments;
    raises the same errors, before any document is read."""
    return _setup(model, tokenizer, DetectConfig.make(config, **overrides), scorer, model_id).settings


def detect(model: torch.nn.Module, tokenizer: Any, documents: Iterable[str], config: DetectConfig | None = None, *,
           out: str | Path | None = None, options: DetectOptions | None = None, **overrides: Any) -> NeuronSet:
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
    ``checkpoint_every`` documents, removed at the end). How the run goes, ``options``
    (``DetectOptions``; its fields are accepted as keywords too): ``checkpoint`` overrides the
    checkpoint's path; with ``resume``, an existing checkpoint with the same settings is
    continued, one with other settings is refused; ``progress``; ``scorer(model, batch, kinds)``
    replaces the importance function; ``model_id`` and ``corpus_info`` are recorded (defaults:
    the model's name, the corpus's ``describe()``).
    """
    options, overrides = DetectOptions.split(options, overrides)
    if options.units is not None:
        raise ValueError("detect (PLND) scores neurons only: dictionary features go through detect_languages with "
                         "lape, ap or monolinguality")
    config = DetectConfig.make(config, **overrides)
    if out is not None:  # a path that cannot hold the result is refused before any document is scored
        check_output_path(out, "NeuronSet")
        if set_path(out).is_dir():
            raise ValueError(f"cannot write the NeuronSet to {set_path(out)}: it is a folder; choose another --out")
    setup = _setup(model, tokenizer, config, options.scorer, options.model_id)
    checkpoint = options.checkpoint
    if checkpoint is None and out is not None:
        checkpoint = checkpoint_path_for(out)
    result = run_plnd(model, tokenizer, documents, setup, checkpoint=checkpoint, resume=options.resume,
                      progress=options.progress, corpus_info=options.corpus_info)
    if out is not None:
        if distributed.rank() == 0:
            result.save(out)
        distributed.barrier()  # the result exists before any rank drops its checkpoint
        ckpt = rank_checkpoint_path(checkpoint, distributed.rank(), distributed.world_size())
        if ckpt.exists():
            ckpt.unlink()
    return result
