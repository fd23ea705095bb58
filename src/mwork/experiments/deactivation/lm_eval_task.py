"""lm-evaluation-harness tasks in the deactivation grid: ``--task lm-eval:TEMPLATE``.

``TEMPLATE`` names each language's lm-eval task: ``{lang}`` is replaced by the grid's language
code and ``{flores}`` by its FLORES-200 code (``FLORES``); when the ``{lang}`` name is not a task
lm-eval knows, the FLORES-200 code is tried, so ``lm-eval:belebele_{lang}`` with ``en,zh`` runs
``belebele_eng_Latn`` and ``belebele_zho_Hans``. The grid calls the evaluator once per cell (its
hooks active): lm-eval's ``simple_evaluate`` on the grid's model through mwork's backend, the
score being one metric of the task (``metric``, default the task's first, e.g. ``acc,none``).

Every cell is fingerprinted by content (``inputs_digest``): the task's configuration, the digest
of its evaluation documents, the limit, few-shot count, metric and lm-eval's version. The
documents are read once, up front, and checked again at every evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from mwork.config import digest

PREFIX = "lm-eval:"
FLORES: dict[str, str] = {
    "en": "eng_Latn", "zh": "zho_Hans", "fr": "fra_Latn", "de": "deu_Latn", "es": "spa_Latn", "ru": "rus_Cyrl",
    "ja": "jpn_Jpan", "th": "tha_Thai", "ar": "arb_Arab", "vi": "vie_Latn", "hi": "hin_Deva", "bn": "ben_Beng",
    "sw": "swh_Latn", "te": "tel_Telu", "ko": "kor_Hang", "it": "ita_Latn", "pt": "por_Latn", "tr": "tur_Latn",
    "el": "ell_Grek", "ro": "ron_Latn", "id": "ind_Latn", "nl": "nld_Latn", "pl": "pol_Latn", "uk": "ukr_Cyrl",
    "fa": "pes_Arab", "ur": "urd_Arab", "cs": "ces_Latn", "hu": "hun_Latn", "sv": "swe_Latn", "fi": "fin_Latn",
    "da": "dan_Latn", "he": "heb_Hebr", "ta": "tam_Taml", "mr": "mar_Deva", "gu": "guj_Gujr", "ml": "mal_Mlym",
}


def is_lm_eval_task(task: str) -> bool:
    return task.startswith(PREFIX)


def template_of(task: str) -> str:
    """The name template of ``lm-eval:TEMPLATE``; a ValueError when it names no language."""
    template = task[len(PREFIX):]
    if "{lang}" not in template and "{flores}" not in template:
        raise ValueError(f"--task {task}: the lm-eval task name needs a {{lang}} (or {{flores}}) placeholder, "
                         "e.g. lm-eval:belebele_{lang}")
    try:
        template.format(lang="en", flores="eng_Latn")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"--task {task}: only {{lang}} and {{flores}} may appear in braces ({err})") from None
    return template


def task_names(template: str, langs: Sequence[str], known: set[str]) -> dict[str, str]:
    """Each language's lm-eval task (module docstring); a ValueError naming what was tried."""
    names = {}
    for lang in langs:
        flores = FLORES.get(lang)
        tried = []
        if "{flores}" not in template or flores:
            tried.append(template.format(lang=lang, flores=flores))
        if flores and "{lang}" in template:
            tried.append(template.replace("{lang}", flores).format(flores=flores))
        hit = next((t for t in tried if t in known), None)
        if hit is None:
            raise ValueError(f"lm-eval knows no task for {lang!r} (tried {', '.join(tried) or 'nothing: no FLORES code'}); "
                             "check the template, or pass the folder of local tasks with --include-path")
        names[lang] = hit
    return names


def _docs_digest(task: Any, limit: int | float | None) -> str:
    docs = list(task.eval_docs)
    if limit is not None:
        docs = docs[:int(limit if limit >= 1 else limit * len(docs))]
    return digest([dict(d) if isinstance(d, Mapping) else d for d in docs])


@dataclass(eq=False)
class LmEvalEvaluator:
    """``evaluator(lang)``: lm-eval's score of ``names[lang]`` on the model under whatever hooks are
    active; ``inputs_digest(lang)``: what that score is computed from besides the model."""

    lm: Any
    names: Mapping[str, str]
    manager: Any
    limit: int | float | None = None
    num_fewshot: int | None = None
    metric: str | None = None
    _inputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import lm_eval

        for lang, name in self.names.items():
            task = self._load(name)
            self._inputs[lang] = {"task": name, "config": task.dump_config() if hasattr(task, "dump_config") else None,
                                  "docs": _docs_digest(task, self.limit), "limit": self.limit,
                                  "num_fewshot": self.num_fewshot, "metric": self.metric,
                                  "lm_eval": lm_eval.__version__}

    def _load(self, name: str) -> Any:
        loaded = self.manager.load([name])["tasks"]
        if name not in loaded:
            raise ValueError(f"lm-eval task {name!r} is a group of {len(loaded)} tasks: name one task per language")
        return loaded[name]

    def inputs_digest(self, lang: str) -> str:
        return digest(self._inputs[lang])

    def __call__(self, lang: str) -> dict[str, Any]:
        name = self.names[lang]
        task = self._load(name)
        if _docs_digest(task, self.limit) != self._inputs[lang]["docs"]:
            raise ValueError(f"the documents of lm-eval task {name} changed during the experiment: rerun it")
        res = _evaluate(self.lm, self.manager, task, self.limit, self.num_fewshot)
        values = res["results"][name]
        keys = [k for k in values if "," in k and "_stderr" not in k]
        key = self.metric if self.metric is not None else keys[0]
        if key not in values:
            raise ValueError(f"lm-eval task {name} has no metric {key!r}; it has {', '.join(keys)}")
        higher = res["higher_is_better"][name].get(key.split(",")[0], True)
        n = res.get("n-samples", {}).get(name, {}).get("effective")
        return {"score": float(values[key]), "n": n, "metric": key, "higher_is_better": bool(higher), "task": name}


def _evaluate(lm: Any, manager: Any, task: Any, limit: int | float | None, num_fewshot: int | None) -> dict[str, Any]:
    """lm-eval's ``evaluate`` on one task, set up as ``simple_evaluate`` sets it up (its default
    seeds, the few-shot count, the few-shot seed) without what ``simple_evaluate`` adds to the
    results (environment information, which takes seconds per call: the grid calls it per cell)."""
    import random

    import numpy as np
    import torch
    from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED
    from lm_eval.evaluator import evaluate

    random.seed(DEFAULT_RANDOM_SEED)
    np.random.seed(DEFAULT_OTHER_SEED)
    torch.manual_seed(DEFAULT_OTHER_SEED)
    if num_fewshot is not None and task.get_config("num_fewshot") != 0:
        task.set_config(key="num_fewshot", value=num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
    return evaluate(lm=lm, task_dict=manager.load([task]), limit=limit, bootstrap_iters=0, log_samples=False)


@dataclass(frozen=True)
class LmEvalOptions:
    """Which lm-eval tasks and how they are scored: ``include_path`` (a folder of local task
    definitions), ``limit`` (documents per task: a count, or a fraction below 1), ``num_fewshot``
    (None: the task's own), ``metric`` (None: the task's first, e.g. ``acc,none``)."""

    include_path: str | None = None
    limit: int | float | None = None
    num_fewshot: int | None = None
    metric: str | None = None


def lm_eval_evaluator(model: Any, tokenizer: Any, task: str, langs: Sequence[str],
                      options: LmEvalOptions = LmEvalOptions(), *,
                      batch_size: int = 8) -> tuple[LmEvalEvaluator, dict[str, str]]:
    """The grid's evaluator for ``lm-eval:TEMPLATE`` and each language's lm-eval task name."""
    from mwork.tasks.lm_eval_backend import MworkLM
    from mwork.tasks.lm_eval_run import task_manager

    template = template_of(task)

    def resolves(manager: Any) -> bool:
        try:
            task_names(template, langs, set(manager.all_tasks))
        except ValueError:
            return False
        return True

    manager = task_manager(options.include_path, resolves)
    names = task_names(template, langs, set(manager.all_tasks))
    lm = MworkLM(model, tokenizer=tokenizer, batch_size=batch_size)
    return LmEvalEvaluator(lm, names, manager, options.limit, options.num_fewshot, options.metric), names
