"""Enhancement (paper §5): fine-tune only a language's specific neurons, and the baselines.

``enhance`` trains, for the neurons of a NeuronSet, only the parameters that belong to them
(see :mod:`mwork.experiments.delta`): small delta tensors added through forward hooks, so the
base weights are never touched and AdamW keeps state only for those slices. The result is a
folder with ``delta.safetensors`` + ``delta.json`` that ``mwork.load_model(..., delta=DIR)``
merges into a freshly loaded model.

Baselines under the same data, steps and schedule: random neurons of the same count
(``NeuronSet.random_like``), LoRA (peft) with a comparable trainable-parameter count, and full
fine-tuning; :func:`compare` runs them and writes a table.

Training rules (the same for every method):

* Each document is tokenized with the tokenizer's special tokens and truncated to
  ``max_length`` tokens; documents with fewer than two tokens cannot be trained on and are
  listed in the metadata (``skipped_docs``), not dropped silently.
* Each epoch visits the documents in a seeded random order, ``batch_size`` documents per batch,
  ``grad_accum`` batches per optimiser step. The loss of a step is the mean NLL over every
  real token of its batches (padding never counts); ``micro_batch_size`` splits batches for
  memory without changing that loss.
* AdamW, linear warm-up over ``ceil(warmup_ratio * steps)`` steps then a cosine (or linear /
  constant) schedule, gradients clipped to ``max_grad_norm`` -- as the paper's Trainer did.
* The model is in train mode (dropout as configured by the model) with the RNG seeded from
  ``seed``; a checkpoint (trainable tensors, optimiser, scheduler, step, RNG) resumes to the
  identical result.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from mwork.experiments.delta import DELTA_FILE, META_FILE, NeuronDelta
from mwork.hooks import Hooks
from mwork.models.adapters import get_adapter
from mwork.models.loading import input_device
from mwork.neurons.neuronset import NeuronSet, as_neuron_set

CHECKPOINT_FILE = "checkpoint.pt"
SCHEDULES = ("cosine", "linear", "constant")
_LOGIT_BUDGET = 1 << 26  # vocabulary x tokens decoded at once in the loss (256 MiB in float32)


@dataclass
class EnhanceSettings:
    """Training settings. Defaults are the paper's (§5, reference code): lr 2e-6, 1 epoch,
    batch 8 x gradient accumulation 4, warm-up 5 %, cosine schedule, gradient norm 0.3,
    length 512. At lr 2e-6 a small model barely moves in a few steps: raise ``lr`` for short
    runs (and say so when reporting). Warm-up follows transformers' schedulers: with any
    warm-up the first step has lr 0, so very short runs may want ``warmup_ratio=0``. For the
    neuron method ``weight_decay`` shrinks the delta, i.e. pulls towards the base weights."""

    lr: float = 2e-6
    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 4
    warmup_ratio: float = 0.05
    schedule: str = "cosine"
    max_grad_norm: float = 0.3
    max_length: int = 512
    weight_decay: float = 0.0
    seed: int = 0
    max_steps: int | None = None  # optimiser steps; overrides epochs (the data cycles as needed)
    max_docs: int | None = None  # use only the first N documents
    micro_batch_size: int | None = None  # documents per forward pass (memory only; default batch_size)

    def validate(self) -> "EnhanceSettings":
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "grad_accum": self.grad_accum}
        for name in ("max_steps", "max_docs", "micro_batch_size"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        bad = [f"{k}={v}" for k, v in positive.items() if int(v) < 1]
        if bad:
            raise ValueError(f"these settings must be at least 1: {', '.join(bad)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError("max_grad_norm must be positive (or None for no clipping)")
        return self


def _settings(settings: EnhanceSettings | None, overrides: dict[str, Any]) -> EnhanceSettings:
    names = {f.name for f in fields(EnhanceSettings)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {sorted(names)}")
    base = asdict(settings) if settings is not None else {}
    return EnhanceSettings(**{**base, **overrides}).validate()


# ---- data -----------------------------------------------------------------------------------


def texts_fingerprint(texts: Sequence[str]) -> str:
    """sha256 of the texts in order (each length-prefixed UTF-8), to tell data sets apart."""
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[list[list[int]], list[int]]:
    enc = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_length,
                    verbose=False)["input_ids"]
    docs, skipped = [], []
    for i, ids in enumerate(enc):
        (docs.append(list(ids)) if len(ids) >= 2 else skipped.append(i))
    return docs, skipped


@dataclass(frozen=True)
class _Plan:
    n_docs: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def _plan(n_docs: int, s: EnhanceSettings) -> _Plan:
    n_batches = math.ceil(n_docs / s.batch_size)
    per_epoch = math.ceil(n_batches / s.grad_accum)
    total = s.max_steps if s.max_steps is not None else s.epochs * per_epoch
    return _Plan(n_docs, per_epoch, total, math.ceil(s.warmup_ratio * total))


def _step_batches(step: int, plan: _Plan, s: EnhanceSettings) -> list[list[int]]:
    """Document indices of each forward pass of optimiser step ``step`` (deterministic)."""
    epoch, j = divmod(step, plan.steps_per_epoch)
    order = torch.randperm(plan.n_docs, generator=torch.Generator().manual_seed(s.seed + 1_000_003 * epoch)).tolist()
    batches = [order[i:i + s.batch_size] for i in range(0, len(order), s.batch_size)]
    micro = s.micro_batch_size or s.batch_size
    return [b[i:i + micro] for b in batches[j * s.grad_accum:(j + 1) * s.grad_accum] for i in range(0, len(b), micro)]


def _collate(docs: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(d) for d in docs)
    ids = torch.full((len(docs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(docs), length), dtype=torch.long)
    for r, d in enumerate(docs):
        ids[r, :len(d)] = torch.tensor(d)
        mask[r, :len(d)] = 1
    return ids.to(device), mask.to(device)


# ---- loss -----------------------------------------------------------------------------------


def _nll_sum(forward_model: nn.Module, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL over real tokens. Logits are decoded in checkpointed chunks, so a
    262k vocabulary never needs (tokens x vocab) memory at once."""
    adapter = get_adapter(model)
    captured: list[torch.Tensor] = []
    with Hooks().read(adapter.site("final_norm.in"), captured.append):
        forward_model(input_ids=ids, attention_mask=mask, logits_to_keep=1, use_cache=False,
                      **adapter.forward_kwargs(mask))
    keep = mask[:, 1:].bool()
    hidden = captured[-1][:, :-1][keep]
    targets = ids[:, 1:][keep]
    vocab = int(adapter.lm_head.weight.shape[0])
    chunk = max(1, _LOGIT_BUDGET // max(vocab, 1))

    def chunk_nll(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = adapter.decode(h)
        return F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits,
                               t, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float64 if hidden.dtype == torch.float64 else torch.float32)
    for s in range(0, len(targets), chunk):
        total = total + checkpoint(chunk_nll, hidden[s:s + chunk], targets[s:s + chunk], use_reentrant=False)
    return total


# ---- memory ---------------------------------------------------------------------------------


class _PeakMemory:
    """Peak memory during a block: CUDA allocated bytes, else the process RSS sampled every 10 ms
    (``extra`` is the peak above the level at the start)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "process_rss_sampled"
        self.peak = self.start = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> "_PeakMemory":
        if self.kind.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self.peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.kind.startswith("cuda"):
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())

    def report(self) -> dict[str, Any]:
        mb = 1 / 2**20
        return {"peak_memory_mb": round(self.peak * mb, 1), "peak_memory_extra_mb": round((self.peak - self.start) * mb, 1),
                "memory_measure": self.kind}


# ---- what is trained --------------------------------------------------------------------------


class _Trainable:
    """One method's trainable tensors and how to switch them on (base class: nothing frozen)."""

    method = "full"

    def __init__(self, model: nn.Module):
        self.model = model
        self.forward_model: nn.Module = model

    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Only ``parameters()`` require gradients inside; flags and train mode restored after."""
        flags = {p: p.requires_grad for p in self.model.parameters()}
        mode = self.forward_model.training
        mine = {id(p) for p in self.parameters()}
        try:
            for p in self.model.parameters():
                p.requires_grad_(id(p) in mine)
            self.forward_model.train()
            with self._hooks():
                yield
        finally:
            for p, f in flags.items():
                p.requires_grad_(f)
            self.forward_model.train(mode)

    def _hooks(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


class _DeltaTrainable(_Trainable):
    method = "neurons"

    def __init__(self, model: nn.Module, delta: NeuronDelta):
        super().__init__(model)
        self.delta = delta

    def parameters(self) -> list[nn.Parameter]:
        return self.delta.parameters()

    def state(self) -> dict[str, torch.Tensor]:
        return self.delta.state_dict()

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.delta.load_state_dict(state)

    def _hooks(self) -> contextlib.AbstractContextManager:
        return self.delta.attach(self.model)


class _LoraTrainable(_Trainable):
    method = "lora"

    def __init__(self, model: nn.Module, rank: int, alpha: float, target_modules: list[str], seed: int):
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as err:
            raise ImportError("the LoRA baseline needs peft: pip install peft") from err
        super().__init__(model)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=target_modules, bias="none",
                            fan_in_fan_out=get_adapter(model).weights_transposed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # LoRA's A matrices are random: seeded
            self.forward_model = get_peft_model(model, config)
        self.config = config

    def parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.forward_model.named_parameters() if "lora_" in n]

    def state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.forward_model.named_parameters() if "lora_" in n}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.forward_model.named_parameters())
        with torch.no_grad():
            for n, v in state.items():
                params[n].copy_(v)


# ---- the training loop ------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a training run produced: ``meta`` is the JSON record; ``delta`` (neuron methods)
    or ``model`` (the trained forward model: a peft model for LoRA, the model for full)."""

    meta: dict[str, Any]
    delta: NeuronDelta | None = None
    model: nn.Module | None = None
    out: Path | None = None

    @property
    def losses(self) -> list[float]:
        return self.meta["losses"]


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _train(
    trainable: _Trainable,
    tokenizer: Any,
    texts: Sequence[str],
    s: EnhanceSettings,
    out: Path | None,
    resume: bool,
    stop_after: int | None,
    progress: bool,
    run_meta: dict[str, Any],
    save_checkpoints: bool = True,
    checkpoint_every: int = 0,
) -> dict[str, Any]:
    """Train ``trainable`` (shared by every method); returns the run's metadata."""
    from transformers import get_scheduler

    model = trainable.model
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty list of strings (one document each)")
    texts = list(texts)
    if s.max_docs is not None:
        texts = texts[:s.max_docs]
    docs, skipped = _encode(tokenizer, texts, s.max_length)
    if not docs:
        raise ValueError("no document has two or more tokens: nothing to train on")
    plan = _plan(len(docs), s)
    device = input_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    params = trainable.parameters()
    n_trainable = sum(p.numel() for p in params)
    fingerprint = {
        "method": trainable.method, "settings": asdict(s), "data_sha256": texts_fingerprint(texts),
        "trainable": n_trainable, **{k: run_meta.get(k) for k in ("neurons_sha256", "lora")},
    }
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    scheduler = get_scheduler(s.schedule if s.schedule != "constant" else "constant_with_warmup", optimizer,
                              num_warmup_steps=plan.warmup_steps, num_training_steps=plan.total_steps)
    ckpt_path = out / CHECKPOINT_FILE if out is not None else None
    history: dict[str, Any] = {"losses": [], "lrs": [], "grad_norms": [], "tokens": []}
    step, wall, peak_prev = 0, 0.0, None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["fingerprint"] != fingerprint:
            diff = sorted(k for k in fingerprint if ckpt["fingerprint"].get(k) != fingerprint[k])
            raise ValueError(f"cannot resume from {ckpt_path}: the run differs in {diff}; "
                             f"use the same data and settings, or another output folder")
        trainable.load_state(ckpt["trainable"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step, wall, history, peak_prev = ckpt["step"], ckpt["wall_time_s"], ckpt["history"], ckpt.get("memory")
        rng = ckpt["rng"]
    elif resume and ckpt_path is None:
        raise ValueError("resume needs an output folder (out=...) that holds the checkpoint")
    else:
        rng = None
    end = plan.total_steps if stop_after is None else min(plan.total_steps, step + stop_after)

    def save_checkpoint(mem: dict[str, Any] | None, rng_now: dict[str, Any]) -> None:
        if ckpt_path is None or not save_checkpoints:
            return
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"fingerprint": fingerprint, "step": step, "trainable": trainable.state(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_now, "wall_time_s": wall, "history": history,
                    "memory": mem}, tmp)
        os.replace(tmp, ckpt_path)  # atomic: a killed run never leaves a broken checkpoint

    bar = tqdm(total=plan.total_steps, initial=step, desc=f"enhance[{trainable.method}]", unit="step",
               disable=not progress)
    devices = [device] if device.type == "cuda" else []
    memory = _PeakMemory(device)
    with torch.random.fork_rng(devices=devices), trainable.active(), memory:
        if rng is None:
            torch.manual_seed(s.seed)
        else:
            _set_rng_state(rng, device)
        started = time.perf_counter()
        try:
            while step < end:
                micro = _step_batches(step, plan, s)
                n_tokens = sum(len(docs[i]) - 1 for b in micro for i in b)
                loss_total = 0.0
                for b in micro:
                    ids, mask = _collate([docs[i] for i in b], pad_id, device)
                    loss = _nll_sum(trainable.forward_model, model, ids, mask) / n_tokens
                    loss.backward()
                    loss_total += float(loss.detach())
                if not math.isfinite(loss_total):
                    raise FloatingPointError(f"the loss is {loss_total} at step {step}: lower the learning rate, "
                                             f"or use float32 (float64 eager sliding-window attention with padding "
                                             f"gives NaN in transformers)")
                norm = (torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm) if s.max_grad_norm
                        else torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
                history["lrs"].append(scheduler.get_last_lr()[0])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                history["losses"].append(loss_total)
                history["grad_norms"].append(float(norm))
                history["tokens"].append(n_tokens)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_total:.4f}", lr=f"{history['lrs'][-1]:.2e}")
                if checkpoint_every and step % checkpoint_every == 0 and step < end:
                    wall += time.perf_counter() - started
                    started = time.perf_counter()
                    save_checkpoint(peak_prev, _rng_state(device))
        finally:
            bar.close()
        wall += time.perf_counter() - started
        rng_end = _rng_state(device)  # inside fork_rng: the training stream, not the caller's
    mem = memory.report()
    if peak_prev:  # a resumed run reports the larger peak of its parts
        mem = max(mem, peak_prev, key=lambda r: r["peak_memory_mb"])
    save_checkpoint(mem, rng_end)
    opt_elems = sum(v.numel() for st in optimizer.state.values() for k, v in st.items()
                    if torch.is_tensor(v) and k != "step")
    return {
        **run_meta,
        "method": trainable.method,
        "settings": asdict(s),
        "data": {"sha256": fingerprint["data_sha256"], "n_docs": len(texts), "n_trained_docs": len(docs),
                 "skipped_docs": skipped, "tokens_per_epoch": sum(len(d) - 1 for d in docs)},
        "steps": {"total": plan.total_steps, "done": step, "per_epoch": plan.steps_per_epoch,
                  "warmup": plan.warmup_steps},
        "finished": step >= plan.total_steps,
        "trainable_parameters": n_trainable,
        "optimizer_state_elements": opt_elems,
        "wall_time_s": round(wall, 3),
        **mem,
        **history,
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    import transformers

    import mwork

    return {"mwork": mwork.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _neuron_summary(ns: NeuronSet, path: str | Path | None) -> dict[str, Any]:
    h = hashlib.sha256()
    for k in sorted(ns.masks):
        h.update(k.encode())
        h.update(ns.masks[k].to(torch.uint8).numpy().tobytes())
    keep = {k: v for k, v in ns.meta.items() if k != "fingerprint" and isinstance(v, (str, int, float, bool))}
    return {"path": str(path) if path is not None else None, "count": ns.count(),
            "per_kind": {k: ns.count(k) for k in ns.kinds}, "fraction": ns.fraction(), "sha256": h.hexdigest(),
            "meta": keep}


def _model_id(model: nn.Module, model_id: str | None) -> str | None:
    return model_id or getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None) or None


def _prepare_out(out: str | Path | None, resume: bool, what: str) -> Path | None:
    if out is None:
        return None
    out = Path(out)
    if not resume and ((out / CHECKPOINT_FILE).exists() or (out / what).exists()):
        raise ValueError(f"{out} already holds a run; pass resume=True (--resume) to continue it, "
                         f"or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


# ---- public API -------------------------------------------------------------------------------


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
    (``out/checkpoint.pt``, every ``checkpoint_every`` steps and at the end); ``resume=True``
    continues from it to the identical result. ``stop_after``: stop after this many steps in
    this call (the run can be resumed later). ``meta``: extra facts recorded in ``delta.json``.
    """
    s = _settings(settings, overrides)
    ns = as_neuron_set(neurons, model)
    out_dir = _prepare_out(out, resume, DELTA_FILE)
    delta = NeuronDelta.zeros(model, ns)
    adapter = get_adapter(model)
    summary = _neuron_summary(ns, neurons if not isinstance(neurons, NeuronSet) else None)
    run_meta = {"model_id": _model_id(model, model_id), "fingerprint": adapter.fingerprint(),
                "neurons": summary, "neurons_sha256": summary["sha256"], "delta": delta.summary(), **(meta or {})}
    meta = _train(_DeltaTrainable(model, delta), tokenizer, texts, s, out_dir, resume, stop_after, progress,
                  run_meta, checkpoint_every=checkpoint_every)
    delta.meta = meta
    if out_dir is not None:
        delta.save(out_dir)
    return TrainResult(meta, delta=delta, out=out_dir)


def lora_for_budget(model: nn.Module, neurons: NeuronSet | str | Path, budget: int | None = None) -> dict[str, Any]:
    """A LoRA setting comparable to tuning ``neurons``: LoRA on the same modules the neuron
    slices live in, with the rank whose trainable-parameter count is closest to ``budget``
    (default: the neuron method's count). Returns ``rank``, ``target_modules``, ``parameters``."""
    ns = as_neuron_set(neurons, model)
    delta = NeuronDelta.zeros(model, ns)
    budget = delta.num_parameters() if budget is None else budget
    modules = list(dict.fromkeys(s.module for s in delta.slices))  # layer order
    per_rank = 0
    for name in modules:
        w = model.get_submodule(name).weight
        per_rank += w.shape[0] + w.shape[1]
    rank = max(1, round(budget / per_rank))
    return {"rank": rank, "target_modules": modules, "parameters": rank * per_rank, "budget": budget,
            "parameters_per_rank": per_rank}


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
    s = _settings(settings, overrides)
    alpha = 2 * rank if alpha is None else alpha
    out_dir = _prepare_out(out, False, "train.json")
    trainable = _LoraTrainable(model, rank, alpha, target_modules, s.seed)
    run_meta = {"model_id": _model_id(model, model_id), "fingerprint": get_adapter(model).fingerprint(),
                "lora": {"rank": rank, "alpha": alpha, "target_modules": target_modules, "dropout": 0.0}}
    meta = _train(trainable, tokenizer, texts, s, out_dir, False, None, progress, run_meta, save_checkpoints=False)
    if out_dir is not None:
        trainable.forward_model.save_pretrained(out_dir / "lora")
        (out_dir / "train.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return TrainResult(meta, model=trainable.forward_model, out=out_dir)


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
    s = _settings(settings, overrides)
    out_dir = _prepare_out(out, False, "train.json")
    run_meta = {"model_id": _model_id(model, model_id), "fingerprint": get_adapter(model).fingerprint()}
    meta = _train(_Trainable(model), tokenizer, texts, s, out_dir, False, None, progress, run_meta,
                  save_checkpoints=False)
    if out_dir is not None:
        (out_dir / "train.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return TrainResult(meta, model=model, out=out_dir)


# ---- comparison -------------------------------------------------------------------------------

METHODS = ("neurons", "random", "lora", "full")


def compare(
    model_name: str,
    neurons: NeuronSet | str | Path,
    texts: Sequence[str],
    eval_sets: dict[str, Sequence[str]],
    out: str | Path,
    *,
    methods: Sequence[str] = METHODS,
    settings: EnhanceSettings | None = None,
    lrs: dict[str, float] | None = None,
    lora_rank: int | None = None,
    lora_alpha: float | None = None,
    random_seed: int = 0,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    eval_batch_size: int = 8,
    eval_max_length: int = 512,
    tasks: dict[str, Sequence[str]] | None = None,
    task_source: str | Path | None = None,
    task_limit: int | None = None,
    task_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """Train every method in ``methods`` from a fresh copy of ``model_name`` on the same
    ``texts`` with the same settings (``lrs``: a per-method learning rate), and measure
    perplexity on each of ``eval_sets`` (``{"zh": [...], "en": [...]}``) before and after.

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

    Incremental: if ``out`` already holds a comparison of the same model, neurons, data,
    settings, evaluation sets and tasks, its "before" numbers and the rows of other methods
    are kept, and only ``methods`` are (re)run -- so the methods can run one call at a time."""
    from mwork.models.loading import load_model
    from mwork.tasks.perplexity import perplexity

    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
    if not eval_sets:
        raise ValueError("give at least one evaluation set")
    s = _settings(settings, overrides)
    task_sets = _load_tasks(tasks, task_source, task_limit)
    t_kwargs = {"batch_size": eval_batch_size, **(task_kwargs or {})}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)

    eval_tokens: dict[str, int] = {}

    def evaluate(model: nn.Module, tok: Any) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
        ppl = {}
        for name, t in eval_sets.items():
            r = perplexity(model, tok, list(t), batch_size=eval_batch_size, max_length=eval_max_length,
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

    model, tok = load_model(model_name, dtype=dtype, device=device)
    ns = as_neuron_set(neurons, model)
    budget = NeuronDelta.zeros(model, ns).num_parameters()
    lora = lora_for_budget(model, ns, budget)
    if lora_rank is not None:
        lora = lora_for_budget(model, ns, lora_rank * lora["parameters_per_rank"])
    used = list(texts)[:s.max_docs] if s.max_docs else list(texts)
    meta = {"model": model_name, "settings": asdict(s),
            "neurons": _neuron_summary(ns, neurons if not isinstance(neurons, NeuronSet) else None),
            "data_sha256": texts_fingerprint(used), "n_docs": len(used),
            "eval_sets": {k: {"n_texts": len(v), "sha256": texts_fingerprint(list(v))} for k, v in eval_sets.items()},
            "eval_max_length": eval_max_length, "lora": lora, "random_seed": random_seed,
            "tasks": _task_meta(task_sets, task_limit, t_kwargs) if task_sets else None,
            "task_source": str(task_source) if task_source is not None else None}
    same = ("model", "settings", "data_sha256", "eval_sets", "eval_max_length", "lora", "random_seed", "tasks")
    rows: list[dict[str, Any]] = []
    earlier = out_dir / "compare.json"
    if earlier.is_file():
        old = json.loads(earlier.read_text())
        diff = [k for k in same if old.get(k) != json.loads(json.dumps(meta[k], default=str))]
        if old.get("neurons", {}).get("sha256") != meta["neurons"]["sha256"]:
            diff.append("neurons")
        if diff:
            raise ValueError(f"{out_dir} holds a comparison that differs in {diff}; choose another output folder")
        before, before_tasks = old["before"], old.get("before_tasks") or {}
        rows = [r for r in old["rows"] if r["method"] not in methods]
    else:
        before, before_tasks = evaluate(model, tok)
        _write_task_records(out_dir / "before_tasks.json", before_tasks)
        before_tasks = _without_records(before_tasks)
    meta["before"] = before
    meta["before_tasks"] = before_tasks
    meta["eval_tokens"] = eval_tokens
    del model
    for method in methods:
        model, tok = load_model(model_name, dtype=dtype, device=device)
        kw = dict(settings=s, progress=progress, model_id=model_name, lr=(lrs or {}).get(method, s.lr))
        if method in ("neurons", "random"):
            chosen = ns if method == "neurons" else ns.random_like(random_seed, exclude=ns)
            res = enhance(model, tok, chosen, texts, _fresh(out_dir / method), checkpoint_every=0, **kw)
            with res.delta.attach(model):
                after, after_tasks = evaluate(model, tok)
        elif method == "lora":
            res = finetune_lora(model, tok, texts, lora["target_modules"], lora["rank"], lora_alpha,
                                _fresh(out_dir / method), **kw)
            after, after_tasks = evaluate(model, tok)  # peft put its layers inside ``model``
        else:
            res = finetune_full(model, tok, texts, _fresh(out_dir / method), **kw)
            after, after_tasks = evaluate(model, tok)
        if task_sets:
            _write_task_records(out_dir / method / "tasks.json", after_tasks)
        m = res.meta
        row = {"method": method, "trainable_parameters": m["trainable_parameters"],
               "lora_rank": lora["rank"] if method == "lora" else None,
               "optimizer_state_elements": m["optimizer_state_elements"], "lr": m["settings"]["lr"],
               "steps": m["steps"]["done"], "final_loss": round(m["losses"][-1], 4) if m["losses"] else None,
               "wall_time_s": m["wall_time_s"], "peak_memory_mb": m["peak_memory_mb"],
               "peak_memory_extra_mb": m["peak_memory_extra_mb"], "memory_measure": m["memory_measure"]}
        for name in eval_sets:
            row[f"ppl_{name}_before"] = round(before[name], 4)
            row[f"ppl_{name}_after"] = round(after[name], 4)
            row[f"ppl_{name}_change_pct"] = round(100 * (after[name] / before[name] - 1), 3)
        row.update(_task_columns(before_tasks, after_tasks))
        rows.append(row)
        rows.sort(key=lambda r: METHODS.index(r["method"]))
        del model, res
        _write_table(out_dir, rows, meta)  # after every method: a long comparison keeps its progress
    return rows


SECONDARY_METRICS = ("exact_match", "accuracy_norm")  # reported beside a task's main score when present


def _load_tasks(tasks: dict[str, Sequence[str]] | None, source: str | Path | None,
                limit: int | None) -> dict[tuple[str, str], tuple[Any, list[Any]]]:
    """``{(task name, lang): (task, examples)}``, loaded once so every method sees the same examples."""
    from mwork.tasks.registry import get_task

    if not tasks:
        return {}
    if not isinstance(tasks, dict):
        raise ValueError('tasks must map task names to languages, e.g. {"xquad": ["zh", "en"]}')
    if limit is not None and limit < 1:
        raise ValueError(f"task_limit must be at least 1, got {limit}")
    loaded = {}
    for name, langs in tasks.items():
        task = get_task(name)
        if isinstance(langs, str) or not langs:
            raise ValueError(f"tasks[{name!r}] must be a non-empty list of languages, got {langs!r}")
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
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(scores, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


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


def _fresh(path: Path) -> Path:
    """A per-method folder of a comparison, emptied of an earlier comparison's files."""
    for name in (DELTA_FILE, META_FILE, CHECKPOINT_FILE, "train.json", "tasks.json"):
        (path / name).unlink(missing_ok=True)
    if (path / "lora").is_dir():
        import shutil

        shutil.rmtree(path / "lora")
    return path


def _write_table(out: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    (out / "compare.json").write_text(json.dumps({**meta, "rows": rows}, indent=2, default=str) + "\n")
    with open(out / "compare.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in columns) + " |" for r in rows]
    (out / "compare.md").write_text("\n".join(lines) + "\n")
