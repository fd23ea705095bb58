"""What each method costs: seconds per thousand tokens, against a plain forward pass.

The first ``cost_docs`` documents of every language are run through each method alone (the
statistics methods: their own streaming pass and scores; PLND: ``detect`` per language and its
scores) and through a plain forward pass of the decoder body over the same windows and batches
(``collect_statistics`` with nothing to collect). Each is timed ``cost_repeats`` times; the
fastest run is kept (the others were slowed by something else). Tokens: the documents' text
tokens, the same number for every method. The result is cached in ``cost.json`` (keyed by the
model, the documents and the settings), so a resumed experiment reports the same numbers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch

from mwork.config import digest, fingerprint
from mwork.files import read_json, write_json
from mwork.fingerprints import texts_digest
from mwork.neurons.methods import get_detection_method
from mwork.neurons.methods.stats import PassOptions, StatsRequest, collect_statistics

if TYPE_CHECKING:
    from mwork.experiments.methods.config import MethodsConfig


def _fastest(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_costs(model: torch.nn.Module, tokenizer: Any, config: MethodsConfig, texts: Mapping[str, Sequence[str]],
                  out: Path, model_key: str, methods: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The rows of ``cost.csv`` (module docstring): ``methods`` (default: the config's) on neurons;
    a dictionary's features are not timed here."""
    methods = tuple(config.methods if methods is None else methods)
    docs = {lang: list(d[:config.cost_docs]) for lang, d in texts.items()}
    key = digest({"model": model_key, "docs": {lang: texts_digest(d) for lang, d in docs.items()},
                  "methods": {m: fingerprint(config.method_config(m)) for m in methods},
                  "repeats": config.cost_repeats, "max_length": config.max_length, "truncate": config.truncate,
                  "batch_size": config.batch_size})
    path = out / "cost.json"
    if path.exists():
        cached = read_json(path, "cost record", "delete it to measure again")
        if isinstance(cached, dict) and cached.get("key") == key:
            return cached["rows"]

    def stats(request: StatsRequest) -> Any:
        return collect_statistics(model, tokenizer, docs, request,
                                  PassOptions("windows", config.max_length, config.truncate, config.batch_size),
                                  progress=False)

    tokens = sum(int(t.sum()) for t in stats(StatsRequest()).tokens.values())
    forward = _fastest(lambda: stats(StatsRequest()), config.cost_repeats)
    rows = [_row("forward", tokens, forward, forward)]
    for name in methods:
        method, cfg = get_detection_method(name), config.method_config(name)
        if method.statistics:
            run = lambda: method.from_stats(stats(method.request(cfg)), cfg)  # noqa: E731
        else:
            run = lambda: method.scores(model, tokenizer, docs, cfg, progress=False)  # noqa: E731
        rows.append(_row(name, tokens, _fastest(run, config.cost_repeats), forward))
    write_json(path, {"key": key, "rows": rows, "rule": __doc__.split("\n\n")[1].replace("\n", " ")}, indent=2)
    return rows


def _row(method: str, tokens: int, seconds: float, forward: float) -> dict[str, Any]:
    return {"method": method, "tokens": tokens, "seconds": seconds, "s_per_1k_tokens": 1000 * seconds / tokens,
            "relative_to_forward": seconds / forward}
