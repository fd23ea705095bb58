"""Steer the output language: turn a language's neurons *on*, at run time, through hooks.

``with mwork.steer(model, neurons, mode="set", strength=1.0): model.generate(...)`` edits, at
each neuron ``j`` of the set (the neuron sites of ``mwork.hooks``: ``ffn.in``, ``q.out``,
``k.out``, ``v.out``), its value ``x_j`` at the chosen token positions, with the strength
``alpha`` and ``s_j``, a statistic of the *target language's* activations of that neuron
(``stat``: ``mean``, ``median`` or a quantile ``q0.9``; measured once from a corpus, stored
with the set: :mod:`mwork.neurons.statistics`):

* ``set``:   ``x_j <- (1 - alpha) * x_j + alpha * s_j`` (alpha 1: replaced by ``s_j``; alpha 0:
  unchanged; alpha > 1 goes past the statistic);
* ``add``:   ``x_j <- x_j + alpha * s_j``;
* ``scale``: ``x_j <- alpha * x_j`` (needs no statistic; alpha 1: unchanged; 0: switched off).

What the papers did, in these terms: Kojima et al. (2024) fixed their neurons to the median of
the target language's activations (``set``, ``stat="median"``, alpha 1); LAPE (Tang et al.
2024) switches the source language's neurons off (``off=``) and, in the paper, replaces the
target's neurons by their mean activation (``set``, ``mean``, alpha 1; its released code only
zeroes neurons); Gurgurov et al. (2025, "Language Arithmetics") add a multiple of the target
language's mean activation (``add``, ``mean``, alpha = their strength) and switch the source
language off at the same time; their "replacement" baseline is ``set`` with alpha 1. All three
intervene on the FFN activation (the SiLU output); mwork's FFN neurons are the down
projection's input, ``act(gate) * up`` (``ffn.in``), and Q/K/V neurons are raw projection
channels.

**Positions.** ``positions="all"`` (default), ``"prompt"`` or ``"generated"``. The context
reads each forward call of ``model`` (its ``input_ids``, ``attention_mask`` and cache): a call
that starts a sequence is the prompt pass; a cached step (one token on a cache) and a call that
repeats the previous sequence plus one token (``generate(use_cache=False)``) continue it, so
the positions, and the generations, are the same with and without the KV cache. Generated
tokens are the columns past the (left-padded) prompt; padding (``attention_mask == 0``) is never
steered.

**Switching off at the same time.** ``off``: neurons (e.g. the source language's) set to exactly
zero at the same positions, layers and kinds; their edits are registered after the steering
edits, so a neuron in both sets is off. An ``off`` set holding every steered neuron (e.g. the
steered set itself) would cancel the steering entirely: it is refused (``steered_and_off``).

**Order.** Edits at one site run in registration order (``mwork.hooks``): inside
``mwork.deactivate`` the deactivation edits first, then these; in the other nesting, these
first. Leaving the context removes every hook: the model computes bit-identically to before.
Strength 0 in ``set`` / ``add`` and 1 in ``scale`` register no steering edit at all (the edit
would be the identity).

Hook primitive written here (not in ``mwork.hooks``): :class:`_CallTracker` reads the model's
own forward call through a :class:`mwork.hooks.Site` with a ``context`` on the model module;
the edits are ordinary ``Hooks.edit`` clients.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from mwork.hooks import DeviceCache, Hooks, Site, module_device, site_width
from mwork.intervene import parse_kinds, parse_layers, sites_of
from mwork.models.adapters import get_adapter
from mwork.neurons.neuronset import NeuronSet, as_neuron_set

MODES: tuple[str, ...] = ("set", "add", "scale")
POSITIONS: tuple[str, ...] = ("all", "prompt", "generated")
NEEDS_STATISTIC = ("set", "add")


def is_identity(mode: str, strength: float) -> bool:
    """Whether ``mode`` at ``strength`` leaves every value unchanged (no edit is registered)."""
    return float(strength) == (1.0 if mode == "scale" else 0.0)


FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max


def strength_problem(values: Iterable[float]) -> str | None:
    """Why strengths cannot be used (None when they can): not finite, or beyond what float32 can
    hold -- the activations would overflow before anything is measured."""
    values = [float(v) for v in values]
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        return f"{bad[0]!r} is not a finite number: give finite strengths"
    huge = [v for v in values if abs(v) > FLOAT32_MAX]
    if huge:
        return (f"{huge[0]:g} is beyond float32's range (|strength| <= {FLOAT32_MAX:.3g}): the edited activations "
                "could not be represented; give sensible strengths (e.g. 0,1,2,4)")
    return None


def parse_stat(name: str) -> str:
    """``mean``, ``median`` or a quantile ``qX`` (0 <= X <= 1, e.g. ``q0.9``), canonical form."""
    text = str(name).strip().lower()
    if text in ("mean", "median"):
        return text
    if text.startswith("q"):
        try:
            q = float(text[1:])
        except ValueError:
            q = math.nan
        if 0.0 <= q <= 1.0:
            return f"q{q!r}"
    raise ValueError(f"unknown statistic {name!r}: use mean, median or a quantile such as q0.9 (0 <= q <= 1)")


def steered_and_off(neurons: NeuronSet, off: NeuronSet | None) -> int:
    """How many steered neurons are also in ``off`` (its zeros come after the steering edits: those
    neurons are switched off, not steered). A ValueError when that is every steered neuron (e.g.
    ``off`` is the steered set itself): the off edit would cancel the steering entirely while the
    results are labelled as steering."""
    if off is None or neurons.count() == 0:
        return 0
    both = (neurons & off).count()
    if both == neurons.count():
        raise ValueError(f"every steered neuron ({both}) is also in the off set, whose zeros come after the steering "
                         "edits and cancel it: the results would be the switched-off model labelled as steering; "
                         "give --off another language's set (e.g. the source language's)")
    return both


# ---- which positions of a forward call are steered ---------------------------------------------


class _CallTracker:
    """Follows the model's forward calls and says which (row, token) positions of the current one
    are steered (see the module docstring). ``selection(x)``: None (every position), False (none)
    or a (batch, tokens) bool tensor."""

    def __init__(self, positions: str):
        self.positions = positions
        self.reset()

    def reset(self) -> None:
        """Forget the sequence followed so far (the next call starts a new one)."""
        self.prompt_len: int | None = None
        self.seq_len = 0
        self.seq_ids: torch.Tensor | None = None
        self._select: Any = None
        self._shape: tuple[int, int] | None = None

    def __call__(self, context: tuple[tuple, dict]) -> None:
        args, kwargs = context
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        ref = ids if ids is not None else embeds
        if ref is None:
            self._select, self._shape = None, None
            return
        batch, width = int(ref.shape[0]), int(ref.shape[1])
        mask = kwargs.get("attention_mask")
        mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        if mask is not None:
            past = int(mask.shape[1]) - width
        elif cache is not None and hasattr(cache, "get_seq_length"):
            past = int(cache.get_seq_length())
        else:
            past = 0
        if past == 0:
            continues = (ids is not None and self.seq_ids is not None and self.prompt_len is not None
                         and self.seq_ids.shape[0] == batch and width == self.seq_len + 1
                         and torch.equal(ids[:, :-1], self.seq_ids))
            if not continues:
                self.prompt_len = width
            self.seq_ids = None if ids is None else ids.detach().clone()
        else:
            if self.prompt_len is None or past != self.seq_len:  # a cache made outside this context
                self.prompt_len = past
                self.seq_ids = None
            elif self.seq_ids is not None and ids is not None:
                self.seq_ids = torch.cat([self.seq_ids, ids.detach().to(self.seq_ids.device)], dim=1)
        self.seq_len = past + width
        self._shape = (batch, width)
        self._select = self._selection(batch, width, past, mask, ref.device)

    def _selection(self, batch: int, width: int, past: int, mask: torch.Tensor | None, device: torch.device) -> Any:
        start, prompt = past, int(self.prompt_len or 0)
        keep = None  # None: every column of this call
        if self.positions == "prompt":
            if start >= prompt:
                return False
            if start + width > prompt:
                keep = torch.arange(start, start + width, device=device) < prompt
        elif self.positions == "generated":
            if start + width <= prompt:
                return False
            if start < prompt:
                keep = torch.arange(start, start + width, device=device) >= prompt
        select = None if keep is None else keep[None, :].expand(batch, width)
        if mask is not None:
            real = mask[:, start:start + width].to(device=device, dtype=torch.bool)
            if not bool(real.all()):
                select = real if select is None else select & real
        if select is not None and not bool(select.any()):
            return False
        return select

    def selection(self, x: torch.Tensor) -> Any:
        select = self._select
        if select is None or select is False:
            if select is None and self.positions != "all" and self._shape is None:
                raise RuntimeError("mwork.steer(positions=...) needs the model's own forward call (model(...) or "
                                   "model.generate(...)) to know which tokens are the prompt")
            return select
        if x.dim() >= 3 and tuple(x.shape[:2]) == tuple(select.shape):
            return select.to(x.device)
        if x.dim() == 2 and x.shape[0] == select.numel():
            return select.reshape(-1).to(x.device)
        raise RuntimeError(f"mwork.steer: a tensor of shape {tuple(x.shape)} does not match the current forward "
                           f"call's {tuple(select.shape)} tokens (was the decoder called outside model(...)?)")


def _model_call_site(model: nn.Module) -> Site:
    """The model's own forward call, read as ``(args, kwargs)``."""
    return Site("model.call", None, model, "in", arg="input_ids", context=lambda args, kwargs: (args, kwargs))


# ---- the edits ----------------------------------------------------------------------------------


class _ChannelSteer:
    """One edit per hooked module: features ``features`` of its tensor become ``keep * x + shift``
    (``zero``: exact zeros, even where the value is inf or NaN) at the positions the tracker
    selects. Applied as two whole-tensor operations with per-feature vectors (1 and 0 at the other
    features, which therefore keep their values), so a step costs no gather or scatter."""

    def __init__(self, site: Site, features: torch.Tensor, keep: float, shift: torch.Tensor | None,
                 calls: _CallTracker, *, zero: bool = False):
        self.site, self.calls, self.zero = site, calls, zero
        if torch.unique(features).numel() != features.numel():
            raise ValueError(f"a neuron appears twice at {site!r}")
        device = module_device(site.module)
        width = site_width(site)
        self.features = features
        self._index = DeviceCache(features.to(device))
        self._keep = self._shift = None
        if not zero:
            if float(keep) != 1.0:
                vec = torch.ones(width, dtype=torch.float64)
                vec[features] = float(keep)
                self._keep = DeviceCache(vec.to(device), keep_dtype=False)
            if shift is not None:
                vec = torch.zeros(width, dtype=torch.float64)
                vec[features] = shift.to(torch.float64)
                self._shift = DeviceCache(vec.to(device), keep_dtype=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        select = self.calls.selection(x)
        if select is False:
            return x
        if self.zero:
            new = x.index_fill(-1, self._index.on(x), 0)
        else:
            new = x if self._keep is None else x * self._keep.on(x)
            if self._shift is not None:
                new = new + self._shift.on(x)
        if select is not None:
            new = torch.where(select[..., None], new, x)
        return new


class Steering:
    """Context manager returned by :func:`steer`; see there and the module docstring.

    Attributes: ``neurons`` (the steered set, after restriction), ``off`` (the switched-off set or
    None), ``mode``, ``strength``, ``stat``, ``positions``, ``count`` (neurons steered),
    ``active``."""

    def __init__(self, model: nn.Module, neurons: NeuronSet | str | Path, mode: str = "set", strength: float = 1.0,
                 *, stat: str = "mean", layers: str | Iterable[int] | None = None,
                 kinds: str | Iterable[str] | None = None, positions: str = "all",
                 off: NeuronSet | str | Path | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown steering mode {mode!r}; use one of {', '.join(MODES)}")
        strength = float(strength)
        problem = strength_problem([strength])
        if problem:
            raise ValueError(f"strength {problem}")
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        adapter = get_adapter(model)
        full = as_neuron_set(neurons, model)
        layer_list, kind_list = parse_layers(layers), parse_kinds(kinds)
        if layer_list is not None:
            bad = [i for i in layer_list if not 0 <= i < adapter.num_layers]
            if bad:
                raise ValueError(f"layers {bad} out of range: the model has layers 0..{adapter.num_layers - 1}")
        restricted = layer_list is not None or kind_list is not None
        ns = full.restrict(layer_list, kind_list) if restricted else full
        off_set = None
        if off is not None:
            off_set = as_neuron_set(off, model)
            off_set = off_set.restrict(layer_list, kind_list) if restricted else off_set
        self.model, self.neurons, self.off = model, ns, off_set
        self.mode, self.strength, self.positions = mode, strength, positions
        self.stat = parse_stat(stat)
        self.count = ns.count()
        self.identity = is_identity(mode, strength)
        if not self.identity:
            steered_and_off(ns, off_set)
        self._calls = _CallTracker(positions)
        self._hooks = Hooks()
        edits = [] if self.identity else self._steer_edits(adapter, full, ns)
        if off_set is not None:
            edits += self._off_edits(adapter, off_set)
        if edits:
            self._hooks.read(_model_call_site(model), self._calls)
        for edit in edits:
            self._hooks.edit(edit.site, edit)

    def _values(self, full: NeuronSet, kind: str, layer: int, channels: torch.Tensor) -> torch.Tensor:
        values = full.statistic(self.stat, kind)
        if values is None:
            have = ", ".join(full.statistic_names()) or "none"
            raise ValueError(f"mode {self.mode!r} needs the target language's {self.stat} activation of every "
                             f"neuron, and this NeuronSet carries no {self.stat!r} statistic for {kind} (it has: "
                             f"{have}); measure it with mwork.neurons.statistics.add_statistics(...) or give "
                             "`mwork steer --corpus TEXTS`")
        v = values[layer, channels].to(torch.float64)
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"the {self.stat} statistic of some {kind} neurons of layer {layer} was not measured "
                             "(NaN): measure the statistics for this set again")
        return v

    def _steer_edits(self, adapter: Any, full: NeuronSet, ns: NeuronSet) -> list[_ChannelSteer]:
        a = self.strength
        edits = []
        for site, parts in sites_of(adapter, ns):
            features = torch.cat([f for *_, f in parts])
            s = (torch.cat([self._values(full, kind, layer, c) for kind, layer, c, _ in parts])
                 if self.mode in NEEDS_STATISTIC else None)
            if self.mode == "set":
                keep, shift = 1.0 - a, a * s
            elif self.mode == "add":
                keep, shift = 1.0, a * s
            else:
                keep, shift = a, None
            edits.append(_ChannelSteer(site, features, keep, shift, self._calls))
        return edits

    def _off_edits(self, adapter: Any, off: NeuronSet) -> list[_ChannelSteer]:
        return [_ChannelSteer(site, torch.cat([f for *_, f in parts]), 0.0, None, self._calls,
                              zero=True) for site, parts in sites_of(adapter, off)]

    @property
    def active(self) -> bool:
        return self._hooks.active

    def __enter__(self) -> "Steering":
        if self.active:
            raise RuntimeError("this steering context is already active; create a new one to nest")
        self._calls.reset()
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    def __repr__(self) -> str:
        off = f", off={self.off.count()}" if self.off is not None else ""
        return (f"Steering({self.neurons!r}, mode={self.mode}, strength={self.strength}, stat={self.stat}, "
                f"positions={self.positions}{off}, active={self.active})")


def steer(model: nn.Module, neurons: NeuronSet | str | Path, mode: str = "set", strength: float = 1.0, *,
          stat: str = "mean", layers: str | Iterable[int] | None = None, kinds: str | Iterable[str] | None = None,
          positions: str = "all", off: NeuronSet | str | Path | None = None) -> Steering:
    """Context manager: inside it, ``neurons`` of ``model`` are steered (module docstring)::

        with mwork.steer(model, "neurons/zh.safetensors", mode="set", strength=1.0):
            out = model.generate(**batch, max_new_tokens=24)

    ``mode``: ``set``, ``add`` or ``scale``; ``strength``: alpha; ``stat``: which stored statistic
    of the target language (``mean``, ``median``, ``q0.9`` ...; see
    :func:`mwork.neurons.statistics.add_statistics`); ``layers`` ("0-5") and ``kinds`` ("ffn",
    "attn") restrict the set, and ``off``; ``positions``: ``all``, ``prompt`` or ``generated``;
    ``off``: neurons switched off at the same time (e.g. the source language's). Works in plain
    forward passes and in ``generate`` with or without the KV cache, batched with left padding."""
    return Steering(model, neurons, mode, strength, stat=stat, layers=layers, kinds=kinds, positions=positions, off=off)
