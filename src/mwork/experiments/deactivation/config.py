"""``DeactivationConfig``: the settings of one deactivation grid, at once the Python arguments of
``run_deactivation``, the options of ``mwork experiment deactivation`` and the recorded
metadata (``mwork.config``). Bad values are refused here, before a model is loaded;
``DeactivationConfig(...).run()`` is the grid, written under ``out`` as its cells finish."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

from mwork.config import option
from mwork.experiments.deactivation.plan import check_languages
from mwork.files import parse_names
from mwork.jobs import Job, ModelOptions, OutputOptions, WrittenResult
from mwork.lens.regions import check_region_options
from mwork.models.loading import parse_device_map


def _langs(text: str) -> tuple[str, ...]:
    """Comma-separated languages, kept as given: repeats are refused by the config, not dropped."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


@dataclass(frozen=True, kw_only=True)
class DeactivationConfig(ModelOptions, OutputOptions, Job):
    """One grid: which model, sets, task and languages; the layer regions; the random seeds."""

    command = "deactivation"
    summary = "switch off language-specific vs random neurons by layer region"

    neurons: str = option(help="folder with <lang>.safetensors language-specific sets (mwork specific)",
                          required=True)
    task: str = option("ppl", "ppl, mgsm, xquad, xcsqa, xlsum, or lm-eval:TEMPLATE, any lm-evaluation-harness task "
                       "per language, e.g. lm-eval:belebele_{lang} ({lang}: the language, or its FLORES-200 code)")
    langs: tuple[str, ...] = option(help="comma-separated, must include English, e.g. en,zh,fr", parse=_langs,
                                    required=True)
    out: str = option(help="output folder (finished cells are kept there and not recomputed)", required=True,
                      record=False)
    english: str = option("en", "the English language code among --langs")
    understanding: int | None = option(None, "U: number of first layers (understanding)")
    generation: int | None = option(None, "G: number of last layers (generation)")
    lens: str | None = option(None, "a `mwork lens` output folder to estimate U and G from")
    seeds: tuple[int, ...] = option((0, 1, 2), "random-baseline seeds")
    limit: int | None = option(None, "texts / examples per language")
    texts_dir: str | None = option(None, "ppl: folder with <lang>.txt held-out texts (default: XQuAD 24-47 or "
                                   "built-in)")
    source: str | None = option(None, "task data: local file/folder or 'hub'")
    max_length: int = option(256, "ppl: tokens per window")
    batch_size: int = option(8, "texts or prompts per batch")
    matrix: bool = option(False, "also evaluate every language with every language's neurons off (matrix.csv)")
    include_path: str | None = option(None, "lm-eval tasks: a folder of extra task YAMLs (e.g. from mwork eval "
                                      "--make-local-tasks)")
    lm_eval_metric: str | None = option(None, "lm-eval tasks: the metric scored, as lm-eval names it, e.g. acc,none "
                                        "(default: the task's first)")
    num_fewshot: int | None = option(None, "lm-eval tasks: few-shot examples (default: each task's own)")

    def __post_init__(self) -> None:
        from mwork.tasks.registry import get_task

        langs = parse_names(self.langs, flag="--langs")  # each names files (<lang>.safetensors, <lang>.txt)
        object.__setattr__(self, "langs", langs)
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        check_languages(langs, self.english)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must name at least one seed, each once; got {list(self.seeds)}")
        check_region_options(self.lens, self.understanding, self.generation)
        for flag, folder in (("--neurons", self.neurons), ("--texts-dir", self.texts_dir)):
            if folder is not None and Path(folder).is_file():
                raise ValueError(f"{flag} {folder} is a file; give the folder of <lang>"
                                 f"{'.safetensors sets' if flag == '--neurons' else '.txt texts'}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_length < 2:
            raise ValueError(f"--max-length must be at least 2, got {self.max_length}")
        from mwork.experiments.deactivation.lm_eval_task import is_lm_eval_task, template_of

        if is_lm_eval_task(self.task):
            template_of(self.task)  # a template without a language fails here
            if self.include_path is not None and not Path(self.include_path).is_dir():
                raise FileNotFoundError(f"--include-path {self.include_path} is not a folder of lm-eval task YAMLs")
        else:
            if self.include_path or self.lm_eval_metric or self.num_fewshot is not None:
                raise ValueError("--include-path, --lm-eval-metric and --num-fewshot apply to lm-eval:TEMPLATE tasks only")
            get_task(self.task)  # an unknown task fails here, listing the known ones
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise ValueError(f"--num-fewshot must be >= 0, got {self.num_fewshot}")
        ppl = not is_lm_eval_task(self.task) and get_task(self.task).name == "ppl"
        if self.texts_dir is not None and not ppl:
            raise ValueError(f"--texts-dir holds the texts of --task ppl; --task {self.task} does not read it")
        if self.source is not None and (ppl or is_lm_eval_task(self.task)):
            raise ValueError(f"--source is the data of --task mgsm, xquad, xcsqa or xlsum; --task {self.task} does "
                             "not read it" + (" (its texts come from --texts-dir)" if ppl else ""))
        parse_device_map(self.device_map)

    def context(self) -> ContextManager[Any]:
        """Under torchrun the ranks share the grid's cells (identical results)."""
        from mwork import distributed

        return distributed.group()

    def compute(self, model: Any, tokenizer: Any) -> WrittenResult:
        """The grid (``run_deactivation``); finished cells are kept under ``out`` and reused."""
        import mwork.experiments.deactivation.schema as schema
        from mwork.experiments.deactivation.runner import run_deactivation

        data = run_deactivation(self, model=model, tokenizer=tokenizer)
        folder = Path(self.out)
        names = (schema.GRID.name, schema.TABLE_MD, schema.HEADLINE.name, schema.MATRIX.name, schema.RESULTS.name,
                 schema.PLOT)
        return WrittenResult(folder, {n: folder / n for n in names if (folder / n).exists()}, data,
                             extra={"out": self.out})

    def evaluator(self, model: Any, tokenizer: Any) -> tuple[Any, dict[str, str] | None]:
        """The evaluation of every language (an ``mwork.tasks.runtime.Evaluator``; for
        ``lm-eval:TEMPLATE`` an ``lm_eval_task.LmEvalEvaluator``) and, for perplexity, where each
        language's texts came from (for lm-eval tasks, each language's task name)."""
        from mwork.experiments.deactivation.lm_eval_task import LmEvalOptions, is_lm_eval_task, lm_eval_evaluator
        from mwork.tasks.registry import get_task

        if is_lm_eval_task(self.task):
            options = LmEvalOptions(include_path=self.include_path, limit=self.limit, num_fewshot=self.num_fewshot,
                                    metric=self.lm_eval_metric)
            return lm_eval_evaluator(model, tokenizer, self.task, self.langs, options, batch_size=self.batch_size)
        from mwork.tasks.runtime import perplexity_evaluator, task_evaluator
        from mwork.texts import heldout_texts

        if get_task(self.task).name == "ppl":
            texts, sources = {}, {}
            for lang in self.langs:
                texts[lang], sources[lang] = heldout_texts(lang, self.texts_dir, self.limit)
            return perplexity_evaluator(model, tokenizer, texts, self.batch_size, self.max_length), sources
        return task_evaluator(model, tokenizer, self.task, self.langs, self.source, self.limit,
                              batch_size=self.batch_size), None
