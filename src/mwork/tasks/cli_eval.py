"""``mwork eval``: any lm-evaluation-harness task with neurons off or a delta merged.

The command of ``mwork.tasks.lm_eval_run.EvalConfig`` (``add_job_command``), plus two set-up
actions instead of a run: ``--make-local-tasks DIR`` (``lm_eval_local.make_local_tasks``: offline lm-eval
tasks from XQuAD / MGSM files) and ``--install-lm-eval-plugin`` (``lm_eval_plugin``: makes
``lm_eval --model mwork`` work where mwork's install did not already). The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable

from mwork.config import given
from mwork.files import parse_names
from mwork.jobs import add_job_command
from mwork.tasks.common import DATA_ENV
from mwork.tasks.lm_eval_run import EvalConfig


def _summary(results: dict) -> dict:
    """Each task's metrics (lm-eval's ``metric,filter`` keys), without the standard errors."""
    return {task: {k: v for k, v in values.items() if "," in k and "_stderr" not in k}
            for task, values in results.get("results", {}).items()}


def _check_actions(args: argparse.Namespace) -> None:
    """Options of a set-up action without it (or with the other action, or with a run's
    options) would be silently ignored: each is an error."""
    local = [flag for flag, given_ in (("--data", args.data is not None), ("--langs", args.langs is not None),
                                       ("--local-limit", args.local_limit is not None),
                                       ("--sentences", args.sentences)) if given_]
    if local and not args.make_local_tasks:
        raise ValueError(f"{', '.join(local)}: only used with --make-local-tasks DIR; without it they would be ignored")
    if args.site_dir is not None and not args.install_lm_eval_plugin:
        raise ValueError("--site-dir applies only with --install-lm-eval-plugin")
    if args.make_local_tasks and args.install_lm_eval_plugin:
        raise ValueError("give --make-local-tasks or --install-lm-eval-plugin, not both (run them one after the other)")
    run_options = sorted(given(args, EvalConfig))
    if run_options and (args.make_local_tasks or args.install_lm_eval_plugin):
        action = "--make-local-tasks" if args.make_local_tasks else "--install-lm-eval-plugin"
        flags = ", ".join("--" + name.replace("_", "-") for name in run_options)
        raise ValueError(f"{action} is a set-up action and exits: {flags} would be ignored; run the evaluation "
                         "separately")


def _print(result: Any, files: dict[str, Path]) -> None:
    print(json.dumps(_summary(result.data), ensure_ascii=False))


def _setup_or(run_job: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """The command: a set-up action when one is given, else the evaluation (``run_job``)."""

    def run(args: argparse.Namespace) -> int:
        _check_actions(args)
        if args.install_lm_eval_plugin:
            from mwork.tasks.lm_eval_plugin import install_lm_eval_plugin

            print(json.dumps({"installed": str(install_lm_eval_plugin(args.site_dir))}))
            return 0
        if args.make_local_tasks:
            from mwork.tasks.lm_eval_local import make_local_tasks

            data = args.data or os.environ.get(DATA_ENV)
            if not data:
                raise ValueError("--make-local-tasks needs the XQuAD / MGSM files: pass --data FOLDER (holding "
                                 f"xquad/xquad.<lang>.json and/or mgsm/mgsm_<lang>.tsv) or set {DATA_ENV} to that "
                                 "folder")
            langs = list(parse_names(args.langs, flag="--langs")) if args.langs else None
            names = make_local_tasks(args.make_local_tasks, data, langs=langs, limit=args.local_limit,
                                     sentences=args.sentences)
            print(json.dumps({"include_path": args.make_local_tasks, "tasks": names}, ensure_ascii=False))
            return 0
        return run_job(args)

    return run


def register(sub: argparse._SubParsersAction) -> None:
    p = add_job_command(
        sub, EvalConfig, report=_print,
        description="Runs lm-eval's simple_evaluate on the mwork-loaded model, with --neurons (or --random-like) "
        "switched off around every request, and writes lm-eval's own results and samples files under --out. "
        "--make-local-tasks DIR writes offline lm-eval tasks from XQuAD / MGSM files (then --include-path DIR); "
        "`lm_eval --model mwork` works once mwork is pip-installed (its wheel ships mwork-lm-eval.pth); "
        "--install-lm-eval-plugin writes that file where mwork was installed some other way.")
    setup = p.add_argument_group("set-up actions (instead of a run)")
    setup.add_argument("--make-local-tasks", metavar="DIR", default=None,
                       help="write local lm-eval tasks (YAML + JSON Lines) from --data into DIR and exit")
    setup.add_argument("--data", default=None, metavar="FOLDER",
                       help=f"folder with xquad/ and mgsm/ for --make-local-tasks (default: ${DATA_ENV})")
    setup.add_argument("--langs", default=None, help="languages for --make-local-tasks (default: every file found)")
    setup.add_argument("--local-limit", type=int, default=None, help="at most this many items per local task")
    setup.add_argument("--sentences", action="store_true",
                       help="--make-local-tasks: also mwork_xquad_mc_sentence_<lang> (the answer's sentence as the passage)")
    setup.add_argument("--install-lm-eval-plugin", action="store_true",
                       help="write mwork-lm-eval.pth (what makes `lm_eval --model mwork` work) into this "
                       "environment's site-packages and exit; not needed after `pip install mwork` or "
                       "`pip install -e .`, which install it")
    setup.add_argument("--site-dir", default=None, help="site-packages folder for --install-lm-eval-plugin")
    p.set_defaults(func=_setup_or(p.get_default("func")))
