"""What the latent-language word tasks cost with the logit lens, against a plain forward pass.

    python benchmarks/latent_bench.py [--model gemma-3-270m] [--pairs fr:zh,fr:de] [--limit 16] [--repeats 3]

On the same prompts and batches (the packed policy, ``--batch-size`` prompts per pass) it times,
interleaved ``--repeats`` times in one process:

* (a) ``forward_s``: the plain forward pass ``model(input_ids, attention_mask)`` (logits at every
  position, as a plain call computes them);
* (b) ``forward_last_s``: the same with ``logits_to_keep=1`` (only the last position's logits);
* (c) ``latent_s``: the word-task measure with the logit lens: the pass that reads the lens
  states at the last position (``mwork.latent.measure.last_states``, ``logits_to_keep=1``) and
  the decode of every lens layer with the target / English sums (``layer_probs``).

Ratios (c)/(a) and (c)/(b) are medians of the per-repeat ratios (robust on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--pairs", default="fr:zh,fr:de", help="comma-separated SOURCE:TARGET translation pairs")
    parser.add_argument("--limit", type=int, default=16, help="items per pair")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import mwork
    from mwork.hooks import packed_ids
    from mwork.latent import build_prompts, builtin_words
    from mwork.latent.measure import last_states, layer_probs
    from mwork.lens.lenses import LogitLens
    from mwork.lens.logit_lens import _step_kwargs
    from mwork.models.adapters import get_adapter

    model, tok = mwork.load_model(args.model)
    words = builtin_words()
    prompts = []
    for pair in args.pairs.split(","):
        source, target = pair.split(":")
        prompts += build_prompts(words, tok, "translation", source, target, limit=args.limit)[0]
    texts = [p.prompt for p in prompts]
    encoded = [tok(t).input_ids for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    batches = [[encoded[i] for i in order[s:s + args.batch_size]] for s in range(0, len(order), args.batch_size)]
    pad = tok.pad_token_id or 0
    keep = _step_kwargs(model)[1]
    lens = LogitLens(get_adapter(model))

    @torch.inference_mode()
    def forward(**extra) -> None:
        for b in batches:
            ids = packed_ids(b, pad)
            model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra)

    def latent() -> None:
        states = last_states(model, tok, texts, args.batch_size)
        layer_probs(lens, states, prompts)

    phases = {"forward_s": lambda: forward(), "forward_last_s": lambda: forward(**keep), "latent_s": latent}
    times: dict[str, list[float]] = {k: [] for k in phases}
    latent()  # warm-up
    for _ in range(args.repeats):
        for name, fn in phases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731
    result = {"model": args.model, "prompts": len(texts), "mean_tokens": sum(map(len, encoded)) / len(encoded),
              "batch_size": args.batch_size, "threads": torch.get_num_threads(), "repeats": args.repeats,
              **{k: round(statistics.median(v), 3) for k, v in times.items()},
              "latent_over_forward": round(ratio("latent_s", "forward_s"), 3),
              "latent_over_forward_last": round(ratio("latent_s", "forward_last_s"), 3)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
