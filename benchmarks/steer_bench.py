"""What steering costs: steered ``generate`` against plain ``generate``, as a ratio in one run.

The same left-padded batch of prompts is generated greedily (``max_new_tokens``, KV cache) plain
and under ``mwork.steer`` in each mode and position setting, interleaved ``--repeats`` times; each
time is the median over repeats and each ratio the median of the per-repeat ratios (robust on a
shared machine). The target is a ratio within about 1.05::

    PYTHONPATH=src python benchmarks/steer_bench.py --model gemma-3-270m [--neurons SET] [--out FILE]

Without ``--neurons`` a seeded random set of the size of a language-specific set (0.5 % of the FFN
neurons of every layer) with a random statistic is steered: the cost depends on the count, not
on which neurons they are.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import mwork
from mwork.lens.prompts import builtin_prompts
from mwork.neurons.neuronset import NeuronSet


def random_steer_set(model, fraction: float, seed: int = 0) -> NeuronSet:
    ns = NeuronSet.empty_for(model)
    gen = torch.Generator().manual_seed(seed)
    values = {}
    for k, m in ns.masks.items():
        if k == "ffn":
            m[:] = torch.rand(m.shape, generator=gen) < fraction
        values[k] = torch.where(m, torch.randn(m.shape, generator=gen), torch.full(m.shape, float("nan")))
    return ns.with_statistics({"mean": values}, {"language": "random (benchmark)"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--neurons", help="a NeuronSet with a 'mean' statistic (default: a random one)")
    ap.add_argument("--kinds", default=None, help="steer only these kinds of the set (e.g. ffn)")
    ap.add_argument("--fraction", type=float, default=0.005, help="FFN share of the random set")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="append the result as a JSON line to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = mwork.load_model(args.model, device=args.device)
    ns = NeuronSet.load(args.neurons, model) if args.neurons else random_steer_set(model, args.fraction)
    tok.padding_side = "left"
    texts = [p.text for p in builtin_prompts(["en"])][: args.prompts]
    enc = {k: v.to(args.device) for k, v in tok(texts, return_tensors="pt", padding=True).items()}
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def run(ctx=None) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            if ctx is None:
                model.generate(**enc, max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens,
                               do_sample=False, pad_token_id=pad)
            else:
                with ctx:
                    model.generate(**enc, max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens,
                                   do_sample=False, pad_token_id=pad)
        return time.perf_counter() - start

    variants = {"set/all": dict(mode="set", strength=1.0), "add/all": dict(mode="add", strength=2.0),
                "scale/all": dict(mode="scale", strength=2.0),
                "set/generated": dict(mode="set", strength=1.0, positions="generated")}
    run()  # warm up
    times: dict[str, list[float]] = {"plain": [], **{k: [] for k in variants}}
    for _ in range(args.repeats):
        times["plain"].append(run())
        for name, kw in variants.items():
            times[name].append(run(mwork.steer(model, ns, kinds=args.kinds, **kw)))
    steered = ns.restrict(None, args.kinds.split(",")) if args.kinds else ns
    result = {"model": args.model, "neurons": steered.count(), "kinds": args.kinds, "prompts": len(texts), "max_new_tokens": args.max_new_tokens,
              "repeats": args.repeats, "threads": torch.get_num_threads(),
              "plain_s": statistics.median(times["plain"])}
    for name in variants:
        result[f"{name}_s"] = statistics.median(times[name])
        result[f"{name}_ratio"] = statistics.median(t / p for t, p in zip(times[name], times["plain"]))
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
