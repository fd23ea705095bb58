"""What the Q/K importance costs on each family's tiny model, relative to its forward pass.

For every tiny alias (``mwork.models.tiny``): the Q/K path each layer takes
(``mwork.neurons.importance.qk_paths``), the time of the plain forward pass (``adapter.body``),
of Q and K importance by the exact path (the closed form where it holds, else the generic one
-- what ``importance`` does by default) and by the generic path (the score function recomputed
for every zeroed channel), each the median of ``--repeats`` runs on one thread, and their
ratios to the forward pass. The tiny models are small (64 wide, 3 layers): absolute times are
mostly Python overhead, the ratios say how the paths compare across structures.

    python benchmarks/qk_paths_bench.py --seq-len 128 --docs 2 --repeats 3 \\
        --out benchmarks/results/qk_paths_tiny.md
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

import torch

import mwork
from mwork.models.adapters import get_adapter
from mwork.models.tiny import TINY_ALIASES, tiny_model_types
from mwork.neurons.importance import importance, qk_paths


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(alias: str, seq_len: int, docs: int, repeats: int) -> dict:
    model, _ = mwork.load_model(alias, dtype=torch.float32, device="cpu")
    ad = get_adapter(model)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, int(ad.lm_head.weight.shape[0]), (docs, seq_len), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    paths = qk_paths(model, batch)
    ones = torch.ones_like(ids)

    def forward() -> None:
        with torch.inference_mode():
            ad.body(input_ids=ids, attention_mask=ones, use_cache=False, **ad.forward_kwargs(ones))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the generic fallback warns; the table says it
        importance(model, batch, kinds=("q", "k"))  # warm-up (native kernel, caches)
        fwd = _median_time(forward, repeats)
        exact = _median_time(lambda: importance(model, batch, kinds=("q", "k")), repeats)
        generic = _median_time(lambda: importance(model, batch, kinds=("q", "k"), method="generic"), repeats)
    kinds = sorted(set(p.split(" (")[0] for p in paths.values()))
    reasons = sorted(set(p[len("generic ("):-1].split(": ", 1)[-1] for p in paths.values() if p.startswith("generic (")))
    return {"alias": alias, "model_type": tiny_model_types()[alias], "path": "/".join(kinds),
            "reason": "; ".join(reasons), "forward_s": fwd, "exact_s": exact, "generic_s": generic}


def table(rows: list[dict], seq_len: int, docs: int, repeats: int) -> str:
    lines = [
        f"Q/K importance cost on the tiny models ({docs} documents x {seq_len} tokens, float32, one thread, "
        f"median of {repeats}; `python benchmarks/qk_paths_bench.py`).",
        "",
        "`path`: what `importance` (method exact) takes in every layer; `exact` columns: that default run, "
        "`generic` columns: `method=\"generic\"` (the score function recomputed per zeroed channel).",
        "",
        "| tiny model | model type | path | forward ms | exact Q/K ms | exact / fwd | generic Q/K ms | generic / fwd "
        "| generic / exact |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['alias']} | {r['model_type']} | {r['path']} | {1e3 * r['forward_s']:.1f} | {1e3 * r['exact_s']:.1f} "
            f"| {r['exact_s'] / r['forward_s']:.0f} | {1e3 * r['generic_s']:.1f} | {r['generic_s'] / r['forward_s']:.0f} "
            f"| {r['generic_s'] / r['exact_s']:.1f} |"
        )
    notes = [f"- {r['alias']}: generic because {r['reason']}" for r in rows if r["reason"]]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--docs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=list(TINY_ALIASES))
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here (also printed)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for alias in args.models:
        rows.append(measure(alias, args.seq_len, args.docs, args.repeats))
        r = rows[-1]
        print(f"{alias}: {r['path']} fwd {1e3 * r['forward_s']:.1f} ms, exact {1e3 * r['exact_s']:.1f} ms, "
              f"generic {1e3 * r['generic_s']:.1f} ms", flush=True)
    text = table(rows, args.seq_len, args.docs, args.repeats)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
