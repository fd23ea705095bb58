"""What ``mwork eval`` does, callable from Python: any lm-evaluation-harness task on an
mwork-loaded model, with neurons switched off (a NeuronSet, or random neurons like one, restricted
to layers and kinds) or an enhancement delta merged, through lm-eval's own ``simple_evaluate``.

    config = EvalConfig(model="gemma-3-270m", tasks=("mwork_xquad_mc_zh",), include_path="tasks/",
                        neurons="sets/zh.safetensors", out="eval/zh-off")
    result = config.run()           # result.data: lm-eval's results dict (run_eval(config) returns it)

The outputs under ``out`` are lm-eval's own files, written by its ``EvaluationTracker``
(``<model>/results_<date>.json`` and, with ``log_samples``, ``<model>/samples_<task>_<date>.jsonl``),
plus ``mwork_eval.json``: the settings, what was switched off and where lm-eval's files are.
Steering is not offered yet (no ``mwork.steer`` module exists); a delta is.
"""

from __future__ import annotations

import glob
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mwork.config import fingerprint, option
from mwork.jobs import Job, WrittenResult
from mwork.tasks.switch_off import SwitchOffOptions


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


@dataclass(frozen=True, kw_only=True)
class EvalConfig(SwitchOffOptions, Job):
    """One lm-eval run (the options of ``mwork eval``)."""

    command = "eval"
    summary = "lm-evaluation-harness tasks with neurons switched off (or a delta merged)"

    tasks: tuple[str, ...] = option((), "comma-separated lm-eval task (or group) names", parse=_names)
    include_path: str | None = option(None, "a folder of extra lm-eval task YAMLs (e.g. from --make-local-tasks)")
    out: str | None = option(None, "output folder for lm-eval's results and samples files", record=False)
    limit: float | None = option(None, "documents per task (lm-eval's --limit; below 1: a fraction)")
    num_fewshot: int | None = option(None, "few-shot examples (default: each task's own)")
    batch_size: int = option(8, "requests per batch (lm-eval's --batch_size)")
    max_length: int | None = option(None, "tokens per sequence (default: the model's)")
    bootstrap_iters: int = option(100000, "bootstrap iterations for the standard errors (0: none)")
    log_samples: bool = option(True, "also write lm-eval's per-document samples files")
    # lm-eval's backend (MworkLM) loads the model on one device: no --device-map
    device_map: str | None = option(None, "not supported: lm-eval's backend loads the model on one device",
                                    cli=False, record=False)

    def __post_init__(self) -> None:
        tasks = _names(self.tasks) if isinstance(self.tasks, str) else tuple(self.tasks)
        object.__setattr__(self, "tasks", tasks)
        if not tasks:
            raise ValueError("give the lm-eval tasks to run: --tasks T1,T2")
        if not self.out:
            raise ValueError("give an output folder: --out DIR")
        twice = sorted({t for t in tasks if tasks.count(t) > 1})
        if twice:
            raise ValueError(f"--tasks names {', '.join(twice)} more than once; give each task once")
        if self.include_path is not None and not Path(self.include_path).is_dir():
            raise FileNotFoundError(f"--include-path {self.include_path} is not a folder of lm-eval task YAMLs")
        if self.limit is not None and not (math.isfinite(self.limit) and self.limit > 0):
            raise ValueError(f"--limit must be positive, got {self.limit}")
        if self.limit is not None and self.limit > 1 and self.limit != int(self.limit):
            raise ValueError(f"--limit {self.limit}: give a fraction below 1 or a whole number of documents")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ValueError(f"--num-fewshot must be >= 0, got {self.num_fewshot}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"--max-length must be at least 2, got {self.max_length}")
        if self.bootstrap_iters < 0:
            raise ValueError(f"--bootstrap-iters must be >= 0 (0: no standard errors), got {self.bootstrap_iters}")
        super().__post_init__()

    def check(self) -> None:
        """The model options (and the device this machine must have), then the set's rules,
        before lm-eval's slow set-up."""
        from mwork.models.loading import check_device

        self.check_model_options()
        if self.device_map is not None:
            raise ValueError("mwork eval loads the model through lm-eval's backend, on one device: give --device, "
                             "not a device_map")
        if self.device is not None:
            check_device(self.device)  # the one device rule of every command
        self.check_set()  # a set with no neuron is refused, as by steer and ppl (require_neurons)

    def run(self, model: Any = None, tokenizer: Any = None) -> WrittenResult:
        """lm-eval on ``model`` (default: ``config.model`` loaded by lm-eval's backend, ``MworkLM``,
        with the delta merged); lm-eval's files and ``mwork_eval.json`` are written under ``out``."""
        results, files = _evaluate(self, model, tokenizer)
        out = Path(self.out)
        return WrittenResult(out, {name: out / name for name in files}, results)


def task_manager(include_path: str | Path | None = None, needed: Any = None) -> Any:
    """lm-eval's ``TaskManager`` over its own tasks and ``include_path``. When ``needed(manager)``
    (a test of the names it knows) holds for ``include_path`` alone, that smaller manager is
    returned: indexing lm-eval's thousands of task files takes tens of seconds, and tasks in
    ``include_path`` take precedence over lm-eval's own anyway."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and needed is not None:
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if needed(local):
            return local
    return TaskManager(include_path=str(include_path) if include_path is not None else None)


def check_tasks(manager: Any, tasks: tuple[str, ...]) -> None:
    """A clear error for a task lm-eval does not know, before any model is loaded."""
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ValueError(f"lm-eval knows no task {', '.join(unknown)}; list them with `lm_eval ls tasks` "
                         "(local ones: pass their folder as --include-path)")


def build_lm(config: EvalConfig, *, model: Any = None, tokenizer: Any = None) -> Any:
    """The ``MworkLM`` of ``config`` (on ``model`` when given)."""
    from mwork.tasks.lm_eval_backend import MworkLM

    extra: dict[str, Any] = {"batch_size": config.batch_size}
    if config.max_length is not None:
        extra["max_length"] = config.max_length
    args = dict(neurons=config.neurons, random_like=config.random_like, seed=config.seed, layers=config.layers,
                kinds=config.kinds, scale=config.scale, **extra)
    if model is not None:
        if config.delta:
            raise ValueError("a delta is merged when the model is loaded: pass no model, or one with the delta merged")
        return MworkLM(model, tokenizer=tokenizer, **args)
    return MworkLM(config.model, delta=config.delta, dtype=config.dtype, device=config.device, **args)


def run_eval(config: EvalConfig, *, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Run ``config.tasks`` with lm-eval's ``simple_evaluate`` on the mwork model (neurons off as
    configured) and write lm-eval's results / samples files and ``mwork_eval.json`` under
    ``config.out``; return lm-eval's results dict (without the samples)."""
    return config.run(model, tokenizer).data


def _evaluate(config: EvalConfig, model: Any, tokenizer: Any) -> tuple[dict[str, Any], list[str]]:
    """lm-eval's results and the files written under ``config.out`` (relative names)."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    from mwork.files import make_folder, write_json

    if model is None:
        config.check()
    else:
        config.check_set()
    out = make_folder(config.out)
    manager = task_manager(config.include_path, lambda m: set(config.tasks) <= set(m.all_tasks))
    check_tasks(manager, config.tasks)
    lm = build_lm(config, model=model, tokenizer=tokenizer)
    tracker = EvaluationTracker(output_path=str(out))
    start = time.time()
    results = lm_eval.simple_evaluate(
        model=lm, model_args=f"pretrained={config.model}", tasks=list(config.tasks), task_manager=manager,
        limit=config.limit, num_fewshot=config.num_fewshot, bootstrap_iters=config.bootstrap_iters,
        log_samples=config.log_samples, evaluation_tracker=tracker, batch_size=config.batch_size)
    seconds = time.time() - start
    if results is None:  # not the main process
        return {}, []
    samples = results.pop("samples", None)
    tracker.save_results_aggregated(results=results, samples=samples)
    if config.log_samples and samples:
        for name in results["configs"]:
            tracker.save_results_samples(task_name=name, samples=samples[name])
    files = sorted(os.path.relpath(p, out) for p in glob.glob(str(out / "**" / "*.json*"), recursive=True)
                   if not p.endswith("mwork_eval.json"))
    write_json(out / "mwork_eval.json", {"settings": fingerprint(config), "intervention": lm.intervention,
                                         "seconds": round(seconds, 2), "lm_eval_version": lm_eval.__version__,
                                         "results": results["results"], "files": files},
               indent=2, ensure_ascii=False, default=str)
    return json.loads(json.dumps(results, default=str)), [*files, "mwork_eval.json"]
