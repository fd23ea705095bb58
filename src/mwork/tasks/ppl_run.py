"""What ``mwork ppl`` does, callable from Python: perplexity on texts, optionally with neurons
switched off (a NeuronSet, or random neurons like it), restricted to layers and kinds, on a
model with an enhancement delta merged.

    config = PplConfig(texts="xquad:zh", neurons="sets/zh.safetensors", kinds="ffn")
    result = config.run()         # result.data: the JSON object the command prints
    result.write("ppl.json")
    run_ppl(config)               # the same, writing config.out when given

Under torchrun (inside ``mwork.distributed.group()``, the job's ``context``) the ranks share the
windows and every rank returns the single process's result; rank 0 alone writes ``out``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

from mwork import distributed
from mwork.config import option
from mwork.intervene import deactivate, parse_kinds, parse_layers
from mwork.jobs import Job
from mwork.models.loading import parse_device_map
from mwork.tasks.perplexity import perplexity
from mwork.tasks.switch_off import SwitchOffOptions, neurons_to_switch_off
from mwork.texts import EVALUATION_ARTICLES, read_texts


@dataclass
class PplResult:
    """The measurement as ``mwork ppl`` prints it; ``write(out)`` writes it as a JSON file."""

    data: dict[str, Any]

    def write(self, out: str | Path | None = None) -> dict[str, Path]:
        if out is None:
            return {}
        from mwork.files import write_json

        write_json(out, self.data, indent=2)  # atomic; a full disk is one line naming the file
        return {"json": Path(out)}


@dataclass(frozen=True, kw_only=True)
class PplConfig(SwitchOffOptions, Job):
    """The settings of one perplexity measurement (the options of ``mwork ppl``)."""

    command = "ppl"
    summary = "perplexity on texts, optionally with neurons switched off"

    texts: str = option(help="FILE (.txt, .jsonl, SQuAD .json) or xquad:LANG", required=True)
    articles: str | None = option(None, "XQuAD/SQuAD articles START:STOP, e.g. 24:48")
    max_length: int = option(512, "tokens per window")
    stride: int | None = option(None, "new tokens per window after the first (default max-length - 1 - prefix)")
    batch_size: int = option(8, "windows per batch")
    max_texts: int | None = option(None, "use only the first N texts")
    out: str | None = option(None, "also write the JSON result to this file", record=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_texts is not None and self.max_texts < 1:
            raise ValueError("--max-texts must be at least 1")
        parse_device_map(self.device_map)

    def check(self) -> None:
        self.check_model_options()
        if self.out and distributed.rank() == 0:
            from mwork.files import check_output_file

            check_output_file(self.out, ("json", "text"), what="result",
                              inputs=[self.texts, self.neurons, self.random_like])

    def context(self) -> ContextManager[Any]:
        return distributed.group()

    def read_texts(self) -> list[str]:
        texts = read_texts(self.texts, articles=self.articles, default_articles=EVALUATION_ARTICLES)
        if self.max_texts is not None:
            texts = texts[:self.max_texts]
        if not texts:
            raise ValueError(f"--texts {self.texts} gives no texts")
        return texts

    def run(self, model: Any = None, tokenizer: Any = None) -> PplResult:
        """Check, read the texts, load the model (with the delta) unless given, measure: the
        texts are read before the model is loaded, so a bad ``texts`` fails first."""
        self.check()
        texts = self.read_texts()
        if model is None:
            model, tokenizer = self.load()
        else:
            self.check_given_model(model, tokenizer)
        return PplResult(_measure(self, model, tokenizer, texts))


def _measure(config: PplConfig, model: Any, tokenizer: Any, texts: list[str]) -> dict[str, Any]:
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
    return out


def run_ppl(config: PplConfig, *, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Perplexity as ``mwork ppl`` prints it: the ``perplexity`` result with ``n_empty``, what was
    switched off, ``model``, ``texts``, ``batch_size`` and ``seconds`` (``processes`` under torchrun);
    ``config.out`` written when given (by rank 0).

    ``model``/``tokenizer``: an already loaded model to use instead of loading ``config.model``."""
    result = config.run(model, tokenizer)
    if config.out and distributed.rank() == 0:
        result.write(config.out)
    return result.data
