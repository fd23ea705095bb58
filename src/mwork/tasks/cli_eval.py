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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mwork.config import add_arguments, from_args, given, option
from mwork.files import parse_names
from mwork.jobs import add_job_command
from mwork.tasks.common import DATA_ENV
from mwork.tasks.lm_eval_run import EvalConfig


def _summary(results: dict) -> dict:
    """Each task's metrics (lm-eval's ``metric,filter`` keys), without the standard errors."""
    return {task: {k: v for k, v in values.items() if "," in k and "_stderr" not in k}
            for task, values in results.get("results", {}).items()}


@dataclass(frozen=True, kw_only=True)
class SetupOptions:
    """The set-up actions of ``mwork eval`` (instead of a run) and their options. An option of
    an action given without it (or with the other action) would be silently ignored: each is
    an error."""

    make_local_tasks: str | None = option(None, "write local lm-eval tasks (YAML + JSON Lines) from --data into DIR "
                                          "and exit", metavar="DIR")
    data: str | None = option(None, f"folder with xquad/ and mgsm/ for --make-local-tasks (default: ${DATA_ENV})",
                              metavar="FOLDER")
    langs: str | None = option(None, "languages for --make-local-tasks (default: every file found)")
    local_limit: int | None = option(None, "at most this many items per local task")
    sentences: bool = option(False, "--make-local-tasks: also mwork_xquad_mc_sentence_<lang> (the answer's sentence "
                             "as the passage)", switch=True)
    install_lm_eval_plugin: bool = option(False, "write mwork-lm-eval.pth (what makes `lm_eval --model mwork` work) "
                                          "into this environment's site-packages and exit; not needed after `pip "
                                          "install mwork` or `pip install -e .`, which install it", switch=True)
    site_dir: str | None = option(None, "site-packages folder for --install-lm-eval-plugin")

    def __post_init__(self) -> None:
        local = [flag for flag, given_ in (("--data", self.data is not None), ("--langs", self.langs is not None),
                                           ("--local-limit", self.local_limit is not None),
                                           ("--sentences", self.sentences)) if given_]
        if local and not self.make_local_tasks:
            raise ValueError(f"{', '.join(local)}: only used with --make-local-tasks DIR; without it they would be "
                             "ignored")
        if self.site_dir is not None and not self.install_lm_eval_plugin:
            raise ValueError("--site-dir applies only with --install-lm-eval-plugin")
        if self.make_local_tasks and self.install_lm_eval_plugin:
            raise ValueError("give --make-local-tasks or --install-lm-eval-plugin, not both (run them one after the "
                             "other)")

    @property
    def action(self) -> str | None:
        """The set-up action's flag, when one is given."""
        if self.make_local_tasks:
            return "--make-local-tasks"
        return "--install-lm-eval-plugin" if self.install_lm_eval_plugin else None


def _setup_options(args: argparse.Namespace) -> SetupOptions:
    """The set-up options given; a run's options beside a set-up action are an error (ignored)."""
    setup = from_args(SetupOptions, args)
    run_options = sorted(given(args, EvalConfig))
    if run_options and setup.action:
        flags = ", ".join("--" + name.replace("_", "-") for name in run_options)
        raise ValueError(f"{setup.action} is a set-up action and exits: {flags} would be ignored; run the evaluation "
                         "separately")
    return setup


def _print(result: Any, files: dict[str, Path]) -> None:
    print(json.dumps(_summary(result.data), ensure_ascii=False))


def _setup_or(run_job: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """The command: a set-up action when one is given, else the evaluation (``run_job``)."""

    def run(args: argparse.Namespace) -> int:
        setup = _setup_options(args)
        if setup.install_lm_eval_plugin:
            from mwork.tasks.lm_eval_plugin import install_lm_eval_plugin

            print(json.dumps({"installed": str(install_lm_eval_plugin(setup.site_dir))}))
            return 0
        if setup.make_local_tasks:
            from mwork.tasks.lm_eval_local import make_local_tasks

            data = setup.data or os.environ.get(DATA_ENV)
            if not data:
                raise ValueError("--make-local-tasks needs the XQuAD / MGSM files: pass --data FOLDER (holding "
                                 f"xquad/xquad.<lang>.json and/or mgsm/mgsm_<lang>.tsv) or set {DATA_ENV} to that "
                                 "folder")
            langs = list(parse_names(setup.langs, flag="--langs")) if setup.langs else None
            names = make_local_tasks(setup.make_local_tasks, data, langs=langs, limit=setup.local_limit,
                                     sentences=setup.sentences)
            print(json.dumps({"include_path": setup.make_local_tasks, "tasks": names}, ensure_ascii=False))
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
    add_arguments(p.add_argument_group("set-up actions (instead of a run)"), SetupOptions)
    p.set_defaults(func=_setup_or(p.get_default("func")))
