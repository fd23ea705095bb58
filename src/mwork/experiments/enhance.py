"""Enhancement (paper §5): fine-tune only a language's specific neurons, and the baselines.

``enhance`` trains, for the neurons of a NeuronSet, only the parameters that belong to them
(see :mod:`mwork.neurons.delta`): small delta tensors added through forward hooks, so the
base weights are never touched and AdamW keeps state only for those slices. The result is a
folder with ``delta.safetensors`` + ``delta.json`` that ``mwork.load_model(..., delta=DIR)``
merges into a freshly loaded model.

Baselines under the same data, steps and schedule: random neurons of the same count
(``NeuronSet.random_like``), LoRA (peft) with a comparable trainable-parameter count, and full
fine-tuning; :func:`compare` runs them and writes a table.

This module is the public face; the work lives by job in
:mod:`~mwork.experiments.training` (settings and the loop every method shares, with its rules),
:mod:`~mwork.experiments.training_methods` (the methods, a registry: a new one is one entry),
:mod:`~mwork.experiments.checkpoints` (resumable state without pickle) and
:mod:`~mwork.experiments.compare` (the comparison and its tables).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import nn

from mwork.experiments.checkpoints import CHECKPOINT_FILE, read_checkpoint
from mwork.experiments.compare import CompareConfig, compare
from mwork.experiments.training_methods import (BUILTIN_METHODS, FullMethod, LoraMethod, Method, NeuronsMethod, get_method,
                                       lora_for_budget, method_names, register_training_method)
from mwork.experiments.training import SCHEDULES, EnhanceSettings, TrainResult, prepare_out, resolve_settings, train
from mwork.models.adapters import get_adapter
from mwork.neurons.neuronset import NeuronSet, as_neuron_set

METHODS = BUILTIN_METHODS  # ("neurons", "random", "lora", "full"); method_names() adds registered ones

__all__ = ["CHECKPOINT_FILE", "METHODS", "SCHEDULES", "CompareConfig", "EnhanceSettings", "Method", "TrainResult",
           "compare", "enhance", "finetune_full", "finetune_lora", "get_method", "lora_for_budget", "method_names",
           "read_checkpoint", "register_training_method", "run_method"]


def _model_id(model: nn.Module, model_id: str | None) -> str | None:
    return model_id or getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None) or None


def run_method(
    method: Method,
    tokenizer: Any,
    texts: Sequence[str],
    out: str | Path | None = None,
    *,
    settings: EnhanceSettings | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    checkpoint_every: int = 10,
    progress: bool = True,
    model_id: str | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train any :class:`Method` (built in or registered) on ``texts`` and keep what it saves in
    ``out``. Settings: ``settings`` and/or keyword overrides of :class:`EnhanceSettings`.
    A ``resumable`` method writes ``out/checkpoint.safetensors`` every ``checkpoint_every``
    steps and at the end; ``resume=True`` continues from it to the identical result;
    ``stop_after``: stop after this many steps in this call."""
    s = resolve_settings(settings, overrides)
    out_dir = prepare_out(out, resume, method.result_file)
    run_meta = {"model_id": _model_id(method.model, model_id), "fingerprint": get_adapter(method.model).fingerprint(),
                **method.facts()}
    meta = train(method, tokenizer, texts, s, out_dir, resume=resume, stop_after=stop_after, progress=progress,
                 run_meta=run_meta, checkpoint_every=checkpoint_every)
    if out_dir is not None:
        method.save(out_dir, meta)
    return method.result(meta, out_dir)


def enhance(
    model: nn.Module,
    tokenizer: Any,
    neurons: NeuronSet | str | Path,
    texts: Sequence[str],
    out: str | Path | None = None,
    *,
    settings: EnhanceSettings | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    checkpoint_every: int = 10,
    progress: bool = True,
    model_id: str | None = None,
    meta: dict[str, Any] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Fine-tune only the parameters that belong to ``neurons`` on ``texts``.

    Settings come from ``settings`` and/or keyword overrides (``lr=1e-4, max_steps=20`` ...;
    see :class:`EnhanceSettings` for the paper's defaults). The model's own weights are never
    changed: the trained deltas are in ``result.delta`` (attach them with
    ``result.delta.attach(model)`` or merge them into a fresh model with ``apply_delta``).

    With ``out``: writes ``out/delta.safetensors`` + ``out/delta.json`` and a checkpoint
    (``out/checkpoint.safetensors``, every ``checkpoint_every`` steps and at the end);
    ``resume=True`` continues from it to the identical result. ``stop_after``: stop after this
    many steps in this call (the run can be resumed later). ``meta``: extra facts recorded in
    ``delta.json``."""
    s = resolve_settings(settings, overrides)
    ns = as_neuron_set(neurons, model)
    method = NeuronsMethod(model, ns, source=neurons if not isinstance(neurons, NeuronSet) else None, extra=meta)
    return run_method(method, tokenizer, texts, out, settings=s, resume=resume, stop_after=stop_after,
                      checkpoint_every=checkpoint_every, progress=progress, model_id=model_id)


def finetune_lora(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    target_modules: list[str],
    rank: int,
    alpha: float | None = None,
    out: str | Path | None = None,
    *,
    settings: EnhanceSettings | None = None,
    progress: bool = True,
    model_id: str | None = None,
    **overrides: Any,
) -> TrainResult:
    """Baseline: LoRA (peft) on ``target_modules`` with rank ``rank`` (alpha default 2 x rank),
    same training loop. Wraps ``model`` in place (peft injects its layers): pass a fresh copy.
    ``result.model`` is the peft model; ``out`` gets the adapter (``save_pretrained``) and ``train.json``."""
    s = resolve_settings(settings, overrides)
    out_dir = prepare_out(out, False, LoraMethod.result_file)
    method = LoraMethod(model, rank, alpha, target_modules, s.seed)
    return run_method(method, tokenizer, texts, out_dir, settings=s, progress=progress, model_id=model_id)


def finetune_full(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    out: str | Path | None = None,
    *,
    settings: EnhanceSettings | None = None,
    progress: bool = True,
    model_id: str | None = None,
    **overrides: Any,
) -> TrainResult:
    """Baseline: full fine-tuning, same training loop. Trains ``model``'s own weights (that is
    the point of this baseline): pass a fresh copy. ``out`` gets ``train.json`` only."""
    return run_method(FullMethod(model), tokenizer, texts, out, settings=settings, progress=progress,
                      model_id=model_id, **overrides)
