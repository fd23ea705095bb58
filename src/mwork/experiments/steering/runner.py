"""``run_steer(SteerConfig(...))``: the sweep from settings, as ``mwork steer`` runs it -- load the
model, the sets, the prompts and (when needed) the corpus, resolve the layer region, check
everything, then ``run_steer_sweep``."""

from __future__ import annotations

from typing import Any

import torch

from mwork.experiments.steering.config import SteerConfig
from mwork.experiments.steering.prompts import load_prompts
from mwork.experiments.steering.sweep import run_steer_sweep, say
from mwork.intervene import parse_kinds, parse_layers
from mwork.neurons.neuronset import NeuronSet
from mwork.steering import NEEDS_STATISTIC
from mwork.texts import fingerprint_texts, is_empty, read_texts


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


def _region_layers(config: SteerConfig, num_layers: int) -> list[int] | None:
    if config.region == "all":
        return parse_layers(config.layers)
    from mwork.layer_regions import region_layers
    from mwork.lens.regions import resolve_regions

    u, g, _ = resolve_regions(num_layers, config.lens, config.understanding, config.generation)
    layers = region_layers(num_layers, u, g)[config.region]
    if not layers:
        raise ValueError(f"the {config.region} region is empty with U={u}, G={g}")
    return list(layers)


def run_steer(config: SteerConfig, *, model: torch.nn.Module | None = None, tokenizer: Any = None) -> dict[str, Any]:
    """The sweep ``config`` describes (``mwork steer``); writes its files under ``config.out``."""
    from mwork.config import fingerprint
    from mwork.models.loading import load_model

    prompts, notes = load_prompts(config.prompts, config.target, source=config.source, template=config.template,
                                  limit=config.limit)
    kinds = parse_kinds(config.kinds)
    ns = NeuronSet.load(config.neurons)
    off = NeuronSet.load(config.off) if config.off else None
    corpus, corpus_info = _corpus(config, ns) if config.mode in NEEDS_STATISTIC else (None, None)
    if model is None:
        model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
    elif tokenizer is None:
        raise ValueError("pass the model's tokenizer with the model")
    ns.check_compatible(model)
    if off is not None:
        off.check_compatible(model)
    from mwork.models.adapters import get_adapter

    layers = _region_layers(config, get_adapter(model).num_layers)
    for note in notes:
        say(note)
    settings = {k: v for k, v in fingerprint(config).items() if k not in ("target", "mode", "stat", "positions",
                                                                          "max_new_tokens", "batch_size", "layers",
                                                                          "kinds", "strengths", "seeds")}
    return run_steer_sweep(model, tokenizer, ns, prompts, config.out, target=config.target, strengths=config.strengths,
                           mode=config.mode, stat=config.stat, positions=config.positions, seeds=config.seeds,
                           off=off, layers=layers, kinds=kinds, corpus=corpus, corpus_info=corpus_info,
                           stats_max_length=config.stats_max_length, max_new_tokens=config.max_new_tokens,
                           batch_size=config.batch_size, settings=settings, notes=notes, progress=config.progress)
