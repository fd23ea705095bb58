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
import time
from dataclasses import dataclass
from typing import Any

from mwork import distributed
from mwork.config import option
from mwork.intervene import deactivate, parse_kinds, parse_layers
from mwork.models.loading import DEVICE_MAP_HELP, load_model, parse_device_map
from mwork.tasks.perplexity import perplexity
from mwork.tasks.switch_off import SwitchOffOptions, neurons_to_switch_off
from mwork.texts import EVALUATION_ARTICLES, read_texts



@dataclass(frozen=True, kw_only=True)
class PplConfig(SwitchOffOptions):
    """The settings of one perplexity measurement (the options of ``mwork ppl``)."""

    texts: str = option(help="FILE (.txt, .jsonl, SQuAD .json) or xquad:LANG", required=True)
    articles: str | None = option(None, "XQuAD/SQuAD articles START:STOP, e.g. 24:48")
    max_length: int = option(512, "tokens per window")
    stride: int | None = option(None, "new tokens per window after the first (default max-length - 1 - prefix)")
    batch_size: int = option(8, "windows per batch")
    max_texts: int | None = option(None, "use only the first N texts")
    dtype: str | None = option(None, "float32 (default), bfloat16, float16, float64")
    device: str | None = option(None, "cpu, cuda, ... (default: cuda when available)", record=False)
    device_map: str | None = option(None, DEVICE_MAP_HELP, record=False)
    out: str | None = option(None, "also write the JSON result to this file", record=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_texts is not None and self.max_texts < 1:
            raise ValueError("--max-texts must be at least 1")
        parse_device_map(self.device_map)


def run_ppl(config: PplConfig, *, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Perplexity as ``mwork ppl`` prints it: the ``perplexity`` result with ``n_empty``, what was
    switched off, ``model``, ``texts``, ``batch_size`` and ``seconds`` (``processes`` under torchrun).

    ``model``/``tokenizer``: an already loaded model to use instead of loading ``config.model``."""
    if config.out and distributed.rank() == 0:
        from mwork.files import check_output_file

        check_output_file(config.out, ("json", "text"), what="result",
                          inputs=[config.texts, config.neurons, config.random_like])
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
    chosen, chosen_info = neurons_to_switch_off(model, config.neurons, config.random_like, config.seed, layers, kinds)
    if chosen is not None:
        info.update({k: chosen_info[k] for k in ("random_like", "seed", "neurons") if k in chosen_info})
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
        from mwork.files import write_json

        write_json(config.out, out, indent=2)  # atomic; a full disk is one line naming the file
    return out
