"""``mwork demo``: the paper's findings on the default model, offline, in one command."""

from __future__ import annotations

import argparse

from mwork.files import parse_names
from mwork.models.loading import DEFAULT_MODEL

XQUAD_LANGS = ("en", "zh", "es", "de", "ru")


def _run(args: argparse.Namespace) -> int:
    from mwork.demo import DemoSettings, run_demo

    overrides = {"model": args.model, "corpus_dir": args.corpus_dir, "xquad": args.xquad}
    if args.xquad:
        # XQuAD has no French: deactivate the default's languages that it has
        defaults = DemoSettings.quick() if args.quick else DemoSettings()
        overrides["langs"] = XQUAD_LANGS
        overrides["deact_langs"] = tuple(x for x in defaults.deactivation_langs if x in XQUAD_LANGS)
    if args.latin_langs:
        overrides["lens"] = {"latin_langs": parse_names(args.latin_langs, flag="--latin-langs")}
    if args.langs:
        overrides["langs"] = parse_names(args.langs, flag="--langs")  # each names files: checked before any work
        overrides["deact_langs"] = None  # --langs names the deactivation languages too
    # every setting is checked here, before the first stage (a ValueError: one line, exit 2)
    run_demo(args.out, quick=args.quick, **overrides)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run lens, neuron detection, deactivation and enhancement on the default model "
                       "and write one HTML report", description=__doc__)
    p.add_argument("--out", default="mwork-demo", help="output folder (default: mwork-demo); index.html is written there")
    p.add_argument("--quick", action="store_true", help="small sizes: about 5 minutes on two CPU cores")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--langs", help="languages for detection and deactivation, comma-separated (must include en "
                   "and have built-in texts, or files in --corpus-dir)")
    p.add_argument("--latin-langs", help="the lens's wordfreq languages for Latin-script tokens (default: every "
                   "one wordfreq has; en,fr,es,de,it,pt,nl was mwork's old list)")
    p.add_argument("--corpus-dir", help="your own texts: <lang>.txt for detection/training and <lang>.heldout.txt "
                   "for evaluation, one document per line")
    p.add_argument("--xquad", action="store_true", help="use XQuAD (articles 0-23 detect, 24-47 evaluate): a local "
                   "copy under $MWORK_DATA/xquad, else google/xquad from the hub (needs network)")
    p.set_defaults(func=_run)
