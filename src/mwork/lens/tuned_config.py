"""``TunedLensConfig``: the settings of ``mwork lens train``, and its job; it lives with the
training in :mod:`mwork.lens.tuned` (this is its import path, as before)."""

from mwork.lens.tuned import TRAIN_LANGS, VOCABS, TunedLensConfig

__all__ = ["TRAIN_LANGS", "VOCABS", "TunedLensConfig"]
