"""The tuned lens (Belrose et al. 2023): an affine translator per lens layer, trained on
multilingual text so that decoding the translated hidden state matches the final layer.

Lens layer ``l < L`` is decoded as ``Adapter.decode(W_l h + b_l)``; the last lens layer ``L``
(the model's own output) has no translator. ``W_l`` starts as the identity and ``b_l`` at zero,
so the untrained tuned lens *is* the logit lens; training minimises
``KL(p_final || p_lens(l))`` averaged over positions and layers.

Why not the ``tuned-lens`` package: its last release (0.2.0, 2023) needs ``torchdata``'s
``dataloader2`` (removed from torchdata), ``wandb``, ``datasets`` and ``plotly``, and its model
surgery knows neither Gemma-3 nor transformers 5; it would also hook the model outside
:mod:`mwork.hooks`. The translators are a few lines here.

Cost: the LM head of a 262k vocabulary dominates (a decode per position and layer). By default
(``vocab="restricted"``) the training KL is taken over the tokens that matter on the training
text (every token of the text, the final layer's top-k and the untrained lens's top-k at each
position), both distributions renormalised there; the held-out KL per layer is always measured
over the whole vocabulary with the exact ``Adapter.decode``. Files: ``tuned_lens.safetensors``
(weights, metadata) and ``tuned_lens.json`` / ``tuned_lens_kl.csv`` (held-out KL per layer,
logit lens vs tuned lens, settings, timing).

``mwork lens train`` is the job :class:`TunedLensConfig`:
``TunedLensConfig(steps=300).run().write("out/tuned")``; with a loaded model,
``train_tuned_lens(model, tokenizer, config, out)``.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from mwork.config import fingerprint, option
from mwork.hooks import Hooks
from mwork.jobs import RunOptions
from mwork.lens.job import LensModelOptions, TimedJob, check_at_least
from mwork.lens.lenses import Lens, lens_site
from mwork.models.adapters import get_adapter
from mwork.models.loading import input_device

WEIGHTS = "tuned_lens.safetensors"
REPORT = "tuned_lens.json"
KL_CSV = "tuned_lens_kl.csv"
FORMAT = "mwork-tuned-lens"

class TunedLens(Lens):
    """Translators ``weight`` (L, D, D) and ``bias`` (L, D) for lens layers 0..L-1."""

    name = "tuned"

    def __init__(self, model, weight: torch.Tensor, bias: torch.Tensor, meta: dict[str, Any] | None = None):
        super().__init__(get_adapter(model))
        L, D = self.adapter.num_layers, self.adapter.hidden_size
        if tuple(weight.shape) != (L, D, D) or tuple(bias.shape) != (L, D):
            raise ValueError(f"tuned lens of shape {tuple(weight.shape)} / {tuple(bias.shape)} does not fit this model "
                             f"({L} layers, hidden size {D}: expected ({L}, {D}, {D}) / ({L}, {D}))")
        self.weight, self.bias, self.meta = weight, bias, dict(meta or {})

    @classmethod
    def identity(cls, model) -> "TunedLens":
        adapter = get_adapter(model)
        L, D = adapter.num_layers, adapter.hidden_size
        return cls(model, torch.eye(D).repeat(L, 1, 1), torch.zeros(L, D))

    def translate(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """``W_layer h + b_layer`` (the last lens layer unchanged)."""
        self._check_layer(layer)
        if layer == self.num_layers:
            return hidden
        w = self.weight[layer].to(hidden.device, hidden.dtype)
        return hidden @ w.T + self.bias[layer].to(hidden.device, hidden.dtype)

    def settings(self) -> dict[str, Any]:
        return {"lens": self.name, "trained_on": self.meta.get("model"), "path": self.meta.get("path")}

    def save(self, folder: str | Path, report: dict[str, Any] | None = None) -> dict[str, Path]:
        """Write ``tuned_lens.safetensors`` (and, with ``report``, ``tuned_lens.json`` and
        ``tuned_lens_kl.csv``) into ``folder``."""
        from mwork.files import make_folder, save_safetensors, write_json, write_text

        folder = make_folder(folder)
        files = {WEIGHTS: folder / WEIGHTS}
        meta = {"format": FORMAT, "version": 1, "num_layers": self.num_layers,
                "hidden_size": self.adapter.hidden_size, **{k: v for k, v in self.meta.items() if k != "path"}}
        save_safetensors(files[WEIGHTS], {"weight": self.weight.float().contiguous(),
                                          "bias": self.bias.float().contiguous()},
                         metadata={"mwork_tuned_lens": json.dumps(meta)})
        if report is not None:
            files[REPORT], files[KL_CSV] = folder / REPORT, folder / KL_CSV
            write_json(files[REPORT], report, indent=1)
            write_text(files[KL_CSV], kl_csv(report["heldout_kl"]))
        return files

    @staticmethod
    def path(folder: str | Path) -> Path:
        """The weights file of the tuned lens at ``folder`` (a folder, or its safetensors file);
        a missing one is refused here, so that a job can check it before the model loads."""
        path = Path(folder)
        if path.is_dir():
            path = path / WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"no tuned lens at {str(folder)!r} (expected {WEIGHTS}; write one with `mwork lens train`)")
        return path

    @classmethod
    def load(cls, folder: str | Path, model) -> "TunedLens":
        """Read a tuned lens written by ``mwork lens train`` (a folder, or its safetensors file)."""
        from mwork.files import read_safetensors

        path = cls.path(folder)
        tensors, metadata = read_safetensors(path, "tuned lens", "train it again with `mwork lens train`")
        try:
            meta = json.loads(metadata["mwork_tuned_lens"])
            weight, bias = tensors["weight"], tensors["bias"]
        except (KeyError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a tuned lens written by mwork ({err})") from None
        dtype = next(model.parameters()).dtype
        return cls(model, weight.to(dtype), bias.to(dtype), {**meta, "path": str(path)})


def kl_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["layer", "kl_logit", "kl_tuned"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({"layer": row["layer"], "kl_logit": f"{row['kl_logit']:.6g}", "kl_tuned": f"{row['kl_tuned']:.6g}"})
    return buf.getvalue()


# ---- text windows and hidden states --------------------------------------------------------------

def _windows(tokenizer, texts: Sequence[str], window: int, count: int, offset: int = 0) -> list[list[int]]:
    """``count`` windows of ``window`` tokens spread evenly over the texts joined by newlines
    (each window prefixed with BOS where the tokenizer has one); ``offset`` shifts the picks."""
    stream = tokenizer("\n".join(t for t in texts if t.strip()), add_special_tokens=False).input_ids
    n = len(stream) // window
    if n == 0:
        return []
    picks = sorted({min(n - 1, (i * n) // count + offset) for i in range(count)})
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [bos + stream[p * window:(p + 1) * window] for p in picks]


def collect_windows(tokenizer, config: TunedLensConfig) -> tuple[list[list[int]], list[list[int]], list[str]]:
    """(training windows, held-out windows, text specs used)."""
    from mwork.texts import read_texts

    if config.texts:
        docs = read_texts(config.texts)
        every = _windows(tokenizer, docs, config.window, (config.windows_per_lang + config.heldout_windows) * 5)
        return ([w for i, w in enumerate(every) if i % 5 != 4], [w for i, w in enumerate(every) if i % 5 == 4],
                [config.texts])
    train, held, specs = [], [], []
    for lang in config.langs:
        specs += [f"builtin:{lang}", f"builtin:{lang}:heldout"]
        train += _windows(tokenizer, read_texts(f"builtin:{lang}"), config.window, config.windows_per_lang)
        held += _windows(tokenizer, read_texts(f"builtin:{lang}:heldout"), config.window, config.heldout_windows)
    return train, held, specs


@torch.inference_mode()
def hidden_states(model, windows: list[list[int]], batch_size: int = 8, progress: bool = False,
                  skip_first: bool = True) -> torch.Tensor:
    """(positions, L + 1, D) lens hidden states of every window position (but the first, a BOS,
    with ``skip_first``)."""
    adapter = get_adapter(model)
    device = input_device(model)
    out = []
    by_len: dict[int, list[list[int]]] = {}
    for w in windows:
        by_len.setdefault(len(w), []).append(w)
    groups = [g[i:i + batch_size] for g in by_len.values() for i in range(0, len(g), batch_size)]
    states: list[torch.Tensor | None] = [None] * (adapter.num_layers + 1)
    hooks = Hooks()
    for layer in range(adapter.num_layers + 1):
        hooks.read(lens_site(adapter, layer), lambda h, layer=layer: states.__setitem__(layer, h))
    from mwork.lens.logit_lens import _step_kwargs

    keep = _step_kwargs(model)[1]
    with hooks:
        for group in tqdm(groups, desc="hidden states", disable=not progress):
            ids = torch.tensor(group, dtype=torch.long, device=device)
            model(input_ids=ids, attention_mask=torch.ones_like(ids), **keep)
            stacked = torch.stack([s.to(device) for s in states], dim=2)  # (B, T, L+1, D)
            out.append(stacked[:, int(skip_first):].flatten(0, 1).float().cpu())
    return torch.cat(out) if out else torch.empty(0, adapter.num_layers + 1, adapter.hidden_size)


def _kl(final_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """KL(p_final || p) per row (nats), from log-probabilities."""
    return (final_logp.exp() * (final_logp - logp)).sum(-1)


@torch.inference_mode()
def heldout_kl(lens: Lens, states: torch.Tensor, chunk: int = 128) -> list[float]:
    """Mean KL(final || lens(layer)) per lens layer over the positions of ``states`` (full vocabulary)."""
    adapter = lens.adapter
    device = input_device(adapter.model)
    dtype = next(adapter.model.parameters()).dtype
    L = adapter.num_layers
    totals = torch.zeros(L + 1, dtype=torch.float64)
    for start in range(0, states.shape[0], chunk):
        part = states[start:start + chunk].to(device, dtype)
        final = torch.log_softmax(adapter.decode(part[:, L]).float(), -1)
        for layer in range(L + 1):
            logp = torch.log_softmax(lens.decode(layer, part[:, layer]).float(), -1)
            totals[layer] += _kl(final, logp).double().sum().cpu()
    return (totals / max(states.shape[0], 1)).tolist()


# ---- training ------------------------------------------------------------------------------------

class _Head:
    """``Adapter.decode`` restricted to the vocabulary rows ``rows`` (None: all), differentiable
    in the hidden state only (the model's weights get no gradient)."""

    def __init__(self, adapter, rows: torch.Tensor | None):
        self.adapter, self.rows = adapter, rows
        if rows is not None:
            head = adapter.lm_head
            self.w = head.weight.detach()[rows]
            self.b = head.bias.detach()[rows] if getattr(head, "bias", None) is not None else None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            return self.adapter.decode(hidden)
        logits = torch.nn.functional.linear(self.adapter.final_norm(hidden), self.w.to(hidden.dtype),
                                            None if self.b is None else self.b.to(hidden.dtype))
        return logits

    def exact(self, sample: torch.Tensor) -> bool:
        """Whether the restricted head equals the model's decode on those rows (a family with
        logit scaling, soft-capping or a projection before the head does not)."""
        if self.rows is None:
            return True
        with torch.no_grad():
            full = self.adapter.decode(sample)[..., self.rows]
            return torch.allclose(self(sample), full, rtol=1e-4, atol=1e-4)


@torch.inference_mode()
def restricted_vocab(adapter, states: torch.Tensor, windows: list[list[int]], top_k: int, chunk: int = 128,
                     lens_sample: int = 64, seed: int = 0) -> torch.Tensor:
    """The token ids the restricted training KL runs over: every token of the windows, the
    final layer's top-k at every position and the logit lens's top-k at every layer of
    ``lens_sample`` positions."""
    device = input_device(adapter.model)
    dtype = next(adapter.model.parameters()).dtype
    L = adapter.num_layers
    keep = {t for w in windows for t in w}
    for start in range(0, states.shape[0], chunk):
        part = states[start:start + chunk, L].to(device, dtype)
        keep.update(adapter.decode(part).topk(top_k, -1).indices.flatten().tolist())
    g = torch.Generator().manual_seed(seed)
    sample = states[torch.randperm(states.shape[0], generator=g)[:lens_sample], :L]
    flat = sample.flatten(0, 1)
    for start in range(0, flat.shape[0], chunk):
        keep.update(adapter.decode(flat[start:start + chunk].to(device, dtype)).topk(top_k, -1).indices.flatten().tolist())
    return torch.tensor(sorted(keep), dtype=torch.long)


#: the built-in prose the tuned lens is trained on by default (``builtin:LANG``; held out: ``builtin:LANG:heldout``)
TRAIN_LANGS: tuple[str, ...] = ("en", "de", "fr", "es", "it", "pt", "ru", "zh", "ja", "ko")
VOCABS = ("restricted", "full")


def _codes(value, flag: str = "--langs") -> tuple[str, ...]:
    from mwork.files import parse_names

    return parse_names(value, flag=flag)


@dataclass(frozen=True, kw_only=True)
class TunedLensConfig(LensModelOptions, RunOptions, TimedJob):
    """How a tuned lens is trained: one affine translator per lens layer (initialised to the
    identity), trained so that the decoded distribution matches the final layer's (KL)."""

    command = "lens-train"
    summary = "train a tuned lens (also: mwork lens train)"

    langs: tuple[str, ...] = option(
        TRAIN_LANGS, "comma-separated languages of the built-in prose to train on (builtin:LANG; the "
        "held-out KL is measured on builtin:LANG:heldout)", parse=_codes)
    texts: str | None = option(
        None, "train on these texts instead (a texts spec: FILE, xquad:LANG, hf:...); every 5th window is held out",
        metavar="SPEC")
    steps: int = option(300, "optimiser steps")
    window: int = option(48, "tokens per text window (after BOS)")
    windows_per_lang: int = option(6, "training windows per language (spread over its text)")
    heldout_windows: int = option(2, "held-out windows per language")
    heldout_positions: int = option(256, "held-out positions the KL per layer is measured on (all layers, full vocabulary)")
    batch_positions: int = option(32, "positions per step (every layer at each)")
    lr: float = option(1e-3, "Adam learning rate")
    vocab: str = option(
        "restricted", "restricted: the KL is taken over the tokens that matter on the training text (every "
        "token of the text, the final layer's top-k and the untrained lens's top-k at each position), "
        "far cheaper with a 262k vocabulary; full: over the whole vocabulary", choices=VOCABS)
    vocab_top_k: int = option(32, "top-k tokens per position that enter the restricted vocabulary")
    seed: int = option(0, "seed of the position sampling")
    batch_size: int = option(8, "windows per forward pass while collecting hidden states", record=False)

    def __post_init__(self) -> None:
        if not self.texts:
            object.__setattr__(self, "langs", _codes(self.langs))
            if not self.langs:
                raise ValueError("langs is empty; give at least one language of the built-in prose")
        check_at_least(self, dict.fromkeys(("steps", "window", "windows_per_lang", "heldout_windows",
                                            "heldout_positions", "batch_positions", "vocab_top_k", "batch_size"), 1))
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.vocab not in VOCABS:
            raise ValueError(f"vocab must be one of {', '.join(VOCABS)}, got {self.vocab!r}")

    def compute(self, model: Any, tokenizer: Any, load_seconds: float | None = None) -> TrainResult:
        """:func:`train_tuned_lens`; the result's ``write(out)`` saves the lens."""
        from mwork.models.adapters import model_name

        result = train_tuned_lens(model, tokenizer, self, model_name=model_name(model))
        result.load_seconds = load_seconds
        return result


@dataclass
class TrainResult:
    """A trained tuned lens and its report (held-out KL per layer, settings, timing);
    ``write(out)`` saves both (:meth:`TunedLens.save`)."""

    lens: TunedLens
    report: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    load_seconds: float | None = None  # the model's load, when the job loaded it (not in the report)

    def write(self, out: str | Path) -> dict[str, Path]:
        self.files = self.lens.save(out, self.report)
        self.lens.meta["path"] = str(Path(out) / WEIGHTS)
        return self.files

    def table(self) -> str:
        lines = [f"{'layer':>5} {'KL logit':>9} {'KL tuned':>9}"]
        for row in self.report["heldout_kl"]:
            lines.append(f"{row['layer']:>5d} {row['kl_logit']:9.3f} {row['kl_tuned']:9.3f}")
        return "\n".join(lines)


def train_translators(adapter, train: torch.Tensor, *, steps: int, batch_positions: int, lr: float, seed: int,
                      rows: torch.Tensor | None = None, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Fit ``W_l, b_l`` (identity / zero at the start) on ``train`` (positions, L + 1, D):
    Adam on the mean over layers and sampled positions of KL(final || decode(W_l h + b_l)).
    Returns the weights, biases and the loss per step."""
    device = input_device(adapter.model)
    dtype = next(adapter.model.parameters()).dtype
    L, D = adapter.num_layers, adapter.hidden_size
    head = _Head(adapter, None if rows is None else rows.to(device))
    if not head.exact(train[:4, L].to(device, dtype)):
        head = _Head(adapter, None)  # this family transforms its logits: train over the whole vocabulary
    weight = torch.eye(D, device=device, dtype=dtype).repeat(L, 1, 1).requires_grad_(True)
    bias = torch.zeros(L, D, device=device, dtype=dtype, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(steps), desc="tuned lens", disable=not progress):
        idx = torch.randint(train.shape[0], (batch_positions,), generator=g)
        batch = train[idx].to(device, dtype)  # (B, L+1, D)
        with torch.no_grad():
            final = torch.log_softmax(head(batch[:, L]).float(), -1)  # (B, V')
        h = torch.einsum("bld,lod->blo", batch[:, :L], weight) + bias  # (B, L, D)
        logp = torch.log_softmax(head(h).float(), -1)  # (B, L, V')
        loss = _kl(final[:, None], logp).mean()
        gw, gb = torch.autograd.grad(loss, [weight, bias])  # no gradient reaches the model
        weight.grad, bias.grad = gw, gb
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return weight.detach(), bias.detach(), losses


def train_tuned_lens(model, tokenizer, config: TunedLensConfig | None = None, out: str | Path | None = None, *,
                     model_name: str | None = None) -> TrainResult:
    """Train a tuned lens on ``config``'s texts, measure its held-out KL per layer against the
    logit lens's, and write it to ``out`` (when given)."""
    from mwork.lens.lenses import LogitLens

    config = config or TunedLensConfig()
    adapter = get_adapter(model)
    timing: dict[str, float] = {}
    start = time.time()
    train_windows, held_windows, specs = collect_windows(tokenizer, config)
    if not train_windows or not held_windows:
        raise ValueError(f"too little text for {config.window}-token windows (training {len(train_windows)}, "
                         f"held out {len(held_windows)}); lower --window or give more text")
    bos = tokenizer.bos_token_id is not None
    train = hidden_states(model, train_windows, config.batch_size, config.progress, skip_first=bos)
    held = hidden_states(model, held_windows, config.batch_size, config.progress, skip_first=bos)
    g = torch.Generator().manual_seed(config.seed + 1)
    held = held[torch.randperm(held.shape[0], generator=g)[:config.heldout_positions]]
    timing["states_seconds"] = round(time.time() - start, 2)

    start = time.time()
    rows = None
    if config.vocab == "restricted":
        rows = restricted_vocab(adapter, train, train_windows, config.vocab_top_k, seed=config.seed)
    timing["vocab_seconds"] = round(time.time() - start, 2)

    start = time.time()
    weight, bias, losses = train_translators(adapter, train, steps=config.steps, batch_positions=config.batch_positions,
                                             lr=config.lr, seed=config.seed, rows=rows, progress=config.progress)
    timing["train_seconds"] = round(time.time() - start, 2)
    name = model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
    meta = {"model": name, "family": adapter.family, "config": fingerprint(config)}
    lens = TunedLens(model, weight.cpu(), bias.cpu(), meta)

    start = time.time()
    kl_logit = heldout_kl(LogitLens(adapter), held)
    kl_tuned = heldout_kl(lens, held)
    timing["heldout_seconds"] = round(time.time() - start, 2)
    vocab_size = adapter.lm_head.weight.shape[0]
    report = {
        "format": FORMAT, "model": name, "config": fingerprint(config), "texts": specs,
        "train_tokens": int(train.shape[0]), "heldout_positions": int(held.shape[0]),
        "train_windows": len(train_windows), "heldout_windows": len(held_windows),
        "vocab": {"kind": config.vocab, "size": vocab_size if rows is None else int(rows.numel()), "full": vocab_size},
        "loss_first": losses[0] if losses else None, "loss_last": float(sum(losses[-10:]) / max(len(losses[-10:]), 1)),
        "heldout_kl": [{"layer": i, "kl_logit": a, "kl_tuned": b} for i, (a, b) in enumerate(zip(kl_logit, kl_tuned))],
        "timing": timing, "threads": torch.get_num_threads(),
    }
    result = TrainResult(lens, report)
    if out is not None:
        result.write(out)
    return result

