"""``mwork latent``: Wendler-style word tasks, P(target) against P(English) per layer and lens;
a thin shim over :func:`mwork.latent.pipeline.run_latent` (options from :class:`LatentConfig`)."""

from __future__ import annotations

import argparse
import time

from mwork.config import add_arguments, from_args
from mwork.latent.config import LatentConfig
from mwork.models.loading import add_model_arguments


def _latent(args: argparse.Namespace) -> int:
    from mwork.latent.pipeline import run_latent
    from mwork.latent.words import load_words
    from mwork.models.loading import load_model

    config = from_args(LatentConfig, args)
    load_words(config.words)  # a bad word list is reported before the model is loaded
    start = time.time()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    load_s = time.time() - start
    run = run_latent(model, tokenizer, config, args.out, model_name=args.model)
    for s in run.survival:
        print(f"{s['task']} {s['source']}>{s['target']}: {s['kept']} of {s['candidates']} items survive the "
              f"first-token filter, {s['used']} used")
    print(run.table())
    print(f"model loaded in {load_s:.1f} s; " + ", ".join(f"{k} {v} s" for k, v in run.timing.items()))
    print("wrote " + ", ".join(str(p) for p in run.files.values()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "latent", help="latent language as Wendler et al. measure it: word tasks, P(target) vs P(English) per layer",
        description="Word tasks (translation, repetition, cloze) whose answer's English and target-language "
        "versions start with different tokens; per layer and lens (logit, tuned, patchscope) the probability "
        "of the target word and of its English translation. Writes latent.csv, latent_summary.csv, latent.json "
        "and latent_<task>.png to --out.",
    )
    add_model_arguments(p)
    add_arguments(p, LatentConfig)
    p.set_defaults(func=_latent)
