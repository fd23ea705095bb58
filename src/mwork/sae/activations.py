"""The activations a dictionary is trained and measured on, captured once by the one corpus pass.

Each language's documents are split by position: every ``heldout_every``-th document is held out
(quality measures), the others train. Only as many documents as reach a language's share of the
token budget are run (counted by the tokenizer first, which is cheap), and the values of the
counted tokens (the pass's ``windows`` rule: text tokens, never the special tokens) at the site of
every layer are kept in float32 as rows of one buffer per layer: one pass, then the training
shuffles and reuses the buffer for as many steps as it needs.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from mwork.corpus_pass import PassOptions, Request, corpus_pass
from mwork.corpus_statistics import Batch, Corpus, Statistic


class TokenRows(Statistic):
    """The counted tokens' values themselves (float32, on the CPU), at most ``limit`` rows."""

    name = "token_rows"
    takes = "rows"

    def __init__(self, limit: int):
        self.limit = int(limit)

    def start(self, n: int | None, corpus: Corpus) -> None:
        self.rows: list[torch.Tensor] = []
        self.kept = 0

    def update(self, values: torch.Tensor, batch: Batch) -> None:
        if self.kept >= self.limit:
            return
        rows = values[batch.mask_on(values.device)].detach().to("cpu", torch.float32)[:self.limit - self.kept]
        self.rows.append(rows)
        self.kept += int(rows.shape[0])

    def result(self) -> torch.Tensor:
        return torch.cat(self.rows) if self.rows else torch.zeros(0, 0)


def split_documents(documents: Sequence[str], heldout_every: int) -> tuple[list[str], list[str]]:
    """(training, held-out): document ``i`` is held out when ``i % heldout_every == heldout_every - 1``."""
    train = [d for i, d in enumerate(documents) if i % heldout_every != heldout_every - 1]
    held = [d for i, d in enumerate(documents) if i % heldout_every == heldout_every - 1]
    return train, held


def enough_documents(tokenizer: Any, documents: Sequence[str], tokens: int) -> list[str]:
    """The first documents of ``documents`` whose text tokens reach ``tokens`` (all when they do not)."""
    out, total = [], 0
    for doc in documents:
        if total >= tokens:
            break
        out.append(doc)
        total += len(tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"])
    return out


def capture_rows(model: torch.nn.Module, tokenizer: Any, corpora: Mapping[str, Sequence[str]], *, site: str,
                 layers: Sequence[int], tokens: int, options: PassOptions,
                 progress: bool = True) -> tuple[dict[int, torch.Tensor], dict[str, int]]:
    """``{layer: (rows, width)}`` of the counted tokens of every language (each its equal share of
    ``tokens``, languages in order) at ``site``, and the rows per language."""
    share = max(1, tokens // max(1, len(corpora)))
    docs = {lang: enough_documents(tokenizer, d, share) for lang, d in corpora.items()}
    empty = [lang for lang, d in docs.items() if not d]
    if empty:
        raise ValueError(f"no documents of {', '.join(empty)} to capture activations from: give those languages "
                         "more text (or a smaller heldout_every)")
    request = Request(TokenRows, site, list(layers), {"limit": share}, key="rows")
    run = corpus_pass(model, tokenizer, docs, [request], options, progress=progress, desc="activations {lang}")
    rows = {layer: torch.cat([run.value("rows", lang, layer) for lang in run.languages]) for layer in layers}
    counts = {lang: int(run.value("rows", lang, layers[0]).shape[0]) for lang in run.languages}
    return rows, counts
