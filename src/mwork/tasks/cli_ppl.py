"""``mwork ppl``: perplexity on any texts, optionally with neurons switched off.

A thin shim over ``mwork.tasks.ppl_run.run_ppl`` (options from ``PplConfig``). The last line
printed is one JSON object (``ppl``, ``tokens``, ...), so scripts can parse it. Data parallel:
``torchrun --standalone --nproc_per_node N --no-python mwork ppl ARGS`` gives the same numbers
as one process (see ``mwork.tasks.perplexity``).
"""

from __future__ import annotations

import argparse
import json

from mwork import distributed
from mwork.config import add_arguments, from_args
from mwork.tasks.ppl_run import PplConfig, run_ppl


def _run(args: argparse.Namespace) -> int:
    """Under torchrun the ranks share the windows (identical result); rank 0 prints and writes."""
    with distributed.group():
        out = run_ppl(from_args(PplConfig, args))
        if distributed.rank() == 0:
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
    add_arguments(p, PplConfig)
    p.set_defaults(func=_run, output_kinds={"out": "file"})
