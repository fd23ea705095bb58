"""``mwork lens train`` (also ``mwork lens-train``): train a tuned lens; a thin shim over
:func:`mwork.lens.tuned.train_tuned_lens` (options from :class:`TunedLensConfig`)."""

from __future__ import annotations

import argparse
import time

from mwork.config import add_arguments, from_args
from mwork.lens.tuned_config import TunedLensConfig
from mwork.models.loading import add_model_arguments


def _train(args: argparse.Namespace) -> int:
    from mwork.lens.tuned import train_tuned_lens
    from mwork.models.loading import load_model

    config = from_args(TunedLensConfig, args)
    start = time.time()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    load_s = time.time() - start
    result = train_tuned_lens(model, tokenizer, config, args.out, model_name=args.model)
    r = result.report
    print(result.table())
    print(f"trained on {r['train_tokens']} positions ({r['train_windows']} windows), {config.steps} steps, "
          f"vocabulary {r['vocab']['size']} of {r['vocab']['full']}; held-out KL on {r['heldout_positions']} positions")
    print(f"model loaded in {load_s:.1f} s; " + ", ".join(f"{k} {v} s" for k, v in r["timing"].items()))
    print("wrote " + ", ".join(str(p) for p in result.files.values()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lens-train", help="train a tuned lens (also: mwork lens train)",
        description="Train a tuned lens (Belrose et al. 2023): one affine translator per layer, initialised to the "
        "identity, trained on multilingual text so that each layer's decoded distribution matches the final "
        "layer's. Writes tuned_lens.safetensors, tuned_lens.json and tuned_lens_kl.csv (held-out KL per layer, "
        "logit lens vs tuned lens) to --out; use it with --lens tuned --tuned-lens DIR.",
    )
    add_model_arguments(p)
    add_arguments(p, TunedLensConfig)
    p.set_defaults(func=_train)
