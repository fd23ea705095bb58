"""Which neurons are important: the per-document rule and the rule across documents.

Pure functions of score tensors; no model, no I/O. Detection (``mwork.neurons.detect``) feeds
them the per-document importance of every neuron.

Per document, a rule marks the important neurons of each layer and kind: the top fraction
(default), the top k, or importance above an absolute epsilon (the paper). A neuron whose
importance is zero is never important, whatever the rule: zero means that switching it off
changes nothing in that document (for example every Q/K channel of a one-token document, where
each query has one key to attend to). A document in which *every* neuron of a kind scores zero
cannot tell the neurons of that kind apart; it is "unscorable" for that kind and is left out of
that kind's count of documents.

Across documents, a neuron is kept if it is important in at least ``min_doc_count`` of the n
documents that could be scored for its kind: all of them (the paper) or a fraction q.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from mwork.models.adapters import KINDS

# Default per-document rule: the top 20 % of each layer's neurons of each kind. The paper's
# absolute epsilon depends on the model, the layer and the kind (norms grow with depth and
# differ between FFN and attention), so no single value works out of the box; a per-layer,
# per-kind fraction is scale-free and gives every layer the same budget. 20 % is about the
# reference code's budget for 7B models (2000 of 11008 FFN and 1000 of 4096 attention
# channels per layer).
DEFAULT_TOP_FRACTION = 0.2
# reference_compat: the reference code's per-layer top-k (capped at the layer's size).
REFERENCE_TOP_K: dict[str, int] = {"ffn": 12000, "q": 2000, "k": 2000, "v": 2000}
RULES = ("top_fraction", "top_k", "epsilon")


@dataclass(frozen=True)
class DocumentRule:
    """Which neurons count as important in one document.

    ``top_fraction``: the ceil(F * n) highest-scoring of the n neurons of each layer and kind;
    ``top_k``: the K highest of each layer and kind (capped at n); ``epsilon``: importance > E
    (the paper). ``value`` may be one number or one per kind. Ties go to the lower index; only
    positive scores are ever selected (fewer than k when fewer are positive).
    """

    name: str
    value: float | Mapping[str, float]

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise ValueError(f"unknown per-document rule {self.name!r}; use top_fraction, top_k or epsilon")
        if isinstance(self.value, Mapping):
            unknown = [k for k in self.value if k not in KINDS]
            if unknown:
                raise ValueError(f"the {self.name} rule names unknown kind(s) {', '.join(map(repr, unknown))}; "
                                 f"kinds are {', '.join(KINDS)}")
            if not self.value:
                raise ValueError(f"the {self.name} rule gives no value")
        values = self.value.values() if isinstance(self.value, Mapping) else [self.value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"the {self.name} rule needs numbers, got {v!r}")
            if self.name == "top_fraction" and not 0 < v <= 1:
                raise ValueError(f"top fraction must be in (0, 1], got {v}")
            if self.name == "top_k" and (int(v) != v or v < 1):
                raise ValueError(f"top-k must be a positive integer, got {v}")
            if self.name == "epsilon" and not math.isfinite(v):
                raise ValueError(f"epsilon must be a finite number, got {v}")

    def for_kind(self, kind: str) -> float:
        if isinstance(self.value, Mapping):
            if kind not in self.value:
                raise ValueError(f"the {self.name} rule gives no value for kind {kind!r}")
            return self.value[kind]
        return self.value

    def select(self, scores: torch.Tensor, kind: str) -> torch.Tensor:
        """(docs, layers, n) scores -> boolean masks of the same shape (positive scores only)."""
        v = self.for_kind(kind)
        positive = scores > 0
        if self.name == "epsilon":
            return (scores > v) & positive
        n = scores.shape[-1]
        k = min(int(v), n) if self.name == "top_k" else min(n, math.ceil(v * n - 1e-9))
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
        mask = torch.zeros(scores.shape, dtype=torch.bool)
        return mask.scatter_(-1, order, True) & positive

    def selects_everything(self, kind: str, layer_size: int) -> bool:
        """True where the rule keeps every neuron with a positive score (top-k >= the layer
        size, a top fraction of 1, or epsilon <= 0): then it tells no neurons apart."""
        v = self.for_kind(kind)
        if self.name == "top_k":
            return v >= layer_size
        if self.name == "top_fraction":
            return math.ceil(v * layer_size - 1e-9) >= layer_size
        return v <= 0

    def describe(self) -> dict[str, Any]:
        value = dict(self.value) if isinstance(self.value, Mapping) else self.value
        return {"rule": self.name, self.name: value}


def document_rule(
    *,
    epsilon: float | Mapping[str, float] | None = None,
    top_fraction: float | Mapping[str, float] | None = None,
    top_k: int | Mapping[str, int] | None = None,
    reference_compat: bool = False,
) -> DocumentRule:
    """The per-document rule from at most one of ``epsilon`` / ``top_fraction`` / ``top_k``;
    none: ``top_fraction=0.2``, or the reference's top-k with ``reference_compat``."""
    given = {n: v for n, v in (("epsilon", epsilon), ("top_fraction", top_fraction), ("top_k", top_k)) if v is not None}
    if len(given) > 1:
        raise ValueError(f"give at most one per-document rule, got {', '.join(given)}")
    if given:
        name, value = next(iter(given.items()))
        return DocumentRule(name, value)
    if reference_compat:
        return DocumentRule("top_k", dict(REFERENCE_TOP_K))
    return DocumentRule("top_fraction", DEFAULT_TOP_FRACTION)


# ---- across documents -------------------------------------------------------------------------


def scorable(scores: torch.Tensor) -> torch.Tensor:
    """(docs, layers, n) scores of one kind -> (docs,) True where some neuron scores above zero."""
    return (scores > 0).flatten(1).any(dim=1)


def count_important(rule: DocumentRule, kind: str, scores: torch.Tensor) -> tuple[torch.Tensor, list[bool]]:
    """(docs, layers, n) scores of one kind -> (per neuron: in how many of the documents it is
    important, int32 (layers, n); per document: whether it is scorable for this kind).

    An unscorable document marks nothing (zero scores are never selected), so it adds nothing
    to the counts; the caller leaves it out of the kind's number of documents."""
    masks = rule.select(scores, kind)
    return masks.sum(dim=0, dtype=torch.int32), scorable(scores).tolist()


def min_doc_count(min_doc_fraction: float, n_docs: int) -> int:
    """Documents a neuron must be important in: ceil(q * n), at least 1."""
    return max(1, math.ceil(min_doc_fraction * n_docs - 1e-9))


def kept(counts: torch.Tensor, n_docs: int, min_doc_fraction: float) -> torch.Tensor:
    """The neurons important in at least ``min_doc_count`` of ``n_docs`` documents (none if no
    document could be scored)."""
    if n_docs == 0:
        return torch.zeros(counts.shape, dtype=torch.bool)
    return counts >= min_doc_count(min_doc_fraction, n_docs)


def kept_masks(counts: Mapping[str, torch.Tensor], n_docs: Mapping[str, int],
               min_doc_fraction: float) -> dict[str, torch.Tensor]:
    """Per kind: the kept masks from the document counts and that kind's number of documents."""
    return {k: kept(counts[k], n_docs[k], min_doc_fraction) for k in counts}
