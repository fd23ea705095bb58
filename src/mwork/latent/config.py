"""``LatentConfig``: the settings of ``mwork latent``, and its job; it lives with its run in
:mod:`mwork.latent.pipeline` (this is its import path, as before)."""

from mwork.latent.pipeline import DEFAULT_TARGETS, LatentConfig

__all__ = ["DEFAULT_TARGETS", "LatentConfig"]
