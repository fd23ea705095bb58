"""Moved to :mod:`mwork.files` (kept until the branches that import it here are merged)."""

from mwork.files import *  # noqa: F401,F403
