"""One rule for logits that cannot be measured, in every run (steering, perplexity, scoring).

An edit that is too strong (``mwork steer --strengths 1e30``, ``--scale 1e30``) or a model that
overflows its dtype makes its activations overflow: the logits come out NaN / inf, or -- when a
norm's variance overflowed and zeroed the hidden state -- all equal. Ranked or averaged, such
logits look like results (every token ties for rank 1; a uniform distribution has perplexity =
vocabulary size), so they are found here and reported as non-finite, never measured.
"""

from __future__ import annotations

import torch

NONFINITE = ("non-finite logits (NaN or inf, or all equal: the activations overflowed the model's number "
             "format)")


class NonFiniteError(ValueError):
    """A measurement met non-finite logits (:data:`NONFINITE`): there is no number to report."""


def unusable_logits(logits: torch.Tensor) -> torch.Tensor:
    """For logits ``(..., vocab)``: a bool ``(...)``, True where the position's logits cannot be
    measured -- any NaN, no finite maximum (+inf, or all -inf) or all equal. (-inf at some tokens,
    e.g. a masked vocabulary, is a probability of 0 and fine.)"""
    lg = logits.detach()
    top = lg.amax(-1)
    return torch.isnan(lg).any(-1) | ~torch.isfinite(top) | (top == lg.amin(-1))
