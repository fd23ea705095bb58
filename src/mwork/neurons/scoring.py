"""Per-document importance of a block of documents: windows, length-sorted batches, retries.

Inside a block, windows are sorted by length (longest first, ties by document and window
number) and batched, so the batches depend only on the block. A document's importance of a
neuron is sqrt(sum over its windows of the squared window importance): the norm of Eq. 1 over
all its tokens as the model sees them in windows (for Q/K: the Frobenius norm over the
windows' attention matrices).

A batch whose scoring raises is retried one window at a time, so that only the failing
documents are lost (reported by number); windows whose scores come back non-finite in a padded
batch (some models give NaN for real tokens of padded batches, e.g. eager attention in
float64 with fully masked padding rows) are scored again without padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from mwork.models.loading import input_device
from mwork.neurons.windows import Window, Windowing
from mwork.texts import is_empty

Scorer = Callable[..., Mapping[str, torch.Tensor]]


@dataclass
class BlockScores:
    """What scoring a block gave: each scored document's importance per kind ((layers, n),
    float64, finite), in document order, and the empty and failed documents."""

    scores: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    empty: list[int] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BlockScorer:
    """Scores blocks of documents with ``scorer(model, batch, kinds=kinds)``."""

    model: torch.nn.Module
    tokenizer: Any
    scorer: Scorer
    kinds: tuple[str, ...]
    windowing: Windowing
    batch_size: int
    log: Callable[[str], None] = lambda msg: None

    def __call__(self, start: int, texts: Sequence[str]) -> BlockScores:
        """Score ``texts``, documents ``start``, ``start + 1``, ... of the corpus."""
        out = BlockScores()
        errors: dict[int, str] = {}
        windows = self._windows(start, texts, out, errors)
        sumsq = self._sum_of_squares(windows, errors)
        for doc in sorted(sumsq):
            if doc in errors:
                continue
            scores = {k: sumsq[doc][k].sqrt() for k in self.kinds}
            if not all(torch.isfinite(s).all() for s in scores.values()):
                errors[doc] = "importance is not finite (NaN or inf; try float32 or a shorter max_length)"
                continue
            out.scores[doc] = scores
        for doc in sorted(errors):
            message = errors[doc][:500]
            out.failed.append({"index": doc, "error": message})
            self.log(f"document {doc} failed and is not counted: {message}")
        return out

    def _windows(self, start: int, texts: Sequence[str], out: BlockScores, errors: dict[int, str]) -> list[Window]:
        windows: list[Window] = []
        lengths: dict[int, int] = {}
        for j, text in enumerate(texts):
            doc = start + j
            if is_empty(text):
                out.empty.append(doc)
                self.log(f"document {doc} is empty; it is not counted")
                continue
            try:
                ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            except Exception as err:  # noqa: BLE001 - reported by number, the run goes on
                errors[doc] = f"tokenizer: {type(err).__name__}: {err}"
                continue
            if not ids:
                out.empty.append(doc)
                self.log(f"document {doc} has no tokens; it is not counted")
                continue
            lengths[doc] = len(ids)
            windows.extend(self.windowing.split(doc, ids))
        # a document far longer than the others of its block: warned about (it alone takes the time)
        self.windowing.survey(lengths, f"documents {start}-{start + len(texts) - 1}")
        windows.sort(key=lambda w: (-len(w.ids), w.doc, w.part))
        return windows

    def _run(self, windows: list[Window]) -> dict[str, torch.Tensor]:
        device = input_device(self.model)
        batch = {k: v.to(device) for k, v in self.windowing.pad(windows).items()}
        scores = self.scorer(self.model, batch, kinds=self.kinds)
        return {k: scores[k].detach().to("cpu", torch.float64) for k in self.kinds}

    def _sum_of_squares(self, windows: list[Window], errors: dict[int, str]) -> dict[int, dict[str, torch.Tensor]]:
        """Per document and kind: the sum over its windows of the squared window importance."""
        sumsq: dict[int, dict[str, Any]] = {}
        for b in range(0, len(windows), self.batch_size):
            group = [w for w in windows[b:b + self.batch_size] if w.doc not in errors]
            if not group:
                continue
            alone: list[Window] = []
            try:
                scores = self._run(group)
                finite = torch.stack([torch.isfinite(scores[k]).flatten(1).all(dim=1) for k in self.kinds]).all(dim=0)
                if len(group) > 1 and not finite.all():
                    # score the windows that came back non-finite without padding
                    alone = [w for w, ok in zip(group, finite.tolist()) if not ok]
                    keep = [i for i, ok in enumerate(finite.tolist()) if ok]
                    group, scores = [group[i] for i in keep], {k: v[keep] for k, v in scores.items()}
                results = [(group, scores)]
            except Exception:  # noqa: BLE001 - retry one by one to find the failing documents
                results, alone = [], group
            for w in alone:
                try:
                    results.append(([w], self._run([w])))
                except Exception as err:  # noqa: BLE001 - reported by number, the run goes on
                    errors[w.doc] = f"{type(err).__name__}: {err}"
            for ws, scores in results:
                for row, w in enumerate(ws):
                    acc = sumsq.setdefault(w.doc, {k: 0.0 for k in self.kinds})
                    for k in self.kinds:
                        acc[k] = acc[k] + scores[k][row] ** 2
        return sumsq
