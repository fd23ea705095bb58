"""``mwork confusion score FILE.csv --out OUT``: the Language Confusion Benchmark's LPR, WPR and
LCPR of a completions file in the released format (``mwork.confusion.lcb``). Writes ``OUT/lcb.csv``
and ``OUT/lcb.json``; the last line printed is one JSON object (the overall rates per task).

``mwork confusion run --model M --lcb-dir DIR --out OUT``: the benchmark's completions of a model,
per lever, and their scores (``mwork.confusion.run``); the last line printed is one JSON object
(the files and the overall rates per lever and task).

``mwork confusion tasks --lcb-dir DIR --out TASKS``: the benchmark as lm-eval tasks
(``mwork.confusion.lm_eval_tasks``).

The jobs are ``LcbConfig(file=...).run().write(out)``, ``ConfusionRunConfig(...).run()`` and
``LcbTasksConfig(...).run().write(out)``; the commands are made by ``add_job_command`` from the
configs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mwork.confusion.lcb import LcbConfig
from mwork.confusion.lm_eval_tasks import LcbTasksConfig
from mwork.confusion.run import ConfusionRunConfig
from mwork.jobs import add_job_command


def _report_score(result: Any, files: dict[str, Path]) -> int:
    print(json.dumps({"lcb_csv": str(files["csv"]), "lcb_json": str(files["json"]), "overall": result.overall()},
                     ensure_ascii=False))
    return 0


def _report_run(result: Any, files: dict[str, Path]) -> int:
    print(json.dumps({**{k: str(v) for k, v in files.items()}, "overall": result.extra["overall"]},
                     ensure_ascii=False))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("confusion", help="language confusion: the Language Confusion Benchmark (score, run, tasks)",
                       description="Language confusion (Marchisio et al., 2024): does a model answer in the "
                       "language it was asked for? Subcommands: score (a completions file), run (a model's "
                       "completions, with levers, scored), tasks (the benchmark as lm-eval tasks).")
    commands = p.add_subparsers(dest="confusion_command", metavar="{score,run,tasks}", required=True)
    add_job_command(
        commands, LcbConfig, report=_report_score,
        description="Scores a completions CSV in the benchmark's released format (columns completion, source, "
        "language; task and model when present) with the rules of the benchmark's compute_metrics.py: cut at "
        "the first '\\nQ:', punctuation removed, lines of at least 5 tokens (zh: jieba, ja: MeCab with "
        "unidic-lite, others: whitespace) identified with fastText lid.176 (threshold 0.3); LPR, WPR (ar, hi, "
        "ja, ko, ru, zh; English word list) and their harmonic mean LCPR, per (task, source, language) cell "
        "and averaged per source, per language and overall. Writes OUT/lcb.csv and OUT/lcb.json.")
    add_job_command(
        commands, ConfusionRunConfig, report=_report_run,
        description="Asks a model the benchmark's test prompts (the first --limit of each test set of --tasks in "
        "--langs, read from --lcb-dir) in the benchmark's format: base models with the paper's few-shot text "
        "(Q: ... / A: ..., --shots 0, 1 or 5), chat models (--chat) through their tokenizer's chat template; samples "
        "as the paper (nucleus p 0.75, temperature 0.3, at most 100 new tokens, seeded; --greedy), batched with left "
        "padding, once per lever toward each prompt's expected language (--levers none,prompt,neurons,vectors,random), "
        "and scores the completions as 'mwork confusion score' does, with distinct-2 and the unmodified model's "
        "perplexity beside the rates. Writes OUT/completions.csv (the released format, a lever column added), "
        "OUT/lcb.csv (task, source, language, lever, n, lpr, wpr, lcpr, distinct2, ppl ...) and OUT/lcb.json; a "
        "rerun of the same command resumes (OUT/cells.jsonl).")
    add_job_command(
        commands, LcbTasksConfig,
        description="Writes the benchmark's test sets (the first --limit prompts of each, of --tasks in --langs, read "
        "from --lcb-dir) as lm-evaluation-harness tasks mwork_lcb_<task>_<source>_<lang> (tags mwork_lcb, "
        "mwork_lcb_<task>): generate_until on the benchmark's base-model text (--shots), the paper's sampling, "
        "until '\\nQ:', scored by mwork's LCB scorer (lpr; wpr for ar, hi, ja, ko, ru, zh). Writes OUT/<task>.yaml "
        "and OUT/data/<task>.jsonl; give OUT to lm-eval as --include_path (mwork eval --include-path OUT --tasks "
        "mwork_lcb).")
