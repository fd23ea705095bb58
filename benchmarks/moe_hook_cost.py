"""What hooking a mixture-of-experts block costs, relative to the plain forward pass.

The FFN sites of a MoE layer are points of the block's computation (``mwork.models.families.
moe_block``): a client there makes the hook layer compute the block a second time from its
input. Timed, on the same batch, each the median of ``--repeats`` interleaved runs (ratios: the
median of the per-repeat ratios to the plain forward pass, robust on a shared machine):

* ``forward``: the plain forward pass without the LM head (``adapter.body``);
* ``route``: a reader at every layer's ``ffn.route`` (router statistics): the computation stops
  after the router;
* ``read_ffn_in``: a reader at every layer's ``ffn.in`` (dense (B, T, E*I) hidden states);
* ``deactivate``: ``mwork.deactivate`` of 1 % of the expert channels of every layer (an edit:
  the block's output is the computation's);
* ``importance_ffn``: ``mwork.importance`` for the FFN kind (one pass, reader at ``ffn.out``).

Models: every tiny MoE alias, and ``--wide`` a wider Mixtral-shaped model (hidden 512, 8 experts
of 1024 channels, top-2, 4 layers) where the experts' matmuls, not Python, dominate.

    python benchmarks/moe_hook_cost.py --seq-len 128 --docs 4 --repeats 5 --wide \\
        --out benchmarks/results/moe_hook_cost.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import mwork
from mwork.hooks import Hooks
from mwork.models.adapters import get_adapter
from mwork.models.tiny import MOE_ALIASES, _common, build_tiny
from mwork.neurons.importance import importance
from mwork.neurons.neuronset import NeuronSet

WIDE = ("MixtralConfig", _common(hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                                 num_key_value_heads=4, head_dim=64, num_local_experts=8, num_experts_per_tok=2,
                                 max_position_embeddings=4096))
PHASES = ("forward", "route", "read_ffn_in", "deactivate", "importance_ffn")


def measure(name: str, model, seq_len: int, docs: int, repeats: int) -> dict:
    ad = get_adapter(model)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, int(ad.lm_head.weight.shape[0]), (docs, seq_len), generator=gen)
    ones = torch.ones_like(ids)
    ns = NeuronSet.empty_for(model)
    ns.masks["ffn"][:, torch.randperm(ad.ffn_size, generator=gen)[:max(1, ad.ffn_size // 100)]] = True

    def forward() -> None:
        with torch.inference_mode():
            ad.body(input_ids=ids, attention_mask=ones, use_cache=False, **ad.forward_kwargs(ones))

    def hooked(site: str):
        def run() -> None:
            hooks = Hooks()
            for layer in range(ad.num_layers):
                hooks.read(ad.site(site, layer), lambda v: None)
            with hooks:
                forward()
        return run

    def deactivated() -> None:
        with mwork.deactivate(model, ns):
            forward()

    runs = {"forward": forward, "route": hooked("ffn.route"), "read_ffn_in": hooked("ffn.in"),
            "deactivate": deactivated,
            "importance_ffn": lambda: importance(model, {"input_ids": ids, "attention_mask": ones}, kinds=("ffn",))}
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    row = {"model": name, "experts": f"{ad.num_experts}x{ad.expert_size}" + (f"+{ad.shared_expert_size}" if ad.shared_expert_size else ""),
           "tokens": docs * seq_len, "forward_s": statistics.median(times["forward"])}
    for k in PHASES[1:]:
        row[f"{k}_x"] = statistics.median(t / f for t, f in zip(times[k], times["forward"]))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--docs", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--wide", action="store_true", help="also the wider Mixtral-shaped model")
    p.add_argument("--models", nargs="*", default=list(MOE_ALIASES))
    p.add_argument("--out", help="write the table (markdown) here too")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for alias in args.models:
        model, _ = mwork.load_model(alias, dtype=torch.float32, device="cpu")
        rows.append(measure(alias, model, args.seq_len, args.docs, args.repeats))
    if args.wide:
        rows.append(measure("wide mixtral (D=512)", build_tiny(*WIDE), args.seq_len, args.docs, args.repeats))
    header = ("| model | experts | tokens | forward (s) | route reader | ffn.in reader | deactivate 1 % | "
              "FFN importance |\n|---|---|---|---|---|---|---|---|")
    lines = [header] + [f"| {r['model']} | {r['experts']} | {r['tokens']} | {r['forward_s']:.4f} | "
                        + " | ".join(f"{r[f'{k}_x']:.2f}x" for k in PHASES[1:]) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(f"`{' '.join(['python', 'benchmarks/moe_hook_cost.py', *__import__('sys').argv[1:]])}`"
                                  f" ({args.threads} thread(s), float32, CPU)\n\n{table}\n")


if __name__ == "__main__":
    main()
