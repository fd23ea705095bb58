"""What ``mwork ppl`` does, callable from Python: perplexity on texts, optionally with neurons
switched off (a NeuronSet, or random neurons like it), restricted to layers and kinds, on a
model with an enhancement delta merged.

    config = PplConfig(texts="xquad:zh", neurons="sets/zh.safetensors", kinds="ffn")
    result = run_ppl(config)      # the JSON object the command prints

Under torchrun (inside ``mwork.distributed.group()``) the ranks share the windows and every
rank returns the single process's result; rank 0 alone writes ``out``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from mwork import distributed
from mwork.config import option
from mwork.intervene import deactivate, parse_kinds, parse_layers
from mwork.models.loading import DEFAULT_MODEL, load_model, parse_device_map
from mwork.neurons.neuronset import NeuronSet
from mwork.tasks.perplexity import perplexity
from mwork.texts import EVALUATION_ARTICLES, read_texts

DEVICE_MAP_HELP = ("spread a model larger than one device over several (accelerate): auto, balanced, sequential, "
                   "or a JSON object / .json file mapping module names to devices; not with --device")


@dataclass(frozen=True, kw_only=True)
class PplConfig:
    """The settings of one perplexity measurement (the options of ``mwork ppl``)."""

    model: str = option(DEFAULT_MODEL, "a Hugging Face id, a local model folder or a built-in alias")
    texts: str = option(help="FILE (.txt, .jsonl, SQuAD .json) or xquad:LANG", required=True)
    articles: str | None = option(None, "XQuAD/SQuAD articles START:STOP, e.g. 24:48")
    neurons: str | None = option(None, "NeuronSet to switch off")
    random_like: str | None = option(None, "switch off random neurons, same count per layer and kind as this "
                                     "NeuronSet (never its own neurons where enough others remain)")
    seed: int | None = option(None, "seed of --random-like (default 0)")
    layers: str | None = option(None, "restrict the set to these layers, e.g. 0-5 or 0,3,7-9")
    kinds: str | None = option(None, "restrict the set to these kinds: ffn,q,k,v (attn = q,k,v)")
    scale: float = option(0.0, "multiply the neurons by this instead of zeroing")
    delta: str | None = option(None, "merge this enhancement delta (a folder written by `mwork enhance`) into the model")
    max_length: int = option(512, "tokens per window")
    stride: int | None = option(None, "new tokens per window after the first (default max-length - 1 - prefix)")
    batch_size: int = option(8, "windows per batch")
    max_texts: int | None = option(None, "use only the first N texts")
    dtype: str | None = option(None, "float32 (default), bfloat16, float16, float64")
    device: str | None = option(None, "cpu, cuda, ... (default: cuda when available)", record=False)
    device_map: str | None = option(None, DEVICE_MAP_HELP, record=False)
    out: str | None = option(None, "also write the JSON result to this file", record=False)

    def __post_init__(self) -> None:
        if self.neurons and self.random_like:
            raise ValueError("give --neurons or --random-like, not both")
        if (self.layers or self.kinds) and not (self.neurons or self.random_like):
            raise ValueError("--layers/--kinds restrict a neuron set: give --neurons or --random-like too")
        if self.seed is not None and not self.random_like:
            raise ValueError("--seed applies only with --random-like")
        check_scale(self.scale, self.neurons or self.random_like)
        if self.max_texts is not None and self.max_texts < 1:
            raise ValueError("--max-texts must be at least 1")
        parse_layers(self.layers), parse_kinds(self.kinds)  # a bad spec fails here, before any loading
        parse_device_map(self.device_map)


def check_scale(scale: float, neurons: str | None) -> None:
    """``--scale``: a finite number, and only with a set to scale (else it would change nothing)."""
    if not math.isfinite(scale):
        raise ValueError(f"--scale must be a finite number, got {scale}")
    if scale != 0.0 and not neurons:
        raise ValueError(f"--scale {scale:g} scales a neuron set: give --neurons or --random-like too")


def run_ppl(config: PplConfig, *, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Perplexity as ``mwork ppl`` prints it: the ``perplexity`` result with ``n_empty``, what was
    switched off, ``model``, ``texts``, ``batch_size`` and ``seconds`` (``processes`` under torchrun).

    ``model``/``tokenizer``: an already loaded model to use instead of loading ``config.model``."""
    texts = read_texts(config.texts, articles=config.articles, default_articles=EVALUATION_ARTICLES)
    if config.max_texts is not None:
        texts = texts[:config.max_texts]
    if not texts:
        raise ValueError(f"--texts {config.texts} gives no texts")
    if model is None:
        model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device, delta=config.delta,
                                      device_map=parse_device_map(config.device_map))
    elif config.delta:
        raise ValueError("a delta is merged when the model is loaded: pass no model, or one with the delta merged")
    layers, kinds = parse_layers(config.layers), parse_kinds(config.kinds)
    info: dict[str, Any] = {"model": config.model, "texts": config.texts}
    if config.delta:
        info["delta"] = config.delta
    ctx: Any = contextlib.nullcontext()
    path = config.neurons or config.random_like
    if path:
        source = NeuronSet.load(path, model)
        chosen = source.restrict(layers, kinds) if (layers is not None or kinds is not None) else source
        if config.random_like:
            seed = 0 if config.seed is None else config.seed
            chosen = chosen.random_like(seed, exclude=source)
            info.update(random_like=config.random_like, seed=seed)
        else:
            info["neurons"] = config.neurons
        ctx = deactivate(model, chosen, scale=config.scale)
        info.update(deactivated=ctx.count, deactivated_per_kind={k: chosen.count(k) for k in chosen.kinds},
                    fraction=chosen.fraction(), scale=config.scale, layers=layers, kinds=kinds)
    start = time.time()
    with ctx:
        result = perplexity(model, tokenizer, texts, batch_size=config.batch_size, max_length=config.max_length,
                            stride=config.stride)
    result["n_empty"] = len(result["empty_texts"])
    out = {**result, **info, "batch_size": config.batch_size, "seconds": round(time.time() - start, 2)}
    if distributed.world_size() > 1:
        out["processes"] = distributed.world_size()
    if config.out and distributed.rank() == 0:
        with open(config.out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    return out
