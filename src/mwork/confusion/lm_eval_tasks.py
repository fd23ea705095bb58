"""The benchmark as lm-evaluation-harness tasks, so that any lm-eval model backend (``mwork``,
``hf``, an API) can be scored on it: ``mwork confusion tasks --lcb-dir DIR --out TASKS`` writes,
per test set, ``TASKS/data/<name>.jsonl`` and ``TASKS/<name>.yaml``; pass ``TASKS`` to lm-eval as
``--include_path`` (``mwork eval --include-path TASKS --tasks mwork_lcb``).

A task ``mwork_lcb_<task>_<source>_<lang>`` (tags ``mwork_lcb`` and ``mwork_lcb_<task>``) is one
test set: ``generate_until`` on the benchmark's base-model text (:mod:`mwork.confusion.prompts`,
``shots`` few-shot pairs; lm-eval's ``--apply_chat_template`` puts that text in a chat template as
it is), the paper's sampling (nucleus p 0.75, temperature 0.3, at most 100 tokens) until
``\\nQ:``, and this package's scorer as the metric (:func:`process_results`): ``lpr`` (the share
of the scored completions whose every scored line is the language) and, for ar, hi, ja, ko, ru and
zh, ``wpr`` (the share of the line-passing ones without an English word), each aggregated as a
ratio of counts (:func:`rate`), so a task's numbers are the cell's of ``mwork confusion score``.
lm-eval averages no further: the benchmark's per-language and overall means are over cells."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from mwork.config import option
from mwork.confusion.data import LANGUAGE_NAMES, TASKS, LcbFolder, check_shots, parse_languages, parse_tasks
from mwork.confusion.generate import MAX_NEW_TOKENS, TEMPERATURE, TOP_P
from mwork.confusion.lcb import WPR_LANGUAGES, Scorer
from mwork.confusion.prompts import few_shot_prompt
from mwork.jobs import Job

NAME = "mwork_lcb_{task}_{source}_{lang}"
TAG = "mwork_lcb"
STOP = "\nQ:"
_HERE = "mwork.confusion.lm_eval_tasks"


@lru_cache(maxsize=1)
def _scorer() -> Scorer:
    return Scorer()


def process_results(doc: dict[str, Any], results: Sequence[str]) -> dict[str, tuple[int, int]]:
    """lm-eval's per-document step: the completion scored against ``doc["language"]``, as counts
    ``(denominator, numerator)`` for :func:`rate`: ``lpr`` (scored, line-passing), and ``wpr``
    (line-passing, word-passing) in the word-check languages."""
    language = doc["language"]
    score = _scorer().score(results[0] if results else "", language)
    out = {"lpr": (int(score.scored), int(score.line_pass))}
    if language in WPR_LANGUAGES:
        out["wpr"] = (int(score.line_pass), int(bool(score.word_pass)))
    return out


def rate(items: Sequence[tuple[int, int]]) -> float:
    """A ratio of counts over a task's documents: ``sum(numerators) / sum(denominators)``; NaN when
    there is nothing to count (no scored completion, no line-passing one)."""
    den = sum(d for d, _ in items)
    return sum(n for _, n in items) / den if den else math.nan


def _yaml(name: str, task: str, lang: str, data_file: Path, max_new_tokens: int) -> str:
    """A task's YAML (written as text: its ``!function`` tags are lm-eval's)."""
    import json

    metrics = ["lpr", *(["wpr"] if lang in WPR_LANGUAGES else [])]
    lines = [
        "# written by mwork.confusion.lm_eval_tasks (mwork confusion tasks)",
        f"task: {name}",
        f"tag: [{TAG}, {TAG}_{task}]",
        "dataset_path: json",
        f"dataset_kwargs: {{data_files: {{test: {json.dumps(str(data_file))}}}}}",
        "test_split: test",
        "output_type: generate_until",
        "doc_to_text: text",
        "doc_to_target: ''",
        "target_delimiter: ''",
        "generation_kwargs:",
        f"  until: [{json.dumps(STOP)}]",
        "  do_sample: true",
        f"  temperature: {TEMPERATURE}",
        f"  top_p: {TOP_P}",
        f"  max_gen_toks: {max_new_tokens}",
        f"process_results: !function {_HERE}.process_results",
        "metric_list:",
        *(line for m in metrics for line in (f"  - metric: {m}", f"    aggregation: !function {_HERE}.rate",
                                              "    higher_is_better: true")),
        "metadata:",
        "  version: 1.0",
        f"  source: {json.dumps(f'Language Confusion Benchmark (Marchisio et al., 2024), {task}, {LANGUAGE_NAMES[lang]}')}",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class LcbTasks:
    """The tasks to write: per name, its (task, language) and documents."""

    tasks: dict[str, tuple[str, str, list[dict[str, Any]]]]
    max_new_tokens: int = MAX_NEW_TOKENS

    def write(self, out: str | Path) -> dict[str, Path]:
        """``OUT/<name>.yaml`` and ``OUT/data/<name>.jsonl`` per task; returns the YAML files."""
        import json

        from mwork.files import make_folder, write_text

        folder = make_folder(out)
        rows_dir = make_folder(folder / "data")
        files = {}
        for name, (task, lang, docs) in self.tasks.items():
            data = rows_dir / f"{name}.jsonl"
            write_text(data, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
            files[name] = folder / f"{name}.yaml"
            write_text(files[name], _yaml(name, task, lang, data.resolve(), self.max_new_tokens))
        return files


def lcb_tasks(lcb_dir: str | Path, *, tasks: Sequence[str] = TASKS, langs: Sequence[str], shots: int = 0,
              limit: int | None = None, max_new_tokens: int = MAX_NEW_TOKENS) -> LcbTasks:
    """The benchmark's test sets of ``tasks`` in ``langs`` as lm-eval tasks (module docstring)."""
    check_shots(shots)
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    folder = LcbFolder(lcb_dir)
    plan, _ = folder.plan(parse_tasks(tuple(tasks)), parse_languages(tuple(langs)))
    out: dict[str, tuple[str, str, list[dict[str, Any]]]] = {}
    for task, have in plan.items():
        for lang in have:
            turns = folder.few_shot(task, lang, shots)
            for p in folder.prompts(task, lang, limit):
                name = NAME.format(task=task, source=p.source, lang=lang)
                doc = {"text": few_shot_prompt(turns, p.prompt), "prompt": p.prompt, "task": task,
                       "source": p.source, "language": lang, "number": p.number}
                out.setdefault(name, (task, lang, []))[2].append(doc)
    return LcbTasks(out, max_new_tokens)


@dataclass(frozen=True, kw_only=True)
class LcbTasksConfig(Job):
    """The settings of ``mwork confusion tasks`` (no model: files only)."""

    command = "tasks"
    summary = "write the benchmark's test sets as lm-eval tasks (generate_until, scored by mwork's LCB scorer)"

    lcb_dir: str = option(help="the benchmark's folder: test_sets/ and few_shot_examples.json", metavar="DIR",
                          required=True)
    tasks: tuple[str, ...] = option(TASKS, "tasks, comma-separated")
    langs: tuple[str, ...] = option(tuple(sorted(LANGUAGE_NAMES)), "expected languages, comma-separated")
    shots: int = option(0, "few-shot pairs before each prompt (the base-model format)", choices=(0, 1, 5))
    limit: int | None = option(None, "the first N prompts of each test set")
    max_new_tokens: int = option(MAX_NEW_TOKENS, "new tokens per completion at most (the paper: 100)")

    def check(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        check_shots(self.shots)
        LcbFolder(self.lcb_dir).plan(parse_tasks(self.tasks), parse_languages(self.langs))

    def run(self, model: Any = None, tokenizer: Any = None) -> LcbTasks:
        self.check()
        return lcb_tasks(self.lcb_dir, tasks=self.tasks, langs=self.langs, shots=self.shots, limit=self.limit,
                         max_new_tokens=self.max_new_tokens)
