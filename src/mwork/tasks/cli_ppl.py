"""``mwork ppl``: perplexity on any texts, optionally with neurons switched off.

The last line printed is one JSON object (``ppl``, ``tokens``, ...), so scripts can parse it.
Data parallel: ``torchrun --standalone --nproc_per_node N --no-python mwork ppl ARGS`` gives
the same numbers as one process (see ``mwork.tasks.perplexity``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

from mwork import distributed
from mwork.intervene import deactivate, parse_kinds, parse_layers
from mwork.models.loading import DEFAULT_MODEL, add_device_map_argument, load_model, parse_device_map
from mwork.neurons.neuronset import NeuronSet
from mwork.tasks.perplexity import perplexity
from mwork.texts import EVALUATION_ARTICLES, read_texts


def _texts(spec: str, articles: str | None) -> list[str]:
    return read_texts(spec, articles=articles, default_articles=EVALUATION_ARTICLES)


def _run(args: argparse.Namespace) -> int:
    """Under torchrun the ranks share the windows (identical result); rank 0 prints and writes."""
    with distributed.group():
        return _run_ppl(args)


def _run_ppl(args: argparse.Namespace) -> int:
    if (args.layers or args.kinds) and not (args.neurons or args.random_like):
        raise ValueError("--layers/--kinds restrict a neuron set: give --neurons or --random-like too")
    if args.seed is not None and not args.random_like:
        raise ValueError("--seed applies only with --random-like")
    if args.max_texts is not None and args.max_texts < 1:
        raise ValueError("--max-texts must be at least 1")
    texts = _texts(args.texts, args.articles)
    if args.max_texts is not None:
        texts = texts[:args.max_texts]
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device, delta=args.delta,
                                  device_map=parse_device_map(args.device_map))
    layers, kinds = parse_layers(args.layers), parse_kinds(args.kinds)
    info: dict = {"model": args.model, "texts": args.texts}
    if args.delta:
        info["delta"] = args.delta
    ctx = contextlib.nullcontext()
    path = args.neurons or args.random_like
    if path:
        source = NeuronSet.load(path, model)
        chosen = source.restrict(layers, kinds) if (layers is not None or kinds is not None) else source
        if args.random_like:
            seed = 0 if args.seed is None else args.seed
            chosen = chosen.random_like(seed, exclude=source)
            info.update(random_like=args.random_like, seed=seed)
        else:
            info["neurons"] = args.neurons
        ctx = deactivate(model, chosen, scale=args.scale)
        info.update(deactivated=ctx.count, deactivated_per_kind={k: chosen.count(k) for k in chosen.kinds},
                    fraction=chosen.fraction(), scale=args.scale, layers=layers, kinds=kinds)
    start = time.time()
    with ctx:
        result = perplexity(model, tokenizer, texts, batch_size=args.batch_size, max_length=args.max_length,
                            stride=args.stride)
    result["n_empty"] = len(result["empty_texts"])
    out = {**result, **info, "batch_size": args.batch_size, "seconds": round(time.time() - start, 2)}
    if distributed.world_size() > 1:
        out["processes"] = distributed.world_size()
    if distributed.rank() != 0:
        return 0
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    print(json.dumps(out, ensure_ascii=False))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ppl",
        help="perplexity on texts, optionally with neurons switched off",
        description="Perplexity (token-weighted, windows of --max-length) on a text file (one text per line), "
        "a JSONL file (field 'text'), a SQuAD-format .json (all articles unless --articles) or xquad:LANG "
        "(held-out XQuAD articles 24:48 unless --articles). Prints one JSON object as the last line.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--texts", required=True, help="FILE (.txt, .jsonl, SQuAD .json) or xquad:LANG")
    p.add_argument("--articles", help="XQuAD/SQuAD articles START:STOP, e.g. 24:48")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--neurons", help="NeuronSet to switch off")
    group.add_argument("--random-like", help="switch off random neurons, same count per layer and kind as this "
                       "NeuronSet (never its own neurons where enough others remain)")
    p.add_argument("--seed", type=int, help="seed of --random-like (default 0)")
    p.add_argument("--layers", help="restrict the set to these layers, e.g. 0-5 or 0,3,7-9")
    p.add_argument("--kinds", help="restrict the set to these kinds: ffn,q,k,v (attn = q,k,v)")
    p.add_argument("--scale", type=float, default=0.0, help="multiply the neurons by this instead of zeroing")
    p.add_argument("--delta", help="merge this enhancement delta (a folder written by `mwork enhance`) into the model")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--stride", type=int, help="new tokens per window after the first (default max-length - 1 - prefix)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-texts", type=int, help="use only the first N texts")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16, float64")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    add_device_map_argument(p)
    p.add_argument("--out", help="also write the JSON result to this file")
    p.set_defaults(func=_run)
