"""``mwork confusion score FILE.csv --out OUT``: the Language Confusion Benchmark's LPR, WPR and
LCPR of a completions file in the released format (``mwork.confusion.lcb``). Writes ``OUT/lcb.csv``
and ``OUT/lcb.json``; the last line printed is one JSON object (the overall rates per task).

The job is ``LcbConfig(file=...).run().write(out)``; the command is written out here rather than
made by ``add_job_command`` only because FILE.csv is a positional argument."""

from __future__ import annotations

import argparse
import json

from mwork.config import add_arguments, from_args
from mwork.confusion.lcb import LcbConfig


def _score(args: argparse.Namespace) -> int:
    result = from_args(LcbConfig, args, file=args.file).run()
    files = result.write(args.out)
    print(json.dumps({"lcb_csv": str(files["csv"]), "lcb_json": str(files["json"]), "overall": result.overall()},
                     ensure_ascii=False))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("confusion", help="language confusion: the Language Confusion Benchmark's scorer",
                       description="Language confusion (Marchisio et al., 2024): does a model answer in the "
                       "language it was asked for? Subcommand: score.")
    commands = p.add_subparsers(dest="confusion_command", metavar="{score}", required=True)
    s = commands.add_parser(
        LcbConfig.command, help=LcbConfig.summary,
        description="Scores a completions CSV in the benchmark's released format (columns completion, source, "
        "language; task and model when present) with the rules of the benchmark's compute_metrics.py: cut at "
        "the first '\\nQ:', punctuation removed, lines of at least 5 tokens (zh: jieba, ja: MeCab with "
        "unidic-lite, others: whitespace) identified with fastText lid.176 (threshold 0.3); LPR, WPR (ar, hi, "
        "ja, ko, ru, zh; English word list) and their harmonic mean LCPR, per (task, source, language) cell "
        "and averaged per source, per language and overall. Writes OUT/lcb.csv and OUT/lcb.json.")
    s.add_argument("file", metavar="FILE.csv", help=LcbConfig.__dataclass_fields__["file"].metadata["help"])
    s.add_argument("--out", required=True, metavar="OUT", help="output folder for lcb.csv and lcb.json")
    add_arguments(s, LcbConfig)
    s.set_defaults(func=_score)
