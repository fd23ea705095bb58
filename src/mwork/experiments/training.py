"""The training loop every enhancement method shares (paper §5), and its settings.

What is trained is a method's business (:mod:`mwork.experiments.training_methods`); how is decided here,
the same for every method:

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
  ``seed``; a checkpoint (trainable tensors, optimiser, scheduler, step, RNG; see
  :mod:`mwork.experiments.checkpoints`) resumes to the identical result.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TypeVar

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from mwork.texts import is_empty
from mwork.config import option
from mwork.experiments.checkpoints import (CHECKPOINT_FILE, LEGACY_CHECKPOINT_FILE, legacy_message, read_checkpoint,
                                           save_checkpoint)
from mwork.files import make_folder
from mwork.fingerprints import model_digest, texts_digest
from mwork.hooks import Hooks
from mwork.jobs import RunOptions
from mwork.models.adapters import get_adapter
from mwork.models.loading import input_device

if TYPE_CHECKING:
    from mwork.experiments.training_methods import Method
    from mwork.neurons.delta import NeuronDelta

SCHEDULES = ("cosine", "linear", "constant")
_LOGIT_BUDGET = 1 << 26  # vocabulary x tokens decoded at once in the loss (256 MiB in float32)


@dataclass(frozen=True, kw_only=True)
class EnhanceSettings:
    """Training settings. Defaults are the paper's (§5, reference code): lr 2e-6, 1 epoch,
    batch 8 x gradient accumulation 4, warm-up 5 %, cosine schedule, gradient norm 0.3,
    length 512. At lr 2e-6 a small model barely moves in a few steps: raise ``lr`` for short
    runs (and say so when reporting). Warm-up follows transformers' schedulers: with any
    warm-up the first step has lr 0, so very short runs may want ``warmup_ratio=0``. For the
    neuron method ``weight_decay`` shrinks the delta, i.e. pulls towards the base weights."""

    lr: float = option(2e-6, "learning rate")
    epochs: int = option(1, "epochs")
    batch_size: int = option(8, "documents per batch")
    grad_accum: int = option(4, "batches per optimiser step")
    warmup_ratio: float = option(0.05, "share of steps for the linear warm-up")
    schedule: str = option("cosine", "learning-rate schedule after the warm-up", choices=SCHEDULES)
    max_grad_norm: float | None = option(0.3, "gradient clipping: the largest gradient norm (None: no clipping)")
    max_length: int = option(512, "tokens per document (longer ones are truncated)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    seed: int = option(0, "data order, dropout and the baselines' random initialisation")
    max_steps: int | None = option(None, "optimiser steps; overrides the epochs (the data cycles as needed)",
                                   flag="--steps", metavar="N")
    max_docs: int | None = option(None, "use only the first N documents", metavar="N")
    micro_batch_size: int | None = option(None, "documents per forward pass, for memory only (default: the batch "
                                          "size)", metavar="N")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "EnhanceSettings":
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "grad_accum": self.grad_accum}
        for name in ("max_steps", "max_docs", "micro_batch_size"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        bad = [f"{k}={v}" for k, v in positive.items() if int(v) < 1]
        if bad:
            raise ValueError(f"these settings must be at least 1: {', '.join(bad)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive (and finite), got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be positive (and finite; or None for no clipping), got "
                             f"{self.max_grad_norm}")
        return self


def check_run_options(stop_after: int | None, checkpoint_every: int) -> None:
    """``stop_after`` (steps of this call, at least 1) and ``checkpoint_every`` (0: at the end only)."""
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"--stop-after must be at least 1 (steps of this call), got {stop_after}")
    if checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be >= 0 (0: only at the end), got {checkpoint_every}")


@dataclass(frozen=True, kw_only=True)
class CheckpointOptions:
    """The checkpoint of a resumable run (``OUT/checkpoint.safetensors``): how often it is written,
    whether a run continues from it, and where this call stops. None of them changes the result."""

    resume: bool = option(False, "continue from OUT/checkpoint.safetensors", record=False)
    stop_after: int | None = option(None, "stop after N steps of this call (resume later)", metavar="N",
                                    record=False)
    checkpoint_every: int = option(10, "checkpoint every N steps (0: at the end)", metavar="N", record=False)


@dataclass(frozen=True, kw_only=True)
class TrainingRun(CheckpointOptions, RunOptions, EnhanceSettings):
    """One training run: its settings (:class:`EnhanceSettings`), its checkpoints, progress bars,
    and what its record says beyond them (``model_id``: the model's name, default the model's
    own; ``meta``: extra facts)."""

    model_id: str | None = option(None, "the model's name in the run's record (default: the model's own)",
                                  cli=False, record=False)
    meta: dict[str, Any] | None = option(None, "extra facts recorded in the run's metadata", cli=False,
                                         record=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_run_options(self.stop_after, self.checkpoint_every)


_C = TypeVar("_C")


def config_part(cls: type[_C], config: Any) -> _C:
    """The ``cls`` part of a larger config (e.g. the :class:`EnhanceSettings` of a job), as a
    ``cls``: what is recorded and compared is that part alone."""
    return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


def training_run(settings: EnhanceSettings | None, options: dict[str, Any]) -> TrainingRun:
    """``settings`` (default: the paper's; a larger config gives its training part) with keyword
    ``options`` (any :class:`TrainingRun` field); unknown names are errors."""
    names = {f.name for f in fields(TrainingRun)}
    unknown = set(options) - names
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {sorted(names)}")
    base = {} if settings is None else {f.name: getattr(settings, f.name) for f in fields(settings)
                                        if f.name in names}
    return TrainingRun(**{**base, **options})


# ---- data -----------------------------------------------------------------------------------


def _encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[list[list[int]], list[int]]:
    enc = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_length,
                    verbose=False)["input_ids"]
    docs, skipped = [], []
    for i, (text, ids) in enumerate(zip(texts, enc)):
        # an empty document (nothing but whitespace: mwork.texts.is_empty) is skipped, like too short ones
        (docs.append(list(ids)) if len(ids) >= 2 and not is_empty(text) else skipped.append(i))
    return docs, skipped


@dataclass(frozen=True)
class TrainingPlan:
    """How many optimiser steps a run takes, per epoch and in all, and how many warm up."""

    n_docs: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    @classmethod
    def of(cls, n_docs: int, s: EnhanceSettings) -> "TrainingPlan":
        n_batches = math.ceil(n_docs / s.batch_size)
        per_epoch = math.ceil(n_batches / s.grad_accum)
        total = s.max_steps if s.max_steps is not None else s.epochs * per_epoch
        return cls(n_docs, per_epoch, total, math.ceil(s.warmup_ratio * total))

    def step_batches(self, step: int, s: EnhanceSettings) -> list[list[int]]:
        """Document indices of each forward pass of optimiser step ``step`` (deterministic)."""
        epoch, j = divmod(step, self.steps_per_epoch)
        order = torch.randperm(self.n_docs, generator=torch.Generator().manual_seed(s.seed + 1_000_003 * epoch)).tolist()
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


def nll_sum(forward_model: nn.Module, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
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


class PeakMemory:
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

    def __enter__(self) -> "PeakMemory":
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


# ---- the loop -------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a training run produced: ``meta`` is the JSON record; ``delta`` (neuron methods)
    or ``model`` (the trained forward model: a peft model for LoRA, the model for full);
    ``files``: what it wrote into its output folder ``out`` as it trained."""

    meta: dict[str, Any]
    delta: "NeuronDelta | None" = None
    model: nn.Module | None = None
    out: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        return self.meta["losses"]

    def write(self, out: str | Path | None = None) -> dict[str, Path]:
        """The run's files: those in its own folder (the default), or copies in another one."""
        import shutil

        if self.out is None:
            raise ValueError("this run had no output folder (out=None), so it wrote no files; train with out=DIR")
        target = Path(out) if out is not None else self.out
        if target.resolve() == self.out.resolve():
            return dict(self.files)
        make_folder(target)
        copied = {}
        for name, path in self.files.items():
            copied[name] = target / path.name
            if path.is_dir():
                shutil.copytree(path, copied[name], dirs_exist_ok=True)
            else:
                shutil.copy2(path, copied[name])
        return copied


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def check_out(out: str | Path, resume: bool, result_file: str) -> Path:
    """Refuse an output folder that is a file, that holds a run unless ``resume``, or that holds an
    old pickled checkpoint (never loaded); nothing is created."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output folder {out} is a file; choose a folder")
    if (out / LEGACY_CHECKPOINT_FILE).exists():
        raise ValueError(legacy_message(out / LEGACY_CHECKPOINT_FILE))
    if not resume and ((out / CHECKPOINT_FILE).exists() or (out / result_file).exists()):
        raise ValueError(f"{out} already holds a run; pass resume=True (--resume) to continue it, "
                         f"or choose another output folder")
    return out


def prepare_out(out: str | Path | None, resume: bool, result_file: str) -> Path | None:
    """The output folder (:func:`check_out`), created."""
    if out is None:
        return None
    return make_folder(check_out(out, resume, result_file))


def _versions() -> dict[str, str]:
    import transformers

    import mwork

    return {"mwork": mwork.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _json_form(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), to compare with a checkpoint's."""
    import json

    return json.loads(json.dumps(value))


def train(method: "Method", tokenizer: Any, texts: Sequence[str], run: TrainingRun, out: Path | None,
          run_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``method``'s tensors on ``texts`` (shared by every method) as ``run`` says; returns
    the run's metadata (``run_meta`` first). A resumable method with ``out`` writes
    ``out/checkpoint.safetensors`` every ``run.checkpoint_every`` steps (0: only at the end);
    ``run.resume`` continues from it."""
    from transformers import get_scheduler

    s = config_part(EnhanceSettings, run)
    resume, stop_after, progress, checkpoint_every = run.resume, run.stop_after, run.progress, run.checkpoint_every
    run_meta = dict(run_meta or {})
    model = method.model
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty list of strings (one document each)")
    if resume and not method.resumable:
        raise ValueError(f"the {method.name} method writes no checkpoints: it cannot resume")
    texts = list(texts)
    if s.max_docs is not None:
        texts = texts[:s.max_docs]
    docs, skipped = _encode(tokenizer, texts, s.max_length)
    if not docs:
        raise ValueError("no document has two or more tokens: nothing to train on")
    plan = TrainingPlan.of(len(docs), s)
    device = input_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    params = method.parameters()
    n_trainable = sum(p.numel() for p in params)
    ckpt_path = out / CHECKPOINT_FILE if out is not None and method.resumable else None
    if resume and ckpt_path is None:
        raise ValueError("resume needs an output folder (out=...) that holds the checkpoint")
    fingerprint = {"method": method.name, "settings": asdict(s), "data_sha256": texts_digest(texts),
                   "trainable": n_trainable, **method.identity()}
    if ckpt_path is not None:  # a checkpoint continues only on the very same base weights
        fingerprint["model_sha256"] = model_digest(model)
    fingerprint = _json_form(fingerprint)
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    scheduler = get_scheduler(s.schedule if s.schedule != "constant" else "constant_with_warmup", optimizer,
                              num_warmup_steps=plan.warmup_steps, num_training_steps=plan.total_steps)
    history: dict[str, Any] = {"losses": [], "lrs": [], "grad_norms": [], "tokens": []}
    step, wall, peak_prev, rng = 0, 0.0, None, None
    if resume and ckpt_path.is_file():
        ckpt = read_checkpoint(ckpt_path)
        if ckpt.get("fingerprint") != fingerprint:
            old = ckpt.get("fingerprint") or {}
            diff = sorted(k for k in set(fingerprint) | set(old) if old.get(k) != fingerprint.get(k))
            raise ValueError(f"cannot resume from {ckpt_path}: the run differs in {diff}; "
                             f"use the same model, data and settings, or another output folder")
        try:
            method.load_state(ckpt["trainable"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            step, wall, history, peak_prev = ckpt["step"], ckpt["wall_time_s"], ckpt["history"], ckpt.get("memory")
            rng = ckpt["rng"]
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            raise ValueError(f"{ckpt_path} does not fit this run ({err!r}); delete it to start the run over, "
                             f"or choose another output folder") from None
    end = plan.total_steps if stop_after is None else min(plan.total_steps, step + stop_after)

    def save(mem: dict[str, Any] | None, rng_now: dict[str, Any]) -> None:
        if ckpt_path is None:
            return
        save_checkpoint(ckpt_path, {"fingerprint": fingerprint, "step": step, "trainable": method.state(),
                                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                    "rng": rng_now, "wall_time_s": wall, "history": history, "memory": mem})

    bar = tqdm(total=plan.total_steps, initial=step, desc=f"enhance[{method.name}]", unit="step",
               disable=not progress)
    devices = [device] if device.type == "cuda" else []
    memory = PeakMemory(device)
    with torch.random.fork_rng(devices=devices), method.active(), memory:
        if rng is None:
            torch.manual_seed(s.seed)
        else:
            _set_rng_state(rng, device)
        started = time.perf_counter()
        try:
            while step < end:
                micro = plan.step_batches(step, s)
                n_tokens = sum(len(docs[i]) - 1 for b in micro for i in b)
                loss_total = 0.0
                for b in micro:
                    ids, mask = _collate([docs[i] for i in b], pad_id, device)
                    loss = nll_sum(method.forward_model, model, ids, mask) / n_tokens
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
                    save(peak_prev, _rng_state(device))
        finally:
            bar.close()
        wall += time.perf_counter() - started
        rng_end = _rng_state(device)  # inside fork_rng: the training stream, not the caller's
    mem = memory.report()
    if peak_prev:  # a resumed run reports the larger peak of its parts
        mem = max(mem, peak_prev, key=lambda r: r["peak_memory_mb"])
    save(mem, rng_end)
    opt_elems = sum(v.numel() for st in optimizer.state.values() for k, v in st.items()
                    if torch.is_tensor(v) and k != "step")
    return {
        **run_meta,
        "method": method.name,
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
