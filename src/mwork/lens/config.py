"""``LensConfig``: every setting of a logit-lens run, and the job ``mwork lens`` runs; it lives
with its run in :mod:`mwork.lens.pipeline` (this is its import path, as before)."""

from mwork.lens.pipeline import DEFAULT_LANGS, POSITIONS, LensConfig

__all__ = ["DEFAULT_LANGS", "POSITIONS", "LensConfig"]
