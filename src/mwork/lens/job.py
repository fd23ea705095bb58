"""What the lens jobs (``mwork lens``, ``mwork lens train``, ``mwork latent``) add to
:mod:`mwork.jobs`: model options kept out of their fingerprint, a timed model load, and their
configs' lower bounds."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mwork.config import option
from mwork.jobs import Job, ModelOptions


def _unrecorded(name: str) -> Any:
    f = ModelOptions.__dataclass_fields__[name]
    return option(f.default, f.metadata["help"], record=False)


@dataclass(frozen=True, kw_only=True)
class LensModelOptions(ModelOptions):
    """:class:`ModelOptions` whose model and dtype stay out of the fingerprint: the lens, tuned
    lens and latent files name their model themselves, and their recorded ``config`` (and the
    demo's cache keys) never held them."""

    model: str = _unrecorded("model")
    dtype: str | None = _unrecorded("dtype")


class TimedJob(Job):
    """A job whose result reports how long its model took to load: ``compute`` is given
    ``load_seconds`` (None when the model was given to ``run``)."""

    def run(self, model: Any = None, tokenizer: Any = None) -> Any:
        if model is not None:
            return super().run(model, tokenizer)
        self.check()
        start = time.time()
        model, tokenizer = self.load()  # type: ignore[attr-defined]
        return self.compute(model, tokenizer, load_seconds=time.time() - start)  # type: ignore[call-arg]


def check_at_least(config: Any, bounds: dict[str, int]) -> None:
    """``ValueError`` for the first field of ``bounds`` (name -> lowest value) below its bound
    (a None field is not checked)."""
    for name, low in bounds.items():
        value = getattr(config, name)
        if value is not None and value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
