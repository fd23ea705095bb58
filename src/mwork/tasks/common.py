"""What every evaluation task shares: the Example record, the Task interface, prompt files,
few-shot handling, and finding data locally or on the Hugging Face hub.

A task declares what it asks of the model (``asks``: greedy generation, choice
log-likelihood or rolling log-likelihood; ``ask`` builds the query) and how it scores the
answers (``score_answers``); the task runtime (``mwork.tasks.runtime``) does the batching,
collation and distributed split for all of them. Results are ``TaskResult`` dataclasses.

Data sources (``source`` argument of every ``load``):

* a file or a folder: read locally (each task documents the file names it looks for);
* ``"hub"``: the task's Hugging Face dataset, through the ``datasets`` package (imported
  only then; ``pip install datasets``);
* ``None``: the folder in the environment variable ``MWORK_DATA`` when it is set (the layout of
  the released files: ``$MWORK_DATA/mgsm/mgsm_en.tsv``, ``$MWORK_DATA/xquad/xquad.en.json`` ...),
  else the hub.

Prompts are data: ``mwork/data/task_prompts/<task>.json`` holds, per language, the prompt
template, the few-shot target format, the stop strings and optional few-shot examples. Pass
``prompts=`` (a path or a dict of the same shape) to ``evaluate`` to use your own.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

from mwork.config import digest
from mwork.data_sources import DATA_ENV, HubLoadError, load_hub, resolve_source  # noqa: F401  (the tasks' data rule)
from mwork.tasks.queries import Generate, Loglikelihood, Query, Rolling
from mwork.tasks.results import TaskResult


PROMPTS_DIR = Path(__file__).resolve().parent.parent / "data" / "task_prompts"  # shipped as package data


def jsonl_rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(where, object)`` for every line of a JSON Lines file, ``where`` = ``"path:line"``
    for error messages; a blank line gives ``(where, None)`` so callers decide what it means."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it is not a blank one
    for n, line in enumerate(lines, 1):
        where = f"{path}:{n}"
        if not line.strip():
            yield where, None
            continue
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg})") from None


@dataclass
class Example:
    """One evaluation item.

    ``fields`` fill the prompt template (``question``, ``context``, ``choices``, ``text`` ...);
    ``target`` is the gold: a number (MGSM), a list of answer strings (XQuAD), the index of
    the right choice (X-CSQA) or a reference summary (XLSum). ``id`` is stable across runs (and
    shared by the translations of one item where the data set is parallel)."""

    id: str
    lang: str
    fields: dict[str, Any]
    target: Any
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- prompts -------------------------------------------------------------------------------


def load_prompts(task: str, prompts: str | Path | dict | None = None) -> dict[str, Any]:
    """The prompt file of ``task`` (built in, or ``prompts``: a JSON path or an already loaded dict)."""
    if isinstance(prompts, dict):
        data = prompts
    elif prompts is not None:
        path = Path(prompts)
        if not path.is_file():
            raise FileNotFoundError(f"no prompt file at {path}")
        data = json.loads(path.read_text(encoding="utf-8"))
    else:
        path = PROMPTS_DIR / f"{task}.json"
        if not path.is_file():
            raise FileNotFoundError(f"no built-in prompt file for task {task!r} ({path})")
        data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data.get("languages"), dict):
        raise ValueError(f"prompt file for {task!r} needs a 'languages' object mapping language codes to templates")
    return data


def prompt_for(task: str, lang: str, prompts: str | Path | dict | None = None) -> dict[str, Any]:
    """One language's prompt entry, with the file-wide defaults (``shot_separator``) filled in."""
    data = load_prompts(task, prompts)
    langs = data["languages"]
    if lang not in langs:
        raise ValueError(
            f"no {task} prompt for language {lang!r}; prompts exist for {', '.join(sorted(langs))}. "
            f"Add one to a copy of the prompt file and pass prompts=PATH"
        )
    entry = {"shot_separator": data.get("shot_separator", "\n\n"), "stop": [], **langs[lang]}
    if "template" not in entry:
        raise ValueError(f"{task} prompt for {lang!r} has no 'template'")
    return entry


def prompt_languages(task: str) -> list[str]:
    return sorted(load_prompts(task)["languages"])


# ---- data sources --------------------------------------------------------------------------


def select(items: list, start: int = 0, limit: int | None = None) -> list:
    """``items[start:start + limit]`` with argument checks."""
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    return items[start:] if limit is None else items[start:start + limit]


# ---- the task interface --------------------------------------------------------------------


class Task(ABC):
    """An evaluation task: load examples, then ``evaluate`` a model on them.

    A subclass declares ``asks`` (``"generate"``, ``"loglikelihood"`` or ``"rolling"``, see
    ``mwork.tasks.runtime``), builds that query in ``ask`` and scores the model's answers in
    ``score_answers``; ``evaluate`` runs the three through the task runtime. It only calls the
    model's ``forward`` / ``generate``, so it measures the model under whatever hooks are
    active (e.g. inside ``mwork.deactivate``). Register a new task with
    ``mwork.tasks.registry.register_task``."""

    name: ClassVar[str]
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    hub_id: ClassVar[str]
    asks: ClassVar[str]
    default_max_new_tokens: ClassVar[int] = 0  # 0: not a generation task
    default_batch_size: ClassVar[int] = 8
    benchmark: ClassVar[bool] = True  # a data set of its own (False: any texts, as perplexity)

    @abstractmethod
    def load(self, lang: str, source: str | Path | None = None, *, limit: int | None = None, **kwargs: Any) -> list[Example]:
        """The evaluation examples of language ``lang``."""

    def load_shots(self, lang: str, source: str | Path | None = None, k: int = 4) -> list[Example]:
        """A pool of ``k`` few-shot examples. Default: the first ``k`` items of the evaluation
        data, so evaluate those with ``start=k`` (``evaluate`` refuses overlapping ids)."""
        return self.load(lang, source, limit=k)

    @abstractmethod
    def ask(self, tokenizer: Any, examples: Sequence[Example], lang: str, **options: Any) -> "Query":
        """What to ask the model about ``examples`` (a ``runtime`` query of the kind ``asks``);
        its ``info`` is recorded in the result."""

    def score_answers(self, examples: Sequence[Example], query: "Query", answers: Any, lang: str) -> TaskResult:
        """The result from the model's answers to ``query``. Default: ``self.score(examples,
        answers, lang)``, for generation tasks."""
        return self.score(examples, answers, lang)  # type: ignore[attr-defined]

    def evaluate(self, model: Any, tokenizer: Any, examples: Sequence[Example], lang: str, *,
                 batch_size: int | None = None, progress: bool = True, **options: Any) -> TaskResult:
        """Score ``model`` on ``examples`` (``options`` go to ``ask``; ``batch_size`` defaults to
        ``default_batch_size``): a ``TaskResult`` with ``score``, ``n`` and per-example ``records``."""
        size = self.default_batch_size if batch_size is None else batch_size
        return run_task(self, model, tokenizer, examples, lang, batch_size=size, progress=progress, **options)

    def examples_digest(self, examples: Sequence[Example]) -> str:
        """sha256 of the examples' content (ids, fields, targets): what a cached score was computed from."""
        return digest([e.to_dict() for e in examples])

    def languages(self) -> list[str]:
        """Languages with a built-in prompt."""
        return prompt_languages(self.name)

    # helpers for subclasses ------------------------------------------------------------------
    def _shots(self, lang: str, examples: Sequence[Example], few_shot: int, shots: Sequence[Example] | None,
               prompt: dict[str, Any]) -> list[Example]:
        """The few-shot examples: ``shots`` if given, else those in the prompt file; never an
        evaluation example."""
        if few_shot < 0:
            raise ValueError(f"few_shot must be >= 0, got {few_shot}")
        if few_shot == 0:
            return []
        if shots is None:
            shots = [
                Example(id=f"prompt-shot-{i}", lang=lang, fields=s.get("fields", {}), target=s.get("target"))
                for i, s in enumerate(prompt.get("shots", []))
            ]
            if not shots:
                raise ValueError(
                    f"{self.name} has no built-in few-shot examples for {lang!r}: pass "
                    f"shots=get_task({self.name!r}).load_shots({lang!r}, source, k={few_shot})"
                )
        if len(shots) < few_shot:
            raise ValueError(f"few_shot={few_shot} but only {len(shots)} few-shot examples are available")
        chosen = list(shots[:few_shot])
        overlap = {s.id for s in chosen} & {e.id for e in examples}
        if overlap:
            raise ValueError(
                f"few-shot examples are also evaluation examples ({', '.join(sorted(overlap)[:5])}): "
                f"load the evaluation set past them (e.g. start={few_shot})"
            )
        return chosen

    def _result(self, lang: str, scores: Sequence[float], records: list[dict[str, Any]], **extra: Any) -> TaskResult:
        return TaskResult.from_scores(self.name, lang, self.metric, self.higher_is_better, scores, records, **extra)


def check_examples(task: str, examples: Sequence[Example]) -> None:
    if not examples:
        raise ValueError(f"no {task} examples to evaluate: check the language, source and limit")


# ---- running a query and a task (the task runtime's, :mod:`mwork.tasks.runtime`) ------------------


def answer(model: Any, tokenizer: Any, query: Query, *, batch_size: int = 8, progress: bool = True,
           desc: str | None = None) -> Any:
    """The model's answers to ``query`` (see each query type for their form)."""
    if isinstance(query, Generate):
        from mwork.tasks.generation import generate

        return generate(model, tokenizer, query.prompts, max_new_tokens=query.max_new_tokens, stop=query.stop,
                        batch_size=batch_size, progress=progress, desc=desc or "generating")
    if isinstance(query, Loglikelihood):
        from mwork.tasks.generation import loglikelihood

        return loglikelihood(model, tokenizer, query.pairs, batch_size=batch_size, progress=progress,
                             desc=desc or "scoring")
    if isinstance(query, Rolling):
        from mwork.tasks.perplexity import perplexity

        return perplexity(model, tokenizer, query.texts, batch_size=batch_size, max_length=query.max_length,
                          stride=query.stride, per_text=True, progress=progress)
    raise TypeError(f"not a task query: {type(query).__name__} (use Generate, Loglikelihood or Rolling)")


def run_task(task: Task, model: Any, tokenizer: Any, examples: Sequence[Example], lang: str, *,
             batch_size: int = 8, progress: bool = True, **options: Any) -> TaskResult:
    """Evaluate ``task`` on ``examples``: its query (``task.ask``, with ``options``), the model's
    answers, its scoring (``task.score_answers``); the query's ``info`` is recorded in the result."""
    check_examples(task.name, examples)
    query = task.ask(tokenizer, examples, lang, **options)
    if query.kind != task.asks:
        raise TypeError(f"task {task.name!r} declares it asks {task.asks!r} but built a {query.kind!r} query")
    answers = answer(model, tokenizer, query, batch_size=batch_size, progress=progress, desc=f"{task.name} {lang}")
    return task.score_answers(examples, query, answers, lang).with_extra(**query.info)


class ScoringOption:
    """A task scored either by the published rules or by mwork's normalisation
    (``mwork.tasks.metrics``: ``scoring="official"``, the default, or ``"mwork"``). ``ask`` records
    the choice in its query's ``info`` (so the result says how it was scored) and ``score`` uses it.
    Mixed in before ``Task``; its ``ask`` generates greedily from the task's prompts."""

    def ask(self, tokenizer: Any, examples: Sequence[Example], lang: str, *, max_new_tokens: int | None = None,
            few_shot: int = 0, shots: Sequence[Example] | None = None, prompts: Any = None,
            scoring: str | None = None) -> "Query":
        """Greedy answers to the task's prompts, until its stop string."""
        from mwork.tasks.metrics import DEFAULT_SCORING, check_scoring
        from mwork.tasks.queries import Generate

        scoring = scoring or DEFAULT_SCORING
        check_scoring(scoring)
        texts, prompt = self.build_prompts(examples, lang, few_shot=few_shot, shots=shots,  # type: ignore[attr-defined]
                                           prompts=prompts)
        return Generate(texts, max_new_tokens or self.default_max_new_tokens, prompt["stop"],  # type: ignore[attr-defined]
                        info={"few_shot": few_shot, "prompt_example": texts[0], "scoring": scoring})

    def score_answers(self, examples: Sequence[Example], query: "Query", answers: Any, lang: str) -> TaskResult:
        from mwork.tasks.metrics import DEFAULT_SCORING

        return self.score(examples, answers, lang, scoring=query.info.get("scoring", DEFAULT_SCORING))  # type: ignore[attr-defined]

    def examples_digest(self, examples: Sequence[Example]) -> str:
        """The examples' digest and the default scoring: a score cached under another default
        (before official scoring was the default) is not reused."""
        from mwork.tasks.metrics import DEFAULT_SCORING

        return digest({"examples": super().examples_digest(examples), "default_scoring": DEFAULT_SCORING})  # type: ignore[misc]
