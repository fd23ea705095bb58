"""``run_steer(SteerConfig(...))``: the sweep from settings, as ``mwork steer`` (``SteerConfig.run``)
runs it -- load the model, the sets, the prompts and (when needed) the corpus, resolve the layer
region, check everything, then ``run_steer_sweep``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from mwork.experiments.steering.prompts import load_prompts
from mwork.experiments.steering.sweep import SteerSets, _region_layers, run_steer_sweep, say
from mwork.intervene import parse_kinds
from mwork.neurons.neuronset import NeuronSet
from mwork.steering import NEEDS_STATISTIC
from mwork.texts import fingerprint_texts, is_empty, read_texts

if TYPE_CHECKING:
    from mwork.experiments.steering.config import SteerConfig


def _corpus(config: SteerConfig, ns: NeuronSet) -> tuple[list[str] | None, Any]:
    """The target-language texts for the statistics: ``config.corpus``, else the corpus the set's
    statistics were measured on when it can be read again and its digest matches (else None)."""
    if config.corpus is not None:
        texts = read_texts(config.corpus)
        if config.stats_docs is not None:
            texts = texts[:config.stats_docs]
        if all(is_empty(t) for t in texts):
            raise ValueError(f"--corpus {config.corpus} has no non-empty document to measure the statistics on")
        return texts, {"spec": config.corpus, "max_docs": config.stats_docs}
    info = ns.meta.get("statistics") or {}
    corpus = info.get("corpus")
    if isinstance(corpus, dict) and isinstance(corpus.get("spec"), str):
        try:
            texts = read_texts(corpus["spec"])
        except (FileNotFoundError, ValueError, ImportError, OSError):
            return None, None
        if corpus.get("max_docs"):
            texts = texts[:int(corpus["max_docs"])]
        if fingerprint_texts(texts) == info.get("corpus_sha256"):
            say(f"the set's statistics were measured on {corpus['spec']}: the random baselines are measured there too")
            return texts, corpus
    return None, None


def run_steer(config: SteerConfig, *, model: torch.nn.Module | None = None, tokenizer: Any = None) -> dict[str, Any]:
    """The sweep ``config`` describes (``mwork steer``); writes its files under ``config.out``."""
    prompts, notes = load_prompts(config.prompts, config.target, source=config.source, template=config.template,
                                  limit=config.limit)
    parse_kinds(config.kinds)  # a bad --kinds fails before anything is loaded
    ns = NeuronSet.load(config.neurons)
    off = NeuronSet.load(config.off) if config.off else None
    corpus, corpus_info = _corpus(config, ns) if config.mode in NEEDS_STATISTIC else (None, None)
    if model is None:
        model, tokenizer = config.load()
    elif tokenizer is None:
        raise ValueError("pass the model's tokenizer with the model")
    ns.check_compatible(model)
    if off is not None:
        off.check_compatible(model)
    from mwork.models.adapters import get_adapter

    _region_layers(config, get_adapter(model).num_layers)  # a region that cannot be resolved fails here, first
    for note in notes:
        say(note)
    return run_steer_sweep(model, tokenizer, SteerSets(ns, off, corpus, corpus_info), prompts, config, notes=notes)
