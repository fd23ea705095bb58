"""``mwork confusion run``: the Language Confusion Benchmark for any model, with levers.

``ConfusionRunConfig(model=..., lcb_dir=..., out=...).run()`` asks the model every test prompt
of the chosen tasks and languages (the first ``limit`` of each test set) in the benchmark's
format (:mod:`mwork.confusion.prompts`: the few-shot text for base models, the chat template with
``chat``), samples as the paper does (:mod:`mwork.confusion.generate`), once per lever
(:mod:`mwork.confusion.levers`), and scores the completions (:mod:`mwork.confusion.results`).

Resumable through the experiment kernel (``mwork.experiments.kernel``): a cell is one batch of
``batch_size`` prompts of one (lever, language), its prompts pooled over the tasks and test sets
of that language in a fixed order (a lever's edit is the same for every prompt of a language, so a
batch is as full as the data allows: with ``--limit 3`` a test set alone would make batches of
three), keyed by the index of its first prompt in that order; finished cells are appended to
``OUT/cells.jsonl`` as they are made, with the digest of what they were computed from (the model's
weights, the lever's units, the exact model inputs and the sampling settings); a rerun of the same
command computes only what is missing, and a run that was killed ends with the same files as one
that was not (a batch always holds the same prompts). Each batch is sampled under its own seed,
drawn from ``seed`` and the batch's (language, first prompt), the same for every lever: the levers
are compared on the same prompts in the same batches with the same random numbers.

Files: ``completions.csv`` (the released format, ``id,model,completion,task,source,language``,
then ``lever``, ``prompt_number``, ``new_tokens``, ``distinct2``, ``nll``; the ``model`` column
is ``MODEL+LEVER`` for a lever other than ``none``, so the benchmark's own ``compute_metrics.py``,
which groups by task and model, scores each lever apart), ``lcb.csv`` (the rates per task, source,
language and lever, with fluency), ``lcb.json`` (settings, scorer, overall rates per lever),
``cells.jsonl`` and ``settings.json`` (the kernel's)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mwork.chat import require_chat_template
from mwork.config import digest, fingerprint, option
from mwork.confusion.data import (LANGUAGE_NAMES, SHOTS, TASKS, LcbFolder, LcbPrompt, check_shots, parse_languages,
                                  parse_tasks)
from mwork.confusion.generate import MAX_NEW_TOKENS, TEMPERATURE, TOP_P, Sampling, generate_batch
from mwork.confusion.levers import NONE, PROMPT, STEERING, LeverOptions, Levers
from mwork.confusion.prompts import PromptFormat, with_instruction
from mwork.experiments.kernel import Cell, CellInputs, CellKey, CellStore, execute
from mwork.jobs import Job, ModelOptions, OutputOptions, RunOptions, WrittenResult

#: where a base model starts the next few-shot question (the scorer cuts there; generation stops there)
STOP = "\nQ:"


@dataclass(frozen=True)
class ConfusionKey(CellKey):
    """One batch of prompts: the lever, the expected language and the index of the batch's first
    prompt among that language's prompts (every task and test set, in plan order)."""

    lever: str
    language: str
    first: int

    def evaluation(self) -> str:
        return f"{self.lever}|{self.language}|{self.first}"

    def inputs_of(self) -> tuple[str | None, str]:
        return (f"{self.lever}/{self.language}" if self.lever in STEERING else None), self.evaluation()


@dataclass(frozen=True, kw_only=True)
class ConfusionRunConfig(LeverOptions, ModelOptions, RunOptions, OutputOptions, Job):
    """The settings of ``mwork confusion run`` (module docstring)."""

    command = "run"
    summary = "generate the benchmark's completions (base: few-shot; chat: template), per lever, and score them"

    lcb_dir: str = option(help="the benchmark's folder: test_sets/ and few_shot_examples.json (for-ai/"
                          "language-confusion)", metavar="DIR", required=True, record=False)
    out: str = option(help="output folder (completions.csv, lcb.csv, lcb.json; resumable)", metavar="DIR",
                      required=True, record=False)
    tasks: tuple[str, ...] = option(TASKS, "tasks, comma-separated")
    langs: tuple[str, ...] = option(tuple(sorted(LANGUAGE_NAMES)), "expected languages, comma-separated")
    limit: int | None = option(None, "the first N prompts of each test set (task, source, language)")
    shots: int = option(0, "few-shot pairs before a prompt (base-model format)", choices=SHOTS)
    chat: bool = option(False, "ask through the tokenizer's chat template (an instruction-tuned model), with the "
                        "prompt alone")
    greedy: bool = option(False, "greedy decoding instead of the paper's nucleus sampling")
    top_p: float = option(TOP_P, "nucleus sampling's p")
    temperature: float = option(TEMPERATURE, "sampling temperature")
    max_new_tokens: int = option(MAX_NEW_TOKENS, "new tokens per completion at most")
    seed: int = option(0, "seed of the sampling (each batch's seed is drawn from it) and of the random lever")
    batch_size: int = option(8, "prompts per batch (left-padded); part of a batch's key: it changes the samples")
    perplexity: bool = option(True, "measure the unmodified model's perplexity of each completion (one forward pass "
                              "per batch)")

    def sampling(self) -> Sampling:
        return Sampling(greedy=self.greedy, top_p=self.top_p, temperature=self.temperature,
                        max_new_tokens=self.max_new_tokens)

    def prompt_format(self) -> PromptFormat:
        return PromptFormat(shots=check_shots(self.shots), chat=self.chat)

    def inputs(self) -> tuple[LcbFolder, dict[str, tuple[str, ...]], list[str], dict[str, str]]:
        """The benchmark's folder, the languages of each task, notes, and the random lever's
        statistic corpora: everything checked, nothing loaded but files."""
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        self.sampling()
        fmt = self.prompt_format()
        tasks, langs = parse_tasks(self.tasks), parse_languages(self.langs)
        folder = LcbFolder(self.lcb_dir)
        plan, notes = folder.plan(tasks, langs)
        for task, have in plan.items():
            for lang in have:
                folder.few_shot(task, lang, fmt.shots)
                folder.prompts(task, lang, self.limit)
        corpora = self.check_levers(langs)
        return folder, plan, notes, corpora

    def check(self) -> None:
        self.check_model_options()
        self.inputs()
        from mwork.files import check_writable

        check_writable(self.out)

    def compute(self, model: Any, tokenizer: Any) -> WrittenResult:
        return run_confusion(self, model, tokenizer)


def say(message: str) -> None:
    print(f"[mwork confusion] {message}", file=sys.stderr, flush=True)


def cell_seed(seed: int, key: ConfusionKey) -> int:
    """A batch's sampling seed: from ``seed`` and the batch, not the lever."""
    return int(digest({"seed": seed, "language": key.language, "first": key.first})[:8], 16)


@dataclass(frozen=True)
class Batch:
    """The prompts of a cell and the exact model inputs made of them."""

    prompts: Sequence[LcbPrompt]
    texts: Sequence[str]


def grouped_prompts(folder: LcbFolder, task: str, lang: str, limit: int | None) -> list[LcbPrompt]:
    """One (task, language)'s prompts, test set by test set (sources in order of appearance)."""
    by_source: dict[str, list[LcbPrompt]] = {}
    for p in folder.prompts(task, lang, limit):
        by_source.setdefault(p.source, []).append(p)
    return [p for prompts in by_source.values() for p in prompts]


def language_prompts(config: ConfusionRunConfig, folder: LcbFolder,
                     plan: dict[str, tuple[str, ...]]) -> dict[str, list[LcbPrompt]]:
    """Each expected language's prompts, pooled in plan order: task, test set, prompt."""
    pooled: dict[str, list[LcbPrompt]] = {}
    for task, langs in plan.items():
        for lang in langs:
            pooled.setdefault(lang, []).extend(grouped_prompts(folder, task, lang, config.limit))
    return pooled


def plan_cells(config: ConfusionRunConfig, tokenizer: Any, folder: LcbFolder,
               plan: dict[str, tuple[str, ...]]) -> list[Cell]:
    """Every cell in run order: lever, language, batch (module docstring)."""
    fmt = config.prompt_format()
    pooled = language_prompts(config, folder, plan)
    shots = {(task, lang): folder.few_shot(task, lang, fmt.shots) for task, langs in plan.items() for lang in langs}
    cells = []
    for lever in config.levers:
        for lang, prompts in pooled.items():
            for first in range(0, len(prompts), config.batch_size):
                batch = prompts[first:first + config.batch_size]
                messages = [with_instruction(p.prompt, lang) if lever == PROMPT else p.prompt for p in batch]
                texts = [fmt.text(tokenizer, m, shots[(p.task, lang)]) for p, m in zip(batch, messages)]
                cells.append(Cell(ConfusionKey(lever, lang, first), lever=Batch(batch, texts)))
    return cells


def _nll_context(text: str, tokenizer: Any, chat: bool) -> str:
    """The prompt as ``continuation_nll`` tokenizes it (with the tokenizer's special tokens): a
    chat template's text already starts with BOS, which would then be doubled."""
    bos = getattr(tokenizer, "bos_token", None)
    return text[len(bos):] if chat and bos and text.startswith(bos) else text


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def run_confusion(config: ConfusionRunConfig, model: Any, tokenizer: Any) -> WrittenResult:
    """The run ``config`` describes, on ``model`` (module docstring); files under ``config.out``."""
    from mwork.confusion.lcb import Scorer
    from mwork.confusion.results import score_run
    from mwork.confusion.tables import COMPLETIONS_CSV, EXTRA_COLUMNS, completions_csv
    from mwork.experiments.steering.generation import continuation_nll
    from mwork.experiments.steering.metrics import distinct_n
    from mwork.files import make_folder, write_text
    from mwork.fingerprints import model_digest
    from mwork.models.adapters import model_name

    folder, plan, notes, corpora = config.inputs()
    name = model_name(model) or config.model
    if config.chat:
        try:
            require_chat_template(tokenizer, model=name)
        except ValueError as err:
            raise ValueError(f"--chat: {err}") from None
    for note in notes:
        say(note)
    scorer = Scorer()  # the identifier and word list load before any generation: a missing tool fails first
    out = make_folder(config.out)
    fmt, sampling = config.prompt_format(), config.sampling()
    stop = () if fmt.chat else (STOP,)
    cells = plan_cells(config, tokenizer, folder, plan)
    langs = tuple(dict.fromkeys(lang for have in plan.values() for lang in have))
    levers = Levers(config, seed=config.seed, stats_corpora=corpora, progress=config.progress)
    generation = {"format": {"shots": fmt.shots, "chat": fmt.chat}, "sampling": vars(sampling),
                  "stop": list(stop), "batch_size": config.batch_size}
    inputs = CellInputs(model_digest(model), levers.digests(langs, model, tokenizer),
                        {c.key.evaluation(): digest({"texts": list(c.lever.texts), **generation,
                                                     "seed": cell_seed(config.seed, c.key)})[:16] for c in cells})
    settings = {"experiment": "confusion run", **generation, "seed": config.seed, "perplexity": config.perplexity}
    store = CellStore(out / "cells.jsonl", settings, inputs, {c.key: inputs.for_cell(c.key) for c in cells},
                      key_type=ConfusionKey, name="a confusion run", label="confusion")

    def measure(cell: Cell) -> dict[str, Any]:
        key, batch = cell.key, cell.lever
        lever = levers.get(key.lever, key.language, model, tokenizer)
        with lever.context(model):
            gens = generate_batch(model, tokenizer, batch.texts, sampling, seed=cell_seed(config.seed, key),
                                  add_special_tokens=fmt.add_special_tokens, stop=stop)
        nll: list[Any] = [None] * len(gens)
        if config.perplexity:
            contexts = [_nll_context(t, tokenizer, fmt.chat) for t in batch.texts]
            nll = [_finite(v) if n else None for v, n in continuation_nll(
                model, tokenizer, contexts, [g["ids"] for g in gens], batch_size=config.batch_size)]
        return {"score": None, "n": len(gens), "metric": "completions", "higher_is_better": None, "off": None,
                "completions": [{"number": p.number, "completion": g["text"], "new_tokens": len(g["ids"]),
                                 "distinct2": distinct_n(g["ids"], 2), "nll": v}
                                for p, g, v in zip(batch.prompts, gens, nll)]}

    records = execute(cells, store, measure, progress=config.progress)
    made = {(cell.key.lever, p.task, p.source, p.language, p.number): c
            for cell in cells for p, c in zip(cell.lever.prompts, records[cell.key]["completions"])}
    rows = []
    for lever in config.levers:  # the released order: lever, task, language, test set, prompt
        for task, langs in plan.items():
            for lang in langs:
                for p in grouped_prompts(folder, task, lang, config.limit):
                    c = made[(lever, task, p.source, lang, p.number)]
                    rows.append({"id": len(rows), "model": name if lever == NONE else f"{name}+{lever}",
                                 "completion": c["completion"], "task": task, "source": p.source, "language": lang,
                                 "lever": lever, "prompt_number": c["number"], "new_tokens": c["new_tokens"],
                                 "distinct2": c["distinct2"], "nll": c["nll"]})
    files = {"completions": out / COMPLETIONS_CSV}
    write_text(files["completions"], completions_csv(rows, EXTRA_COLUMNS))
    scores = score_run(rows, config.levers, scorer, name)
    scores.metadata = {"model": name, "settings": fingerprint(config), "lcb_dir": str(folder.path),
                       "notes": notes, **scores.metadata}
    written = scores.write(out)
    files.update({"lcb_csv": written["csv"], "lcb_json": written["json"], "samples": written["samples"],
                  **({"png": written["png"]} if "png" in written else {}), "cells": out / "cells.jsonl",
                  "settings": out / "settings.json"})
    return WrittenResult(Path(out), files, scores.rows, extra={"overall": scores.overall()})
