"""Enhancement (paper §5): fine-tune only a language's specific neurons, and the baselines.

``enhance`` trains, for the neurons of a NeuronSet, only the parameters that belong to them
(see :mod:`mwork.neurons.delta`): small delta tensors added through forward hooks, so the
base weights are never touched and AdamW keeps state only for those slices. The result is a
folder with ``delta.safetensors`` + ``delta.json`` that ``mwork.load_model(..., delta=DIR)``
merges into a freshly loaded model.

Baselines under the same data, steps and schedule: random neurons of the same count
(``NeuronSet.random_like``), LoRA (peft) with a comparable trainable-parameter count, and full
fine-tuning; :func:`compare` runs them and writes a table.

The jobs (``Config(...).run(model=None, tokenizer=None)``, then ``result.write(out)``):
:class:`EnhanceConfig` (``mwork enhance``), :class:`ApplyDeltaConfig` (``mwork enhance apply``)
and :class:`~mwork.experiments.compare.EnhanceCompareConfig` (``mwork enhance compare``).

This module is the public face; the work lives by job in
:mod:`~mwork.experiments.training` (settings and the loop every method shares, with its rules),
:mod:`~mwork.experiments.training_methods` (the methods, a registry: a new one is one entry),
:mod:`~mwork.experiments.checkpoints` (resumable state without pickle) and
:mod:`~mwork.experiments.compare` (the comparison and its tables).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from mwork.config import option
from mwork.experiments.checkpoints import CHECKPOINT_FILE, read_checkpoint
from mwork.experiments.compare import CompareConfig, EnhanceCompareConfig, compare
from mwork.experiments.training import (SCHEDULES, EnhanceSettings, TrainingRun, TrainResult, check_out, prepare_out,
                                        train, training_run)
from mwork.experiments.training_methods import (BUILTIN_METHODS, FullMethod, LoraMethod, Method, NeuronsMethod, get_method,
                                       lora_for_budget, method_names, register_training_method)
from mwork.jobs import Job, ModelOptions
from mwork.models.adapters import get_adapter, model_name
from mwork.neurons.delta import DELTA_FILE
from mwork.neurons.neuronset import NeuronSet, as_neuron_set
from mwork.texts import TextSource, is_empty, read_texts

METHODS = BUILTIN_METHODS  # ("neurons", "random", "lora", "full"); method_names() adds registered ones

__all__ = ["CHECKPOINT_FILE", "METHODS", "SCHEDULES", "ApplyDeltaConfig", "CompareConfig", "EnhanceCompareConfig",
           "EnhanceConfig", "EnhanceSettings", "Method", "TrainResult", "TrainingRun", "compare", "enhance",
           "finetune_full", "finetune_lora", "get_method", "lora_for_budget", "method_names", "read_checkpoint",
           "register_training_method", "run_method"]


def _model_id(model: nn.Module, model_id: str | None) -> str | None:
    return model_id or getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None) or None


def run_method(method: Method, tokenizer: Any, texts: Sequence[str], out: str | Path | None = None, *,
               settings: EnhanceSettings | None = None, **options: Any) -> TrainResult:
    """Train any :class:`Method` (built in or registered) on ``texts`` and keep what it saves in
    ``out``. ``settings`` (an :class:`EnhanceSettings` or a :class:`TrainingRun`) and/or keyword
    ``options``: the settings' fields and the run's (``resume``, ``stop_after``,
    ``checkpoint_every``, ``progress``, ``model_id``, ``meta``). A ``resumable`` method writes
    ``out/checkpoint.safetensors`` every ``checkpoint_every`` steps and at the end;
    ``resume=True`` continues from it to the identical result; ``stop_after``: stop after this
    many steps in this call."""
    run = training_run(settings, options)
    out_dir = prepare_out(out, run.resume, method.result_file)
    run_meta = {"model_id": _model_id(method.model, run.model_id), "fingerprint": get_adapter(method.model).fingerprint(),
                **method.facts(), **(run.meta or {})}
    meta = train(method, tokenizer, texts, run, out_dir, run_meta)
    if out_dir is None:
        return method.result(meta, out_dir)
    method.save(out_dir, meta)
    result = method.result(meta, out_dir)
    kept = (*method.outputs, *((CHECKPOINT_FILE,) if method.resumable else ()))
    result.files = {name: out_dir / name for name in kept if (out_dir / name).exists()}
    return result


def enhance(model: nn.Module, tokenizer: Any, neurons: NeuronSet | str | Path, texts: Sequence[str],
            out: str | Path | None = None, *, settings: EnhanceSettings | None = None, **options: Any) -> TrainResult:
    """Fine-tune only the parameters that belong to ``neurons`` on ``texts``.

    Settings come from ``settings`` and/or keyword ``options`` (``lr=1e-4, max_steps=20`` ...;
    see :class:`EnhanceSettings` for the paper's defaults, :class:`TrainingRun` for the run's
    own). The model's own weights are never changed: the trained deltas are in ``result.delta``
    (attach them with ``result.delta.attach(model)`` or merge them into a fresh model with
    ``apply_delta``).

    With ``out``: writes ``out/delta.safetensors`` + ``out/delta.json`` and a checkpoint
    (``out/checkpoint.safetensors``, every ``checkpoint_every`` steps and at the end);
    ``resume=True`` continues from it to the identical result. ``stop_after``: stop after this
    many steps in this call (the run can be resumed later). ``meta``: extra facts recorded in
    ``delta.json``."""
    run = training_run(settings, options)
    ns = as_neuron_set(neurons, model)
    method = NeuronsMethod(model, ns, source=neurons if not isinstance(neurons, NeuronSet) else None)
    return run_method(method, tokenizer, texts, out, settings=run)


def finetune_lora(model: nn.Module, tokenizer: Any, texts: Sequence[str], target_modules: list[str], rank: int,
                  alpha: float | None = None, out: str | Path | None = None, *,
                  settings: EnhanceSettings | None = None, **options: Any) -> TrainResult:
    """Baseline: LoRA (peft) on ``target_modules`` with rank ``rank`` (alpha default 2 x rank),
    same training loop (``settings`` / ``options`` as for :func:`run_method`). Wraps ``model``
    in place (peft injects its layers): pass a fresh copy. ``result.model`` is the peft model;
    ``out`` gets the adapter (``save_pretrained``) and ``train.json``."""
    run = training_run(settings, options)
    out_dir = prepare_out(out, False, LoraMethod.result_file)
    method = LoraMethod(model, rank, alpha, target_modules, run.seed)
    return run_method(method, tokenizer, texts, out_dir, settings=run)


def finetune_full(model: nn.Module, tokenizer: Any, texts: Sequence[str], out: str | Path | None = None, *,
                  settings: EnhanceSettings | None = None, **options: Any) -> TrainResult:
    """Baseline: full fine-tuning, same training loop. Trains ``model``'s own weights (that is
    the point of this baseline): pass a fresh copy. ``out`` gets ``train.json`` only."""
    return run_method(FullMethod(model), tokenizer, texts, out, settings=settings, **options)


@dataclass(frozen=True, kw_only=True)
class EnhanceConfig(ModelOptions, TrainingRun, Job):
    """``mwork enhance``: train only the neurons of a NeuronSet on some texts, writing the delta
    (and its checkpoint) into ``out`` as it goes. ``texts``: a spec (FILE, ``FILE[A:B]``,
    ``xquad:LANG``: articles 0-23 unless ``articles``) or a list of documents."""

    command = "enhance"
    summary = "fine-tune only a language's neurons (writes DIR/delta.safetensors + delta.json)"

    neurons: NeuronSet | str | Path | None = option(None, "NeuronSet file (.safetensors) whose neurons are trained",
                                                    parse=str)
    texts: str | TextSource | Sequence[str] | None = option(
        None, "training documents: FILE or xquad:LANG (articles 0-23); FILE[A:B] slices", parse=str)
    articles: str | None = option(None, "XQuAD articles for --texts, e.g. 0:24", metavar="START:STOP")
    out: str | None = option(None, "output folder", metavar="DIR", record=False)
    random_like: int | None = option(None, "train random neurons instead, same count per layer and kind (a "
                                     "baseline)", metavar="SEED")

    def check(self) -> None:
        self.check_model_options()
        missing = [name for name in ("neurons", "texts") if getattr(self, name) is None]
        if missing:
            raise ValueError(f"enhance needs {' and '.join(missing)} (--{' and --'.join(missing)})")
        if self.out is not None:
            check_out(self.out, self.resume, DELTA_FILE)
        self.documents  # read and checked once, before the model loads

    @cached_property
    def documents(self) -> list[str]:
        """The training documents: a spec read (with its own checks), a list as given."""
        if not _is_spec(self.texts):
            if self.articles is not None:
                raise ValueError("articles choose XQuAD articles of a text spec (texts=xquad:LANG); texts is a list")
            return self.texts  # type: ignore[return-value]  # train() checks it
        texts = read_texts(self.texts, articles=self.articles)
        if not texts:
            raise ValueError(f"--texts {self.texts} gives no documents")
        if all(is_empty(t) for t in texts):
            raise ValueError(f"--texts {self.texts} has no non-empty document: nothing to train on")
        return texts

    def compute(self, model: Any, tokenizer: Any) -> TrainResult:
        neurons: NeuronSet | str | Path = self.neurons  # type: ignore[assignment]
        facts: dict[str, Any] = {}
        if _is_spec(self.texts):
            facts.update(texts=str(self.texts), articles=self.articles)
        if self.random_like is not None:
            chosen = as_neuron_set(neurons, model)
            neurons = chosen.random_like(self.random_like, exclude=chosen)
            source = None if isinstance(self.neurons, NeuronSet) else str(self.neurons)
            facts["random_like"] = {"of": source, "seed": self.random_like}
        meta = {**(self.meta or {}), **facts} or None
        return enhance(model, tokenizer, neurons, self.documents, self.out, settings=self,
                       model_id=self.model_id or model_name(model), meta=meta)


def _is_spec(texts: Any) -> bool:
    return isinstance(texts, (str, Path, TextSource))


@dataclass
class MergedModel:
    """A model with a trained delta merged into its weights; ``write(out)`` saves it (weights and
    tokenizer) into a new (or empty) folder."""

    model: nn.Module
    tokenizer: Any
    config: "ApplyDeltaConfig"

    def write(self, out: str | Path) -> dict[str, Path]:
        folder = Path(out)
        _check_new_folder(folder)
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        return {p.name: p for p in sorted(folder.iterdir())}


def _check_new_folder(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} is not empty; choose a new folder for the merged model")


@dataclass(frozen=True, kw_only=True)
class ApplyDeltaConfig(ModelOptions, Job):
    """``mwork enhance apply``: merge a delta (a folder written by ``mwork enhance``) into the
    base model, on the CPU unless ``device`` says otherwise, and save the full model."""

    command = "apply"
    summary = "merge a delta into the base model and save the full model"

    device: str | None = option(None, "cpu, cuda, ... (default: cpu)", record=False)
    delta: str = option(help="folder written by `mwork enhance`", required=True, metavar="DIR")
    out: str = option(help="new folder for the merged model (save_pretrained + tokenizer)", required=True,
                      metavar="DIR", record=False)

    def load(self) -> tuple[Any, Any]:
        from mwork.models.loading import load_model, parse_device_map

        self.check_model_options()
        device = self.device if self.device is not None or self.device_map is not None else "cpu"
        return load_model(self.model, dtype=self.dtype, device=device, device_map=parse_device_map(self.device_map))

    def compute(self, model: Any, tokenizer: Any) -> MergedModel:
        """Merges the delta into ``model`` itself (a freshly loaded model, as ``apply_delta`` wants)."""
        from mwork.neurons.delta import apply_delta

        apply_delta(model, self.delta)
        return MergedModel(model, tokenizer, self)
