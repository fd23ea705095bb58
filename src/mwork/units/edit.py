"""The one intervention primitive: every edit of activations by units is registered here.

An edit changes the value ``u`` of some units (:mod:`mwork.units.base`: neurons, directions,
dictionary features) at their hook sites: ``u <- keep * u + shift`` (``affine``), ``u <- 0``
(``zero``) or ``u <- shift`` (``set``), at chosen token positions, optionally restoring each
edited hidden state's norm. Deactivation (``mwork.deactivate``), steering (``mwork.steer``),
mean-patching and random baselines are clients: they say which units and what values, and
:class:`Intervention` places the edits through ``mwork.hooks`` (one ``Hooks.edit`` per group, in
registration order, removed on exit even after an error).

**Positions.** ``positions=None``: every token of every call, padding included, as editing the
weights would (deactivation, mean-patching). ``"all"``, ``"prompt"`` or ``"generated"``: a
:class:`PositionTracker` reads each forward call of the model (its ``input_ids``,
``attention_mask`` and cache): a call that starts a sequence is the prompt pass; a cached step and
a call that repeats the previous sequence plus one token (``generate(use_cache=False)``) continue
it, so the positions are the same with and without the KV cache; padding (``attention_mask ==
0``) is never edited.

**Rows.** ``rows``: only these rows of each batch are edited (the others run as without the
edit), so that several settings share one batched ``generate``: each its own intervention on its
own rows, entered together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from mwork.hooks import Hooks, Site
from mwork.units.base import OPS, UnitGroup

POSITIONS: tuple[str, ...] = ("all", "prompt", "generated")


def check_layers(num_layers: int, layers: Iterable[int] | None) -> None:
    """The one check of layer numbers a user gives: each in 0..num_layers - 1."""
    if layers is None:
        return
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{num_layers - 1}")


# ---- which positions of a forward call are edited ------------------------------------------


class PositionTracker:
    """Follows the model's forward calls and says which (row, token) positions of the current one
    are steered (see the module docstring), in ``rows`` of the batch when given. ``selection(x)``:
    None (every position), False (none) or a (batch, tokens) bool tensor."""

    def __init__(self, positions: str, rows: Iterable[int] | None = None):
        self.positions = positions
        self.rows = None if rows is None else sorted({int(r) for r in rows})
        if self.rows is not None and (not self.rows or self.rows[0] < 0):
            raise ValueError(f"rows must be batch row numbers (0, 1, ...), at least one; got {rows!r}")
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
        if self.rows is not None:
            if self.rows[-1] >= batch:
                raise ValueError(f"an edit for rows {self.rows} of a batch of {batch} rows: give rows 0..{batch - 1}")
            chosen = torch.zeros(batch, dtype=torch.bool, device=device)
            chosen[self.rows] = True
            select = chosen[:, None].expand(batch, width) if select is None else select & chosen[:, None]
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
                raise RuntimeError("an edit at positions=... (mwork.steer, Intervention) needs the model's own forward call (model(...) or "
                                   "model.generate(...)) to know which tokens are the prompt")
            return select
        if x.dim() >= 3 and tuple(x.shape[:2]) == tuple(select.shape):
            return select.to(x.device)
        if x.dim() == 2 and x.shape[0] == select.numel():
            return select.reshape(-1).to(x.device)
        raise RuntimeError(f"mwork edit: a tensor of shape {tuple(x.shape)} does not match the current forward "
                           f"call's {tuple(select.shape)} tokens (was the decoder called outside model(...)?)")


def model_call_site(model: nn.Module) -> Site:
    """The model's own forward call, read as ``(args, kwargs)``."""
    return Site("model.call", None, model, "in", arg="input_ids", context=lambda args, kwargs: (args, kwargs))


# ---- edits ----------------------------------------------------------------------------------


@dataclass
class UnitEdit:
    """Change the units of ``group``: ``op`` (``affine``, ``zero``, ``set``), ``keep`` (a number
    or one per unit) and ``shift`` (one per unit: the added value, or the set value)."""

    group: UnitGroup
    op: str = "affine"
    keep: float | torch.Tensor = 1.0
    shift: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown edit {self.op!r}; edits are {', '.join(OPS)}")
        if self.op == "set" and self.shift is None:
            raise ValueError("a 'set' edit needs the values to set (shift)")


class _Placed:
    """One edit as a hook function: the group's editor, then the norm and the positions."""

    def __init__(self, edit: UnitEdit, tracker: PositionTracker | None, keep_norm: bool):
        self.site = edit.group.site
        self.fn = edit.group.editor(edit.op, edit.keep, edit.shift)
        self.tracker, self.keep_norm = tracker, keep_norm

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        select = None if self.tracker is None else self.tracker.selection(x)
        if select is False:
            return x
        new = self.fn(x)
        if self.keep_norm:
            wide = torch.promote_types(x.dtype, torch.float32)
            old_norm = x.to(wide).norm(dim=-1, keepdim=True)
            new_norm = new.to(wide).norm(dim=-1, keepdim=True)
            ratio = torch.where(new_norm > 0, old_norm / new_norm.clamp_min(torch.finfo(wide).tiny), 1.0)
            new = (new.to(wide) * ratio).to(x.dtype)
        if select is not None:
            new = torch.where(select[..., None], new, x)
        return new


class Intervention:
    """Context manager: inside it, ``edits`` apply to ``model`` (see the module docstring).
    ``positions``: None (every token, padding included) or one of :data:`POSITIONS`;
    ``keep_norm``: rescale each edited value to its norm before the edit; ``rows``: only these
    batch rows (module docstring; needs ``positions``). Deactivation, steering and mean-patching
    are subclasses that turn their settings into edits."""

    what = "intervention"

    def __init__(self, model: nn.Module, edits: Sequence[UnitEdit], *, positions: str | None = None,
                 keep_norm: bool = False, rows: Iterable[int] | None = None):
        if positions is not None and positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
        if rows is not None and positions is None:
            raise ValueError("rows need positions ('all', 'prompt' or 'generated'): the rows are read from the model's call")
        self.model, self.edits, self.positions = model, list(edits), positions
        self.tracker = PositionTracker(positions, rows) if positions is not None else None
        self.hooks = Hooks()
        if self.tracker is not None and self.edits:
            self.hooks.read(model_call_site(model), self.tracker)
        for edit in self.edits:
            placed = _Placed(edit, self.tracker, keep_norm)
            for site, read in getattr(edit.group, "reads", ()):  # a transcoder reads its input elsewhere
                self.hooks.read(site, read)
            self.hooks.edit(placed.site, placed)

    @property
    def active(self) -> bool:
        return self.hooks.active

    def __enter__(self) -> "Intervention":
        if self.active:
            raise RuntimeError(f"this {self.what} context is already active; create a new one to nest")
        if self.tracker is not None:
            self.tracker.reset()
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.__exit__(*exc)
