"""The detection loop: documents in blocks, this rank's blocks scored, checkpoints, progress.

Determinism. Documents are read in blocks of ``buffer_docs``; each block is scored on its own
(``mwork.neurons.scoring``). The blocks depend only on document numbers, so the same settings
give bit-identical counts, and a run resumed from a checkpoint (written after whole blocks,
atomically) ends with exactly the counts of an uninterrupted one.

Data parallel. Inside a torch.distributed group, block i is scored by rank i % world_size;
every rank still reads and hashes every document. ``merge_ranks`` sums the per-neuron counts
and ``scored`` over ranks and gathers the empty, failed and unscorable documents: the same
numbers as one process (same batches, so the same floats). Each rank checkpoints to its own
file and resumes from it.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
from tqdm.auto import tqdm

from mwork import distributed
from mwork.fingerprints import TextHasher
from mwork.neurons import detect_checkpoint as ckpt
from mwork.neurons.rules import DocumentRule, count_important
from mwork.neurons.scoring import BlockScorer, BlockScores


def log(msg: str) -> None:
    """A line on stderr that does not break the progress bar."""
    tqdm.write(f"[mwork detect] {msg}", file=sys.stderr)


@dataclass
class DetectionRun:
    """One pass over a corpus: the counts of every neuron, per kind, over the documents."""

    score_block: BlockScorer
    rule: DocumentRule
    shapes: Mapping[str, tuple[int, int]]  # kind -> (layers, neurons per layer)
    buffer_docs: int
    settings: Mapping[str, Any]  # what a checkpoint must have been made with
    checkpoint: Path | None = None
    checkpoint_every: int = 100
    progress: bool = True
    desc: str = "detect"

    def run(self, documents: Iterable[str], resume: bool = True) -> ckpt.Progress:
        """Read every document, score this rank's blocks; the merged progress of all ranks."""
        hasher = TextHasher()
        docs: Iterator[str] = iter(documents)
        state, resumed_partial = self._start(docs, hasher, resume)
        total = getattr(documents, "max_docs", None) or (len(documents) if hasattr(documents, "__len__") else None)
        bar = tqdm(total=total, initial=state.consumed, unit="doc", desc=self.desc,
                   disable=not self.progress or distributed.rank() != 0, file=sys.stderr, dynamic_ncols=True)
        last_saved = state.consumed
        try:
            while block := list(islice(docs, self.buffer_docs)):
                if resumed_partial:
                    raise ValueError(f"checkpoint {self.checkpoint} ended on the corpus's last (partial) block, "
                                     "but the corpus now has more documents (a larger max_docs?); rerun with "
                                     "--no-resume to start over")
                for doc in block:
                    hasher.update(doc)
                if distributed.owns(state.consumed // self.buffer_docs):  # every block, in one process
                    self._add(state, self.score_block(state.consumed, block))
                state.consumed += len(block)
                state.corpus_sha256 = hasher.hexdigest()
                bar.update(len(block))
                bar.set_postfix(scored=state.scored, empty=len(state.empty), failed=len(state.failed))
                if self.checkpoint is not None and state.consumed - last_saved >= self.checkpoint_every:
                    ckpt.save_checkpoint(self.checkpoint, state, self.settings)
                    last_saved = state.consumed
        finally:
            bar.close()
        return self.merge_ranks(state)

    def _start(self, docs: Iterator[str], hasher: TextHasher, resume: bool) -> tuple[ckpt.Progress, bool]:
        path = self.checkpoint
        if path is not None and path.exists() and resume:
            state = ckpt.resume(path, docs, hasher, self.settings, list(self.shapes))
            log(f"resuming from {path}: {state.consumed} documents already read")
            return state, state.consumed % self.buffer_docs != 0
        if path is not None and path.exists():
            path.unlink()
        return ckpt.Progress.start(self.shapes), False

    def _add(self, state: ckpt.Progress, block: BlockScores) -> None:
        """A scored block's per-document masks into the counts."""
        state.empty.extend(block.empty)
        state.failed.extend(block.failed)
        if not block.scores:
            return
        docs = list(block.scores)
        for kind in self.shapes:
            counts, ok = count_important(self.rule, kind, torch.stack([block.scores[d][kind] for d in docs]))
            state.counts[kind] += counts
            for doc, scorable in zip(docs, ok):
                if not scorable:
                    state.unscorable[kind].append(doc)
                    log(f"document {doc} scores zero for every {kind} neuron (too short, e.g. one token?); "
                        f"it is not counted for {kind}")
        state.scored += len(docs)

    def merge_ranks(self, state: ckpt.Progress) -> ckpt.Progress:
        """Every rank read the same documents and scored its own blocks: sum and gather."""
        world = distributed.world_size()
        if world <= 1:
            return state
        blocks = math.ceil(state.consumed / self.buffer_docs)
        if distributed.rank() == 0 and blocks < world:
            log(f"only {blocks} block(s) of {self.buffer_docs} documents for {world} processes: some ranks had "
                "nothing to do; a smaller buffer_docs (--buffer-docs) spreads the work")
        kinds = list(self.shapes)
        summed = distributed.all_reduce_sum({**{f"count.{k}": state.counts[k] for k in kinds},
                                             "scored": torch.tensor([state.scored], dtype=torch.int64)})
        state.counts = {k: summed[f"count.{k}"] for k in kinds}
        state.scored = int(summed["scored"].item())
        state.empty = sorted(distributed.gather_lists(state.empty))
        state.failed = sorted(distributed.gather_lists(state.failed), key=lambda f: f["index"])
        state.unscorable = {k: sorted(distributed.gather_lists(state.unscorable[k])) for k in kinds}
        return state
