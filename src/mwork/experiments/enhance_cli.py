"""``mwork enhance``: tune only a language's neurons; ``enhance apply`` / ``enhance compare``.

A thin shim: each command's options are the fields of its job config
(:class:`~mwork.experiments.enhance.EnhanceConfig`, :class:`~mwork.experiments.enhance.ApplyDeltaConfig`,
:class:`~mwork.experiments.compare.EnhanceCompareConfig`: help and defaults written once, there);
``--METHOD-lr``, one per registered training method, fill the comparison's ``lrs``.

Texts (``--texts``, ``--eval``): a file (.txt one document per line, .jsonl field ``text``,
SQuAD-format .json) or ``xquad:LANG``; for training ``xquad:LANG`` means articles 0-23, for
evaluation 24-47 (``--articles`` / ``--eval-articles`` choose others). A trailing ``[A:B]``
keeps documents A..B-1 (Python slice), e.g. ``french.txt[0:200]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

from mwork.config import from_args
from mwork.jobs import add_job_command

_DESCRIPTION = ("Fine-tune only the parameters of the neurons in --neurons (FFN: rows of W_gate/W_up and the column of "
                "W_down; Q/K/V: their rows) on --texts; everything else stays frozen. Writes DIR/delta.safetensors "
                "and DIR/delta.json, and DIR/checkpoint.safetensors for --resume. Subcommands: apply (merge a delta "
                "and save a full model), compare (the method against random neurons, LoRA and full fine-tuning).")
_COMPARE_DESCRIPTION = ("Train each method from a fresh copy of the model on the same texts with the same settings; "
                        "perplexity on each --eval set, and each --task's score, before and after. Writes "
                        "OUT/compare.csv, compare.json, compare.md.")


def _run(config: type, args: argparse.Namespace, report: Callable[[Any, Any], None], **overrides: Any) -> int:
    """``config(...).run().write(out)``, then ``report(job, result)``."""
    job = from_args(config, args, **overrides)
    job.check()  # bad input is refused before the model loads
    result = job.run()
    result.write(job.out)
    report(job, result)
    return 0


def _train_cmd(args: argparse.Namespace) -> int:
    from mwork.experiments.enhance import EnhanceConfig

    missing = [flag for flag, name in (("--neurons", "neurons"), ("--texts", "texts"), ("--out", "out"))
               if not getattr(args, name, None)]
    if missing:
        raise ValueError(f"mwork enhance needs {', '.join(missing)} (or a subcommand: apply, compare)")
    return _run(EnhanceConfig, args, _report_training)


def _report_training(job: Any, result: Any) -> None:
    m = result.meta
    print(json.dumps({"out": str(job.out), "finished": m["finished"], "steps": m["steps"]["done"],
                      "trainable_parameters": m["trainable_parameters"], "final_loss": m["losses"][-1] if m["losses"] else None,
                      "wall_time_s": m["wall_time_s"]}))


def _report_merged(result: Any, files: dict[str, Path]) -> None:
    config = result.config
    print(json.dumps({"out": str(Path(config.out)), "model": config.model, "delta": config.delta}))


def _compare_cmd(args: argparse.Namespace) -> int:
    from mwork.experiments.compare import EnhanceCompareConfig
    from mwork.experiments.training_methods import method_names

    lrs = {m: getattr(args, _lr_dest(m)) for m in method_names() if getattr(args, _lr_dest(m), None) is not None}
    return _run(EnhanceCompareConfig, args, _report_comparison, lrs=lrs or None)


def _report_comparison(job: Any, result: Any) -> None:
    print(Path(job.out, "compare.md").read_text(), end="")
    print(json.dumps({"out": str(job.out), "rows": len(result.data)}))


def _lr_dest(method: str) -> str:
    return f"lr_of_{method}"


def register(sub: argparse._SubParsersAction) -> None:
    from mwork.experiments.compare import EnhanceCompareConfig
    from mwork.experiments.enhance import ApplyDeltaConfig, EnhanceConfig
    from mwork.experiments.training_methods import method_names

    p = add_job_command(sub, EnhanceConfig, description=_DESCRIPTION)
    p.set_defaults(func=_train_cmd)
    commands = p.add_subparsers(dest="enhance_command", metavar="{apply,compare}")
    add_job_command(commands, ApplyDeltaConfig, report=_report_merged)
    c = add_job_command(commands, EnhanceCompareConfig, description=_COMPARE_DESCRIPTION)
    for m in method_names():  # one per registered method: not a field of the config
        c.add_argument(f"--{m}-lr", dest=_lr_dest(m), type=float, metavar="LR", help=f"learning rate of {m} (default: --lr)")
    c.set_defaults(func=_compare_cmd)
