"""The enhancement comparison (paper §5, Table 7): every method, one table.

:class:`EnhanceCompareConfig` (the job of ``mwork enhance compare``; :func:`compare` runs it)
trains each registered method (:mod:`mwork.experiments.training_methods`) from a fresh copy of the model on the same texts with the same settings, and measures perplexity on each
evaluation set -- and the score of each evaluation task -- before and after. It writes
``compare.json``, ``compare.csv`` and ``compare.md`` (one row per method) and each method's
files under ``out/<method>/``.

It is incremental: the "before" numbers and the other methods' rows of an earlier comparison in
``out`` are kept, and only the methods asked for are (re)run -- but only when everything they
were computed from is the same: the model's weights (``mwork.fingerprints.model_digest``), the
NeuronSet's masks, the training and evaluation texts (content digests, not file names), the
settings, the LoRA setting and the tasks' examples. Anything else is refused, never mixed.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from mwork.config import fingerprint, option
from mwork.experiments.checkpoints import CHECKPOINT_FILE, LEGACY_CHECKPOINT_FILE
from mwork.neurons.delta import NeuronDelta
from mwork.files import make_folder, parse_names, read_json, write_bytes, write_json, write_text
from mwork.experiments.training_methods import (BUILTIN_METHODS, ComparisonContext, get_method, lora_for_budget,
                                       method_names, neuron_summary)
from mwork.experiments.training import EnhanceSettings, config_part, prepare_out, train, training_run
from mwork.fingerprints import model_digest, texts_digest
from mwork.jobs import Job, ModelOptions, OutputOptions, RunOptions, WrittenResult
from mwork.models.adapters import get_adapter, model_name
from mwork.models.loading import input_device
from mwork.neurons.neuronset import NeuronSet, as_neuron_set
from mwork.texts import DETECTION_ARTICLES, EVALUATION_ARTICLES, TextSource, is_empty, parse_range, read_texts

SECONDARY_METRICS = ("exact_match", "accuracy_norm")  # reported beside a task's main score when present
COMPARE_FILE = "compare.json"


def _max_new_tokens(text: str) -> dict[str, int]:
    """``--task-max-new-tokens N`` -> ``task_kwargs={"max_new_tokens": N}``."""
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of tokens, got {text!r}") from None
    return {"max_new_tokens": n}


@dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """The comparison's own settings (the training settings are :class:`EnhanceSettings`).
    Fields with ``record=False`` do not decide what an earlier comparison may share: the methods
    run by this call, their learning rates (each row records its own), the evaluation batch size
    (rounding only), and where texts and task examples come from (their contents are hashed)."""

    methods: tuple[str, ...] = option(BUILTIN_METHODS, "training methods to run, comma-separated (built in: "
                                      + ", ".join(BUILTIN_METHODS) + "; or a registered one)", record=False)
    lrs: dict[str, float] | None = option(None, "learning rate per method, e.g. {'lora': 1e-4} (the others: lr)",
                                          cli=False, record=False)
    lora_rank: int | None = option(None, "LoRA rank (default: the rank whose trainable-parameter count matches "
                                   "the neurons')", metavar="R")
    lora_alpha: float | None = option(None, "LoRA alpha (default: 2 x rank)")
    random_seed: int = option(0, "seed of the random-neuron baseline")
    eval_batch_size: int = option(8, "texts (and task examples) per batch when evaluating", record=False)
    eval_max_length: int = option(512, "tokens per evaluation text (longer ones are truncated)")
    eval_articles: str | None = option(None, "XQuAD articles of evaluation specs such as xquad:zh, START:STOP "
                                       "(default: the held-out 24:48)", metavar="START:STOP", record=False)
    eval_max_texts: int | None = option(None, "use the first N texts of each evaluation set", metavar="N",
                                        record=False)
    tasks: dict[str, tuple[str, ...]] | None = option(None, "evaluation tasks and their languages, e.g. "
                                                      "{'xquad': ('zh', 'en')}", cli=False)
    task_source: str | Path | None = option(None, "task data: a file or folder, or 'hub' (default: $MWORK_DATA, "
                                            "else the hub)", parse=str, metavar="PATH", record=False)
    task_limit: int | None = option(None, "the first N examples of each task language (default: all)", metavar="N")
    task_kwargs: dict[str, Any] | None = option(None, "generation length of generative tasks (default: the task's)",
                                                flag="--task-max-new-tokens", parse=_max_new_tokens, metavar="N")

    def __post_init__(self) -> None:
        methods = (self.methods,) if isinstance(self.methods, str) else tuple(self.methods)
        object.__setattr__(self, "methods", methods)
        if not methods:
            raise ValueError(f"give at least one method; choose from {', '.join(method_names())}")
        unknown = [m for m in methods if m not in method_names()]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {', '.join(method_names())}")
        twice = sorted({m for m in methods if methods.count(m) > 1})
        if twice:
            raise ValueError(f"methods {twice} are given twice")
        if self.lrs is not None:
            if not isinstance(self.lrs, Mapping):
                raise ValueError('lrs maps methods to learning rates, e.g. {"lora": 1e-4}')
            bad = [m for m in self.lrs if m not in method_names()]
            if bad:
                raise ValueError(f"lrs names unknown methods {bad}; choose from {', '.join(method_names())}")
            low = [f"{m}={v}" for m, v in self.lrs.items() if not (isinstance(v, (int, float)) and v > 0)]
            if low:
                raise ValueError(f"learning rates must be positive, got {', '.join(low)}")
        at_least = {"eval_batch_size": (self.eval_batch_size, 1), "eval_max_length": (self.eval_max_length, 2),
                    "lora_rank": (self.lora_rank, 1), "eval_max_texts": (self.eval_max_texts, 1),
                    "task_limit": (self.task_limit, 1)}
        for name, (value, least) in at_least.items():
            if value is not None and value < least:
                raise ValueError(f"{name} must be at least {least}, got {value}")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if self.eval_articles is not None:
            parse_range(self.eval_articles, "eval_articles (--eval-articles)")
        if self.tasks is not None:
            if not isinstance(self.tasks, Mapping):
                raise ValueError('tasks must map task names to languages, e.g. {"xquad": ["zh", "en"]}')
            for name, langs in self.tasks.items():
                if isinstance(langs, str) or not langs or not all(isinstance(x, str) for x in langs):
                    raise ValueError(f"tasks[{name!r}] must be a non-empty list of languages, got {langs!r}")
        if not self.tasks:
            given = [n for n in ("task_source", "task_limit", "task_kwargs") if getattr(self, n) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} (--task-source, --task-limit, --task-max-new-tokens) apply "
                                 "only with tasks to score (--task NAME --task-langs zh,en)")
        if self.task_kwargs is not None and not isinstance(self.task_kwargs, Mapping):
            raise ValueError('task_kwargs must be a dict of Task.evaluate arguments, e.g. {"max_new_tokens": 32}')

    def lr_of(self, method: str, settings: EnhanceSettings) -> float:
        return (self.lrs or {}).get(method, settings.lr)


def tasks_for(names: Sequence[str] | None, langs: str | Sequence[str] | None) -> dict[str, tuple[str, ...]] | None:
    """``["xquad", "mgsm"]`` x ``"zh,en"`` -> ``{"xquad": ("zh", "en"), "mgsm": ("zh", "en")}``
    (the ``--task`` / ``--task-langs`` options); None without names."""
    langs = parse_names(langs or (), flag="--task-langs")
    if not names:
        if langs:
            raise ValueError("--task-langs needs --task NAME")
        return None
    if not langs:
        raise ValueError("--task needs --task-langs, e.g. --task-langs zh,en")
    return {name: langs for name in dict.fromkeys(names)}


def named_specs(items: Sequence[str]) -> dict[str, str]:
    """``["zh=xquad:zh", "en=en.txt[0:100]"]`` (the ``--eval`` option) -> ``{"zh": "xquad:zh", ...}``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise ValueError(f"--eval takes NAME=SPEC (e.g. zh=xquad:zh), got {item!r}")
        if name in out:
            raise ValueError(f"the evaluation set {name!r} is given twice")
        out[name] = spec
    return out


def _texts_of(value: Sequence[str] | TextSource | str, articles: str | None, default: range, what: str) -> list[str]:
    if isinstance(value, (str, Path, TextSource)):
        texts = read_texts(value, articles=range(*parse_range(articles, what)) if articles else None,
                           default_articles=default)
        if not texts:
            raise ValueError(f"{what}: {value} gives no documents")
        if all(is_empty(t) for t in texts):
            raise ValueError(f"{what}: {value} has no non-empty document")
        return texts
    if not value or not all(isinstance(t, str) for t in value):
        raise ValueError(f"{what} must be a non-empty list of strings (one document each) or a text spec")
    if all(is_empty(t) for t in value):
        raise ValueError(f"{what}: every document is empty")
    return list(value)


def compare(model_name: str, neurons: NeuronSet | str | Path, texts: Sequence[str] | TextSource | str,
            eval_sets: Mapping[str, Sequence[str] | TextSource | str], out: str | Path, *,
            config: CompareConfig | None = None, settings: EnhanceSettings | None = None,
            **options: Any) -> list[dict[str, Any]]:
    """Train every method of ``config.methods`` from a fresh copy of ``model_name`` on the same
    ``texts`` with the same settings, and measure perplexity on each of ``eval_sets``
    (``{"zh": [...], "en": "xquad:en"}``: lists of texts or text specs) before and after
    (:class:`EnhanceCompareConfig`, run; returns its rows).

    Settings: ``config`` (:class:`CompareConfig`) and ``settings`` (:class:`EnhanceSettings`),
    or keyword ``options``: either's fields (``methods=["neurons"], lrs={"lora": 1e-4},
    max_steps=20, ...``) and how the model loads and the run shows (``dtype``, ``device``,
    ``device_map``, ``progress``). ``texts`` and spec-valued evaluation sets are read by
    :func:`mwork.texts.read_texts` (XQuAD: articles 0-23 for training, ``eval_articles`` or 24-47
    for evaluation).

    ``tasks``: evaluation tasks of :mod:`mwork.tasks` scored before and after too, e.g.
    ``{"xquad": ["zh", "en"]}`` -- examples from ``task_source`` (a file or folder, ``"hub"``,
    or None: ``$MWORK_DATA`` else the hub), the first ``task_limit`` of each language, with
    ``task_kwargs`` passed to ``Task.evaluate`` (batch size default ``eval_batch_size``).
    Rows get ``<task>_<lang>_before / _after / _change`` (the task's main metric, a fraction;
    change = after - before) and the same for a secondary metric the task reports
    (``exact_match``, ``accuracy_norm``); per-example outputs go to ``out/<method>/tasks.json``
    and ``out/before_tasks.json``.

    Writes ``out/compare.json``, ``out/compare.csv`` and ``out/compare.md`` (one row per
    method: trainable parameters, wall time, peak memory, perplexity and task scores before /
    after / change) and each method's delta or record under ``out/<method>/``. Returns all rows.
    Incremental, keyed by content (module docstring).

    The model is loaded once: the "before" numbers are measured on it, and each method trains a
    ``copy.deepcopy`` of it (methods change their model in place: full fine-tuning updates every
    weight, LoRA injects modules), so every method starts from the same pristine weights. The
    cost of loading once is memory: the pristine copy stays in memory beside the copy being
    trained (twice the weights, plus the training state). A model dispatched over several
    devices by accelerate (it has ``hf_device_map``) is not deep-copied, as its dispatch hooks
    may not survive a copy: it is loaded again for every method instead, as before."""
    unknown = set(options) - _OPTIONS
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {sorted(_OPTIONS)}")
    given = {f.name: getattr(part, f.name) for part in (settings, config) if part is not None for f in fields(part)}
    job = EnhanceCompareConfig(model=model_name, neurons=neurons, texts=texts, eval=eval_sets, out=str(out),
                               **{**given, **options})
    return job.run().data


@dataclass(frozen=True, kw_only=True)
class EnhanceCompareConfig(ModelOptions, RunOptions, OutputOptions, CompareConfig, EnhanceSettings, Job):
    """``mwork enhance compare``: every method of ``methods`` trained on ``texts`` from the same
    weights with the same settings (:class:`EnhanceSettings`, :class:`CompareConfig`), and
    evaluated before and after on each evaluation set (``eval``: ``NAME=SPEC`` items, or a
    mapping name -> spec or texts) and each task (``tasks``, or on the command line ``task``
    and ``task_langs``). Writes into ``out`` as it goes (a row per method) and reuses what an
    earlier comparison there measured on the same content. Its result: a
    :class:`~mwork.jobs.WrittenResult` whose ``data`` is the rows."""

    command = "compare"
    summary = "neurons vs random neurons vs LoRA vs full fine-tuning: one table"

    neurons: NeuronSet | str | Path = option(help="NeuronSet file (.safetensors) whose neurons the neuron methods "
                                             "train", parse=str)
    texts: Sequence[str] | TextSource | str = option(help="training documents (as for mwork enhance)", parse=str)
    articles: str | None = option(None, "XQuAD articles for --texts (default 0:24)", metavar="START:STOP")
    eval: tuple[str, ...] | Mapping[str, Sequence[str] | TextSource | str] = option(
        help="evaluation texts, repeatable: zh=xquad:zh (articles 24-47), en=xquad:en, fr=french.txt[9000:9200]",
        repeat=True, metavar="NAME=SPEC")
    task: tuple[str, ...] = option((), "also score this task before and after (repeatable): xquad, xcsqa, mgsm, "
                                   "xlsum", repeat=True, metavar="NAME", record=False)
    task_langs: str | None = option(None, "languages of --task, comma-separated, e.g. zh,en", record=False)

    def __post_init__(self) -> None:
        if self.task or self.task_langs:  # the command line's spelling of ``tasks``
            if self.tasks is not None:
                raise ValueError("give tasks, or task and task_langs (--task, --task-langs), not both")
            object.__setattr__(self, "tasks", tasks_for(self.task, self.task_langs))
        CompareConfig.__post_init__(self)
        EnhanceSettings.__post_init__(self)

    def check(self) -> None:
        self.check_model_options()
        self.inputs  # texts, evaluation sets and task examples read and checked before the model loads

    @cached_property
    def inputs(self) -> tuple[list[str], dict[str, list[str]], dict[tuple[str, str], tuple[Any, list[Any]]]]:
        """The training texts, the evaluation sets (``{name: texts}``) and the task examples, each
        read once (so that every method sees the same)."""
        texts = self.texts
        if self.articles is not None:
            if not isinstance(texts, (str, Path, TextSource)):
                raise ValueError("articles choose XQuAD articles of a text spec (texts=xquad:LANG); texts is a list")
            texts = read_texts(texts, articles=self.articles)
        train_texts = _texts_of(texts, None, DETECTION_ARTICLES, "texts")
        specs = self.eval if isinstance(self.eval, Mapping) else named_specs(self.eval)
        if not specs:
            raise ValueError("give at least one evaluation set")
        evals = {}
        for name, spec in specs.items():
            got = _texts_of(spec, self.eval_articles, EVALUATION_ARTICLES, f"evaluation set {name!r}")
            evals[name] = got[:self.eval_max_texts] if self.eval_max_texts else got
        return train_texts, evals, _load_tasks(self.tasks, self.task_source, self.task_limit)

    def compute(self, model: Any, tokenizer: Any) -> WrittenResult:
        """The comparison on ``model``, kept pristine: the "before" numbers are measured on it and
        each method trains a copy (or, for a dispatched model, a newly loaded one)."""
        train_texts, evals, task_sets = self.inputs
        cfg, s = config_part(CompareConfig, self), config_part(EnhanceSettings, self)
        progress, name_of_model = self.progress, model_name(model)
        t_kwargs = {"batch_size": cfg.eval_batch_size, **(cfg.task_kwargs or {})}
        out_dir = make_folder(self.out)
        eval_tokens: dict[str, int] = {}
        tok = tokenizer

        def evaluate(model: nn.Module, tok: Any) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
            return _evaluate(model, tok, evals, task_sets, t_kwargs, cfg, eval_tokens, progress)

        ns = as_neuron_set(self.neurons, model)
        budget = NeuronDelta.zeros(model, ns).num_parameters()
        lora = lora_for_budget(model, ns, budget)
        if cfg.lora_rank is not None:
            lora = lora_for_budget(model, ns, cfg.lora_rank * lora["parameters_per_rank"])
        used = train_texts[:s.max_docs] if s.max_docs else train_texts
        meta = {"model": name_of_model, "model_sha256": model_digest(model), "device": input_device(model).type,
                "settings": asdict(s), "compare": fingerprint(cfg),
                "neurons": neuron_summary(ns, self.neurons if not isinstance(self.neurons, NeuronSet) else None),
                "data_sha256": texts_digest(used), "n_docs": len(used),
                "eval_sets": {k: {"n_texts": len(v), "sha256": texts_digest(v)} for k, v in evals.items()},
                "eval_max_length": cfg.eval_max_length, "lora": lora, "random_seed": cfg.random_seed,
                "tasks": _task_meta(task_sets, cfg.task_limit, t_kwargs) if task_sets else None,
                "task_source": str(cfg.task_source) if cfg.task_source is not None else None}
        rows: list[dict[str, Any]] = []
        earlier = out_dir / COMPARE_FILE
        if earlier.is_file():
            old = read_json(earlier, "comparison", "delete it (and the method folders) or choose another output folder")
            diff = _differences(old, meta)
            if diff:
                raise ValueError(f"{out_dir} holds a comparison that differs in {diff}, so its numbers cannot be "
                                 f"reused; choose another output folder")
            before, before_tasks = old["before"], old.get("before_tasks") or {}
            rows = [r for r in old["rows"] if r["method"] not in cfg.methods]
        else:
            before, before_tasks = evaluate(model, tok)
            _write_task_records(out_dir / "before_tasks.json", before_tasks)
            before_tasks = _without_records(before_tasks)
        meta["before"] = before
        meta["before_tasks"] = before_tasks
        meta["eval_tokens"] = eval_tokens
        context = ComparisonContext(ns, lora, cfg.lora_alpha, cfg.random_seed, s)
        pristine: nn.Module | None = None if _dispatched(model) else model
        del model
        for name in cfg.methods:
            model, tok = (copy.deepcopy(pristine), tok) if pristine is not None else self.load()
            method = get_method(name).for_comparison(model, context)
            folder = prepare_out(_fresh(out_dir / name, method.outputs), False, method.result_file)
            run_meta = {"model_id": name_of_model, "fingerprint": get_adapter(model).fingerprint(),
                        **method.facts()}
            run = training_run(s, {"lr": cfg.lr_of(name, s), "checkpoint_every": 0, "progress": progress})
            m = train(method, tok, train_texts, run, folder, run_meta)
            method.save(folder, m)
            with method.evaluating() as trained:
                after, after_tasks = evaluate(trained, tok)
            if task_sets:
                _write_task_records(folder / "tasks.json", after_tasks)
            row = _row(name, method, m, before, after)
            row.update(_task_columns(before_tasks, after_tasks))
            rows.append(row)
            rows.sort(key=_method_order)
            del model, method, trained
            write_table(out_dir, rows, meta)  # after every method: a long comparison keeps its progress
        return WrittenResult(out_dir, _files(out_dir, rows), data=rows)


_OPTIONS = {f.name for f in fields(EnhanceCompareConfig)} - {"model", "neurons", "texts", "eval", "out"}


def _files(out: Path, rows: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    """The comparison's files: its tables, the "before" task records and each row's method folder."""
    names = [COMPARE_FILE, "compare.csv", "compare.md", "before_tasks.json"]
    files = {name: out / name for name in names if (out / name).is_file()}
    for row in rows:
        folder = out / row["method"]
        for path in sorted(folder.rglob("*")) if folder.is_dir() else ():
            if path.is_file():
                files[path.relative_to(out).as_posix()] = path
    return files


def _dispatched(model: nn.Module) -> bool:
    """Whether accelerate spread ``model`` over devices (``device_map``): such a model is loaded
    again for each method rather than deep-copied (its dispatch hooks may not survive a copy)."""
    return hasattr(model, "hf_device_map")


def _row(name: str, method: Any, m: dict[str, Any], before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """One method's row: its training record and each evaluation set's perplexity before / after."""
    row = {"method": name, "trainable_parameters": m["trainable_parameters"], "lora_rank": None,
           **method.row_facts(),
           "optimizer_state_elements": m["optimizer_state_elements"], "lr": m["settings"]["lr"],
           "steps": m["steps"]["done"], "final_loss": round(m["losses"][-1], 4) if m["losses"] else None,
           "wall_time_s": m["wall_time_s"], "peak_memory_mb": m["peak_memory_mb"],
           "peak_memory_extra_mb": m["peak_memory_extra_mb"], "memory_measure": m["memory_measure"]}
    for ev in after:
        row[f"ppl_{ev}_before"] = round(before[ev], 4)
        row[f"ppl_{ev}_after"] = round(after[ev], 4)
        row[f"ppl_{ev}_change_pct"] = round(100 * (after[ev] / before[ev] - 1), 3)
    return row


def _method_order(row: dict[str, Any]) -> int:
    names = method_names()
    return names.index(row["method"]) if row["method"] in names else len(names)


# what must be the same for an earlier comparison's "before" numbers and rows to be reused
_SAME = ("model_sha256", "device", "settings", "compare", "data_sha256", "eval_sets", "eval_max_length", "lora",
         "random_seed", "tasks")


def _differences(old: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """The names of the entries of ``_SAME`` (``settings.lr``-style for the two configs) and of
    the NeuronSet digest that differ between an earlier comparison and this one."""
    diff: list[str] = []
    for key in _SAME:
        new, was = json.loads(json.dumps(meta[key], default=str)), old.get(key)
        if new == was:
            continue
        if isinstance(new, dict) and isinstance(was, dict) and key in ("settings", "compare"):
            diff += [f"{key}.{k}" for k in sorted(set(new) | set(was)) if new.get(k) != was.get(k)]
        else:
            diff.append("model (its weights)" if key == "model_sha256" else key)
    if (old.get("neurons") or {}).get("sha256") != meta["neurons"]["sha256"]:
        diff.append("neurons")
    return diff


def _evaluate(model: nn.Module, tok: Any, evals: dict[str, list[str]], task_sets: dict[tuple[str, str], Any],
              t_kwargs: dict[str, Any], cfg: CompareConfig, eval_tokens: dict[str, int],
              progress: bool) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Perplexity of every evaluation set and the score of every task language."""
    from mwork.tasks.perplexity import perplexity

    ppl = {}
    for name, t in evals.items():
        r = perplexity(model, tok, list(t), batch_size=cfg.eval_batch_size, max_length=cfg.eval_max_length,
                       progress=progress)
        ppl[name], eval_tokens[name] = r["ppl"], r["tokens"]
    scores: dict[str, dict[str, Any]] = {}
    model.eval()
    for (name, lang), (task, examples) in task_sets.items():
        r = task.evaluate(model, tok, examples, lang, progress=progress, **t_kwargs)
        scores.setdefault(name, {})[lang] = {
            "metric": r["metric"], "score": r["score"], "n": r["n"],
            **{m: r[m] for m in SECONDARY_METRICS if isinstance(r.get(m), float)},
            "records": r.get("records", [])}
    return ppl, scores


def _load_tasks(tasks: Mapping[str, Sequence[str]] | None, source: str | Path | None,
                limit: int | None) -> dict[tuple[str, str], tuple[Any, list[Any]]]:
    """``{(task name, lang): (task, examples)}``, loaded once so every method sees the same examples."""
    from mwork.tasks.registry import get_task

    if not tasks:
        return {}
    loaded = {}
    for name, langs in tasks.items():
        task = get_task(name)
        for lang in langs:
            examples = task.load(lang, source, limit=limit)
            if not examples:
                raise ValueError(f"{task.name} has no examples for {lang!r} in {source}")
            loaded[(task.name, lang)] = (task, examples)
    return loaded


def _task_meta(task_sets: dict[tuple[str, str], tuple[Any, list[Any]]], limit: int | None,
               kwargs: dict[str, Any]) -> dict[str, Any]:
    """What must match for an earlier comparison's task scores to be reused: the examples
    themselves (hashed), the limit and the evaluation arguments."""
    meta: dict[str, Any] = {}
    for (name, lang), (task, examples) in task_sets.items():
        same_kwargs = {k: v for k, v in kwargs.items() if k != "batch_size"}  # batching changes only rounding
        entry = meta.setdefault(name, {"metric": task.metric, "limit": limit, "kwargs": same_kwargs, "langs": {}})
        blob = json.dumps([e.to_dict() for e in examples], sort_keys=True, ensure_ascii=False, default=str)
        entry["langs"][lang] = {"n": len(examples), "sha256": hashlib.sha256(blob.encode("utf-8")).hexdigest()}
    return json.loads(json.dumps(meta, default=str))


def _without_records(scores: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t: {lang: {k: v for k, v in r.items() if k != "records"} for lang, r in by.items()}
            for t, by in scores.items()}


def _write_task_records(path: Path, scores: dict[str, dict[str, Any]]) -> None:
    if scores:
        write_json(path, scores, indent=1, ensure_ascii=False, default=str)


def _task_columns(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``<task>_<lang>_before / _after / _change`` for the main score, then the secondary metrics."""
    row: dict[str, Any] = {}
    for name, by in before.items():
        for lang, b in by.items():
            a = after[name][lang]
            for key, label in [("score", f"{name}_{lang}")] + [(m, f"{name}_{lang}_{m}") for m in SECONDARY_METRICS]:
                if key in b and key in a:
                    row[f"{label}_before"] = round(b[key], 4)
                    row[f"{label}_after"] = round(a[key], 4)
                    row[f"{label}_change"] = round(a[key] - b[key], 4)
    return row


def _fresh(path: Path, outputs: Sequence[str]) -> Path:
    """A method's folder of a comparison, emptied of an earlier comparison's files of that method."""
    import shutil

    for name in (*outputs, CHECKPOINT_FILE, LEGACY_CHECKPOINT_FILE, "tasks.json"):
        target = path / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    return path


def write_table(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """``compare.json`` (``meta`` + rows), ``compare.csv`` and ``compare.md``, each atomically."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    write_text(out / COMPARE_FILE, json.dumps({**meta, "rows": rows}, indent=2, default=str) + "\n")
    buffer = io.StringIO(newline="")
    w = csv.DictWriter(buffer, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    write_bytes(out / "compare.csv", buffer.getvalue().encode("utf-8"))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in columns) + " |" for r in rows]
    write_text(out / "compare.md", "\n".join(lines) + "\n")

