"""Training one layer's dictionary on a buffer of activations: TopK or JumpReLU.

The activations (rows of ``x``, float32) are scaled by one number ``s`` so that their mean
squared norm is the width ``d`` (the usual normalisation: one learning rate and one threshold
scale fit every model), and the loss is measured in units of the buffer's variance:

* reconstruction: ``|x - x_hat|^2 / E|x - mean|^2`` averaged over the batch (1 - the fraction of
  variance explained);
* **TopK** (Gao et al. 2024): ``f = topk(relu(pre), k)``, the reconstruction loss alone;
* **JumpReLU** (Rajamanoharan et al. 2024, Gemma Scope): ``f = pre * H(pre - theta)``, plus
  ``l0_coefficient * L0`` (linearly warmed up over the first tenth of the steps); ``theta =
  exp(log_threshold)`` learns through straight-through estimators with a rectangle kernel of width
  ``bandwidth``: d f / d theta = -(theta / eps) K((pre - theta) / eps), d H / d theta = -(1 / eps)
  K((pre - theta) / eps). Each threshold starts where its feature fires on ``k / width`` of the
  buffer's rows (so the L0 starts near ``k``): Adam moves ``log_threshold`` by about the learning
  rate per step, too slowly for a short run to find the sparsity from a fixed small start.

Standard practice: ``b_dec`` starts at the mean of the buffer, ``W_dec`` rows at random unit
vectors and ``W_enc = W_dec^T``; after every Adam step the decoder rows are put back to unit norm
(and the gradient's part along each row removed before it). Batches come from a fixed
permutation of the buffer per epoch (seeded by ``seed`` and the epoch), so a training resumed from
its checkpoint (parameters, Adam's state, the step) gives the same dictionary bit for bit.
The result is rescaled to the model's units (``b_enc``, ``b_dec`` and the threshold divided by
``s``; features in the model's units, decoder rows still unit norm): a :class:`Codebook`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mwork.units.dictionary import Codebook

TRAIN_ACTIVATIONS = ("topk", "jumprelu")
#: the least starting threshold of a JumpReLU feature (normalised units)
THRESHOLD_FLOOR = 1e-3
#: rows of the buffer the starting thresholds are measured on
THRESHOLD_ROWS = 4096


@dataclass(frozen=True)
class TrainSettings:
    """How one dictionary is trained (see the module docstring)."""

    activation: str = "topk"
    width: int = 2048
    k: int = 32
    steps: int = 2000
    tokens_per_step: int = 1024
    lr: float = 1e-3
    l0_coefficient: float = 2e-3
    bandwidth: float = 0.05
    seed: int = 0

    def check(self) -> None:
        if self.activation not in TRAIN_ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(TRAIN_ACTIVATIONS)}, got {self.activation!r}")
        for name in ("width", "steps", "tokens_per_step", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.k > self.width:
            raise ValueError(f"k ({self.k}) must not exceed the width ({self.width})")
        for name in ("lr", "bandwidth"):
            value = getattr(self, name)
            if not (value > 0 and value < float("inf")):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if not (0 <= self.l0_coefficient < float("inf")):
            raise ValueError(f"l0_coefficient must be >= 0, got {self.l0_coefficient}")


class _JumpReLU(torch.autograd.Function):
    """``pre * H(pre - theta)``, with the straight-through gradient of ``theta``."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        near = ((pre - theta).abs() < eps / 2).to(grad)
        d_theta = (-(theta / eps) * near * grad).reshape(-1, theta.numel()).sum(0)
        return grad * (pre > theta).to(grad), d_theta, None


class _Step(torch.autograd.Function):
    """``H(pre - theta)`` (the L0 count), with the straight-through gradient of ``theta``."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        near = ((pre - theta).abs() < eps / 2).to(grad)
        d_theta = (-(1.0 / eps) * near * grad).reshape(-1, theta.numel()).sum(0)
        return torch.zeros_like(pre), d_theta, None


class SparseCoder(nn.Module):
    """The trainable dictionary (in the scaled space): ``encode``, ``forward`` -> (x_hat, f, l0)."""

    def __init__(self, d: int, settings: TrainSettings, mean: torch.Tensor, generator: torch.Generator):
        super().__init__()
        self.settings = settings
        dec = torch.randn(settings.width, d, generator=generator)
        dec = dec / dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(dec)
        self.W_enc = nn.Parameter(dec.t().clone())
        self.b_enc = nn.Parameter(torch.zeros(settings.width))
        self.b_dec = nn.Parameter(mean.clone().float())
        self.log_threshold = nn.Parameter(torch.zeros(settings.width), requires_grad=settings.activation == "jumprelu")
        #: the last step at which each feature fired (-1: never), for the dead-feature count
        self.register_buffer("last_fired", torch.full((settings.width,), -1, dtype=torch.long))

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pre = self.pre(x)
        s = self.settings
        if s.activation == "topk":
            top = pre.topk(s.k, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            l0 = (f > 0).float().sum(-1).mean()
        else:
            theta = self.log_threshold.exp()
            f = _JumpReLU.apply(pre, theta, s.bandwidth)
            l0 = _Step.apply(pre, theta, s.bandwidth).sum(-1).mean()
        return f @ self.W_dec + self.b_dec, f, l0

    @torch.no_grad()
    def start_thresholds(self, x: torch.Tensor) -> None:
        """JumpReLU thresholds where each feature fires on ``k / width`` of the rows ``x``."""
        from mwork.corpus_statistics import quantile

        pre = self.pre(x)
        q = 1.0 - self.settings.k / self.settings.width
        self.log_threshold.copy_(quantile(pre, q, dim=0).clamp_min(THRESHOLD_FLOOR).log())

    @torch.no_grad()
    def unit_rows(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def drop_parallel_grad(self) -> None:
        """Remove the part of each decoder row's gradient along the row (it would only change the norm)."""
        g, w = self.W_dec.grad, self.W_dec
        if g is not None:
            g -= (g * w).sum(1, keepdim=True) * w

    def codebook(self, scale: float) -> Codebook:
        """The dictionary in the model's units (module docstring)."""
        s = self.settings
        theta = (self.log_threshold.exp() / scale).detach().clone() if s.activation == "jumprelu" else None
        return Codebook(self.W_enc.detach().clone(), (self.b_enc / scale).detach().clone(),
                        self.W_dec.detach().clone(), (self.b_dec / scale).detach().clone(),
                        activation=s.activation, k=s.k if s.activation == "topk" else None, threshold=theta)


def activation_scale(x: torch.Tensor) -> float:
    """``s`` with ``E|s x|^2 = d``."""
    return float((x.shape[1] / x.double().pow(2).sum(1).mean()).sqrt())


def _batch(n: int, per_step: int, step: int, seed: int) -> torch.Tensor:
    """Rows of step ``step``: epoch ``e``'s fixed permutation (seeded by ``seed`` and ``e``)."""
    per_epoch = max(1, n // per_step)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[i * per_step:(i + 1) * per_step]


# ---- checkpoints -------------------------------------------------------------------------------


def save_checkpoint(path: Path, coder: SparseCoder, opt: torch.optim.Optimizer, step: int, info: dict) -> None:
    from mwork.files import save_safetensors

    tensors = {f"param.{k}": v.detach().clone().contiguous() for k, v in coder.named_parameters()}
    tensors.update({f"buffer.{k}": v.clone().contiguous() for k, v in coder.named_buffers()})
    for i, state in opt.state_dict()["state"].items():
        for name, value in state.items():
            tensors[f"opt.{i}.{name}"] = torch.as_tensor(value).clone().contiguous()
    save_safetensors(path, tensors, metadata={"mwork": json.dumps({**info, "step": step}, sort_keys=True)})


def load_checkpoint(path: Path, coder: SparseCoder, opt: torch.optim.Optimizer, key: str) -> int:
    """The step a checkpoint was saved at, its state put into ``coder`` and ``opt`` (0: none usable)."""
    from mwork.files import read_safetensors

    if not path.is_file():
        return 0
    try:
        tensors, header = read_safetensors(path, "dictionary checkpoint", "it is started again")
        info = json.loads(header.get("mwork", "{}"))
    except (ValueError, json.JSONDecodeError):
        return 0
    if info.get("key") != key:
        return 0
    with torch.no_grad():
        for name, p in coder.named_parameters():
            p.copy_(tensors[f"param.{name}"])
        for name, b in coder.named_buffers():
            b.copy_(tensors[f"buffer.{name}"])
    state = opt.state_dict()
    for i in range(len(state["param_groups"][0]["params"])):
        found = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
        if found:
            state["state"][i] = found
    opt.load_state_dict(state)
    return int(info["step"])


# ---- the loop ---------------------------------------------------------------------------------------


@dataclass
class Trained:
    """A trained dictionary in the model's units, and how its training went: ``dead``, the
    features that fired on none of the rows of the last pass over the buffer (all steps, when
    fewer)."""

    book: Codebook
    scale: float
    history: list[dict[str, float]]
    resumed_from: int
    dead: int


def train_codebook(x: torch.Tensor, settings: TrainSettings, *, checkpoint: Path | None = None, key: str = "",
                   checkpoint_every: int = 200, progress: bool = True, desc: str = "sae",
                   stop_at: int | None = None) -> Trained | None:
    """Train one dictionary on the rows of ``x`` (tokens, d); resume from ``checkpoint`` when it
    holds this ``key``, and save it every ``checkpoint_every`` steps. ``stop_at``: stop after that
    step with the checkpoint saved and return None (an interrupted run)."""
    from tqdm.auto import tqdm

    settings.check()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"training a dictionary needs at least two activation rows, got {tuple(x.shape)}")
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    scale = activation_scale(x)
    xs = (x.float() * scale).contiguous()
    mean = xs.mean(0)
    variance = float((xs - mean).pow(2).sum(1).mean())
    coder = SparseCoder(x.shape[1], settings, mean, generator)
    if settings.activation == "jumprelu":
        coder.start_thresholds(xs[torch.randperm(xs.shape[0], generator=generator)[:THRESHOLD_ROWS]])
    params = [p for p in coder.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=settings.lr)
    info = {"key": key, "settings": asdict(settings)}
    start = load_checkpoint(checkpoint, coder, opt, key) if checkpoint is not None else 0
    history: list[dict[str, float]] = []
    per_step = min(settings.tokens_per_step, xs.shape[0])
    warmup = max(1, settings.steps // 10)
    bar = tqdm(range(start, settings.steps), desc=desc, unit="step", disable=not progress, file=sys.stderr,
               initial=start, total=settings.steps)
    for step in bar:
        batch = xs[_batch(xs.shape[0], per_step, step, settings.seed)]
        x_hat, f, l0 = coder(batch)
        rec = (batch - x_hat).pow(2).sum(1).mean() / variance
        loss = rec
        if settings.activation == "jumprelu":
            loss = loss + settings.l0_coefficient * min(1.0, (step + 1) / warmup) * l0
        with torch.no_grad():
            coder.last_fired[(f > 0).any(0)] = step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        coder.drop_parallel_grad()
        opt.step()
        coder.unit_rows()
        if step % 25 == 0 or step == settings.steps - 1:
            fired = float((f > 0).any(0).float().mean())
            history.append({"step": step, "fve": 1 - float(rec.detach()), "l0": float(l0.detach()), "fired_in_batch": fired})
            bar.set_postfix(fve=f"{1 - float(rec.detach()):.3f}", l0=f"{float(l0.detach()):.1f}")
        done = step + 1
        if checkpoint is not None and (done % checkpoint_every == 0 or done == settings.steps or done == stop_at):
            save_checkpoint(checkpoint, coder, opt, done, info)
        if stop_at is not None and done >= stop_at and done < settings.steps:
            bar.close()
            return None
    bar.close()
    window = -(-xs.shape[0] // per_step)  # steps in one pass over the buffer
    dead = int((coder.last_fired < settings.steps - window).sum())
    return Trained(coder.codebook(scale), scale, history, start, dead)
