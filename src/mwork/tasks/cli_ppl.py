"""``mwork ppl``: perplexity on any texts, optionally with neurons switched off.

The command of ``mwork.tasks.ppl_run.PplConfig`` (``add_job_command``). The last line printed is
one JSON object (``ppl``, ``tokens``, ...), so scripts can parse it. Data parallel:
``torchrun --standalone --nproc_per_node N --no-python mwork ppl ARGS`` gives the same numbers
as one process (see ``mwork.tasks.perplexity``); rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mwork.jobs import add_job_command
from mwork.tasks.ppl_run import PplConfig


def _print(result: Any, files: dict[str, Path]) -> None:
    print(json.dumps(result.data, ensure_ascii=False))


def register(sub: argparse._SubParsersAction) -> None:
    add_job_command(
        sub, PplConfig, report=_print, output_kind="file",
        description="Perplexity (token-weighted, windows of --max-length) on a text file (one text per line), "
        "a JSONL file (field 'text'), a SQuAD-format .json (all articles unless --articles) or xquad:LANG "
        "(held-out XQuAD articles 24:48 unless --articles). Prints one JSON object as the last line.")
