"""``mwork experiment deactivation``: the paper's deactivation grid for one model and task."""

from __future__ import annotations

import argparse

from mwork import distributed
from mwork.experiments.deactivation import load_language_sets, run_deactivation_experiment
from mwork.experiments.evaluators import perplexity_evaluator, task_evaluator
from mwork.models.adapters import get_adapter
from mwork.models.loading import DEFAULT_MODEL, add_device_map_argument, load_model, parse_device_map
from mwork.texts import heldout_texts


def _regions(args: argparse.Namespace, num_layers: int) -> tuple[int, int]:
    if args.understanding is not None and args.generation is not None:
        return args.understanding, args.generation
    if args.lens is None:
        raise ValueError("give --understanding U and --generation G, or --lens DIR (a `mwork lens` result) to estimate them")
    from mwork.lens.regions import estimate_regions

    est = estimate_regions(args.lens)
    if distributed.rank() == 0:
        print(est.describe())
    if not est.found:
        raise ValueError(f"could not estimate the layer regions from {args.lens} ({est.reason}); give --understanding and --generation")
    if est.num_layers != num_layers:
        raise ValueError(f"the lens result has {est.num_layers} layers but the model has {num_layers}")
    return (args.understanding if args.understanding is not None else est.understanding,
            args.generation if args.generation is not None else est.generation)


def _run(args: argparse.Namespace) -> int:
    """Under torchrun the ranks share the grid's cells (identical results); rank 0 writes and prints."""
    with distributed.group():
        return _run_grid(args)


def _run_grid(args: argparse.Namespace) -> int:
    langs = [x for x in args.langs.split(",") if x]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device,
                                  device_map=parse_device_map(args.device_map))
    understanding, generation = _regions(args, get_adapter(model).num_layers)
    sets = load_language_sets(args.neurons, langs, model)
    settings = {"model": args.model, "task": args.task, "neurons": str(args.neurons), "limit": args.limit,
                "max_length": args.max_length, "dtype": args.dtype}
    if args.task == "ppl":
        texts, sources = {}, {}
        for lang in langs:
            texts[lang], sources[lang] = heldout_texts(lang, args.texts_dir, args.limit)
        settings["texts"] = sources
        evaluate = perplexity_evaluator(model, tokenizer, texts, args.batch_size, args.max_length)
    else:
        evaluate = task_evaluator(model, tokenizer, args.task, langs, args.source, args.limit,
                                  batch_size=args.batch_size)
    result = run_deactivation_experiment(model, evaluate, sets, langs, args.out, understanding=understanding,
                                         generation=generation, english=args.english, seeds=seeds,
                                         settings=settings, matrix=args.matrix)
    if distributed.rank() != 0:
        return 0 if result else 1
    print((args.out.rstrip("/") + "/table.md") if isinstance(args.out, str) else args.out)
    print(open(f"{args.out}/table.md", encoding="utf-8").read())
    return 0 if result else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="run a paper experiment (deactivation grid)")
    exp = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    d = exp.add_parser("deactivation", help="switch off language-specific vs random neurons by layer region",
                       description="Rows: layer regions x {language-specific, random}; columns Eng, n-Eng, ΔEng, "
                       "Δn-Eng, Δ = ΔEng - Δn-Eng. Writes table.csv, table.md, headline.csv, results.json, "
                       "deactivation.png; finished cells are kept in cells.jsonl and not recomputed.")
    d.add_argument("--model", default=DEFAULT_MODEL)
    d.add_argument("--neurons", required=True, help="folder with <lang>.safetensors language-specific sets (mwork specific)")
    d.add_argument("--task", default="ppl", help="ppl, mgsm, xquad, xcsqa or xlsum")
    d.add_argument("--langs", required=True, help="comma-separated, must include English, e.g. en,zh,fr")
    d.add_argument("--out", required=True)
    d.add_argument("--english", default="en")
    d.add_argument("--understanding", type=int, help="U: number of first layers (understanding)")
    d.add_argument("--generation", type=int, help="G: number of last layers (generation)")
    d.add_argument("--lens", help="a `mwork lens` output folder to estimate U and G from")
    d.add_argument("--seeds", default="0,1,2", help="random-baseline seeds")
    d.add_argument("--limit", type=int, help="texts / examples per language")
    d.add_argument("--texts-dir", help="ppl: folder with <lang>.txt held-out texts (default: XQuAD 24-47 or built-in)")
    d.add_argument("--source", help="task data: local file/folder or 'hub'")
    d.add_argument("--max-length", type=int, default=256)
    d.add_argument("--batch-size", type=int, default=8)
    d.add_argument("--dtype", default=None)
    d.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    add_device_map_argument(d)
    d.add_argument("--matrix", action="store_true",
                   help="also evaluate every language with every language's neurons off (matrix.csv)")
    d.set_defaults(func=_run)
