"""One lens by name: ``make_lens("logit" | "tuned" | "patchscope", model, ...)``. Apart from
:mod:`mwork.lens.lenses`, which the tuned lens builds on, so that neither imports the other."""

from __future__ import annotations

from mwork.lens.lenses import IDENTITY_PROMPT, LENSES, Lens, LogitLens, PatchscopeLens
from mwork.lens.tuned import TunedLens
from mwork.models.adapters import get_adapter

__all__ = ["make_lens"]


def make_lens(name: str, model, tokenizer=None, *, tuned_lens: str | None = None,
              patchscope_prompt: str = IDENTITY_PROMPT) -> Lens:
    """The lens called ``name`` (:data:`LENSES`) for ``model``; ``tuned`` needs ``tuned_lens``
    (a folder written by ``mwork lens train``), ``patchscope`` the tokenizer."""
    if name == "logit":
        return LogitLens(get_adapter(model))
    if name == "tuned":
        if not tuned_lens:
            raise ValueError("the tuned lens needs --tuned-lens DIR (a folder written by `mwork lens train`)")
        return TunedLens.load(tuned_lens, model)
    if name == "patchscope":
        if tokenizer is None:
            raise ValueError("the patchscope lens needs the tokenizer")
        return PatchscopeLens(model, tokenizer, patchscope_prompt)
    raise ValueError(f"unknown lens {name!r}; choose one of {', '.join(LENSES)}")
