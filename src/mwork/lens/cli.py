"""``mwork lens``: layer-wise decoding by input language (the paper's Figure 1); a thin shim over
:func:`mwork.lens.pipeline.run_lens` (options from :class:`mwork.lens.config.LensConfig`)."""

from __future__ import annotations

import argparse
import time

from mwork.config import add_arguments, from_args
from mwork.lens.config import LensConfig
from mwork.models.loading import add_device_map_argument, add_model_arguments


def _lens(args: argparse.Namespace) -> int:
    # imported here so that `mwork --help` does not load matplotlib
    from mwork.lens.pipeline import lens_prompts, make_identifier, run_lens
    from mwork.models.loading import load_model, parse_device_map

    config = from_args(LensConfig, args)
    # bad prompts or languages are reported before the model is loaded
    prompts = lens_prompts(config)
    identifier = make_identifier(config)
    start = time.time()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device,
                                  device_map=parse_device_map(args.device_map))
    load_s = time.time() - start
    run = run_lens(model, tokenizer, prompts, config, args.out, model_name=args.model, identifier=identifier,
                   load_seconds=load_s)
    print(run.english_table())
    if run.regions is not None:
        print(run.regions.describe().splitlines()[-1])
    print("wrote " + ", ".join(str(path) for path in run.files.values()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lens", help="decode every layer to tokens and plot their language per layer (logit lens)",
        description="Layer-wise decoding: for prompts in each language, the share of English / non-English "
        "tokens among each layer's top-k decoded tokens. Writes lens.csv, lens.json, lens.png and "
        "lens_topk.safetensors to --out. `mwork lens train` trains a tuned lens for --lens tuned.",
    )
    add_model_arguments(p)
    add_arguments(p, LensConfig)
    add_device_map_argument(p)
    p.set_defaults(func=_lens)
