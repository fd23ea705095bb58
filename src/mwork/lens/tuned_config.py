"""``TunedLensConfig``: the settings of ``mwork lens train`` (:func:`mwork.lens.tuned.train_tuned_lens`)."""

from __future__ import annotations

from dataclasses import dataclass

from mwork.config import option

#: the built-in prose the tuned lens is trained on by default (``builtin:LANG``; held out: ``builtin:LANG:heldout``)
TRAIN_LANGS: tuple[str, ...] = ("en", "de", "fr", "es", "it", "pt", "ru", "zh", "ja", "ko")
VOCABS = ("restricted", "full")


def _codes(value, flag: str = "--langs") -> tuple[str, ...]:
    from mwork.files import parse_names

    return parse_names(value, flag=flag)


@dataclass(frozen=True)
class TunedLensConfig:
    """How a tuned lens is trained: one affine translator per lens layer (initialised to the
    identity), trained so that the decoded distribution matches the final layer's (KL)."""

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
    progress: bool = option(True, "show a progress bar", cli=False, record=False)

    def __post_init__(self) -> None:
        if not self.texts:
            object.__setattr__(self, "langs", _codes(self.langs))
            if not self.langs:
                raise ValueError("langs is empty; give at least one language of the built-in prose")
        for name in ("steps", "window", "windows_per_lang", "heldout_windows", "heldout_positions",
                     "batch_positions", "vocab_top_k", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.vocab not in VOCABS:
            raise ValueError(f"vocab must be one of {', '.join(VOCABS)}, got {self.vocab!r}")
