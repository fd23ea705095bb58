"""``mwork convert``: NeuronSets to and from LAPE neuron files and the PLND reference code's
neuron dictionaries; a thin shim over ``mwork.neurons.convert``."""

from __future__ import annotations

import argparse

from mwork.files import parse_names
from mwork.models.loading import DEFAULT_MODEL


def _langs(text: str) -> list[str]:
    """The codes of --langs, each checked (it names a file LANG.safetensors), before any work."""
    return list(parse_names(text, flag="--langs"))


def _run(args: argparse.Namespace) -> int:
    from mwork.neurons.convert import convert_files

    direction, fmt = ("to", args.to) if args.to else ("from", args.from_)
    model = None
    if direction == "from":
        if args.out or args.ffn_only:
            raise ValueError("--out and --ffn-only are for exporting (--to); importing (--from) writes LANG.safetensors "
                             "to --out-dir DIR")
        if not args.langs or not args.out_dir:
            raise ValueError("--from needs --langs LANG[,LANG...] (the file's languages, in order) and --out-dir DIR")
        _langs(args.langs)  # a bad code fails here, before the model is loaded
        from mwork.models.loading import load_model

        model, _ = load_model(args.model, device="cpu")
    elif args.langs or args.out_dir:
        raise ValueError("--langs and --out-dir are for --from; exporting (--to) takes --out FILE")
    paths = convert_files(direction, fmt, args.inputs, out=args.out, out_dir=args.out_dir, model=model,
                          langs=_langs(args.langs or ""), ffn_only=args.ffn_only, model_id=args.model)
    for p in paths:
        print(p)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="NeuronSets to/from LAPE .pth files and the PLND reference code's neuron dictionaries",
        description="Export: mwork convert --to lape --out X.pth SET.safetensors [SET ...] (one language per set, in "
        "order; FFN neurons only). Import: mwork convert --from lape X.pth --model M --langs en,fr --out-dir DIR "
        "(the file's languages in order). The same with 'reference' for the five-line dictionary files of the "
        "PLND paper's code (one language per file). Files are read without unpickling or evaluating anything and "
        "checked against the model's shape.")
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--to", choices=["lape", "reference"], help="export NeuronSets to this format")
    way.add_argument("--from", dest="from_", choices=["lape", "reference"], help="import files of this format")
    p.add_argument("inputs", nargs="+", help="--to: NeuronSet files; --from: the file(s) to import")
    p.add_argument("--out", help="--to: the file to write (its shape and languages go to OUT.json)")
    p.add_argument("--ffn-only", action="store_true",
                   help="--to lape: export the FFN neurons of sets that also hold attention neurons")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="--from: the model the neurons belong to (its shape is checked)")
    p.add_argument("--langs", help="--from: the languages, comma-separated, in the file's order")
    p.add_argument("--out-dir", help="--from: folder for LANG.safetensors")
    p.set_defaults(func=_run, output_kinds={"out": "file"})
