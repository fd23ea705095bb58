"""Documents as the model sees them in detection: token windows, padded into batches.

A document longer than ``max_length`` tokens is cut into consecutive windows of at most
``max_length`` tokens, the tokenizer's special tokens (e.g. BOS) added to every window; with
``truncate`` only the first window is kept.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

WINDOW_RULE = (
    "documents longer than max_length tokens are cut into consecutive windows of at most max_length "
    "tokens (special tokens added to each window); each window is scored separately and a document's "
    "importance is sqrt(sum over its windows of the squared window importance), the norm over all its tokens"
)
TRUNCATE_RULE = "truncate: only the first max_length tokens (special tokens included) of each document are scored"
#: a document far longer than the others -- more than LONG_FACTOR times the median document's tokens
#: and more than LONG_TOKENS tokens -- alone takes most of a pass's time: warned about (Windowing.survey)
LONG_FACTOR = 20
LONG_TOKENS = 10_000


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds before and after a text (e.g. [BOS], [])."""
    probe = "a b"
    with_sp = tokenizer(probe, add_special_tokens=True)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for i in range(len(with_sp) - len(plain) + 1):
        if with_sp[i:i + len(plain)] == plain:
            return list(with_sp[:i]), list(with_sp[i + len(plain):])
    return [], []


@dataclass(frozen=True)
class Window:
    doc: int  # document number in the corpus
    part: int  # window number inside the document
    ids: list[int]


@dataclass(frozen=True)
class Windowing:
    """How one tokenizer's documents become windows and padded batches."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    max_length: int
    truncate: bool
    pad_id: int
    padding_side: str

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, max_length: int, truncate: bool) -> "Windowing":
        prefix, suffix = special_tokens(tokenizer)
        if max_length - len(prefix) - len(suffix) < 1:
            raise ValueError(f"max_length {max_length} leaves no room for text after the {len(prefix) + len(suffix)} "
                             "special tokens")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos token)")
        return cls(tuple(prefix), tuple(suffix), max_length, truncate, tokenizer.pad_token_id, tokenizer.padding_side)

    @property
    def rule(self) -> str:
        return TRUNCATE_RULE if self.truncate else WINDOW_RULE

    def split(self, doc: int, ids: list[int]) -> list[Window]:
        """Document ``doc``'s token ids (no special tokens) -> its windows."""
        step = self.max_length - len(self.prefix) - len(self.suffix)
        if self.truncate:
            ids = ids[:step]
        prefix, suffix = list(self.prefix), list(self.suffix)
        return [Window(doc, p, prefix + ids[s:s + step] + suffix) for p, s in enumerate(range(0, len(ids), step))]

    def count(self, n_tokens: int) -> int:
        """How many windows a document of ``n_tokens`` tokens (no special tokens) makes."""
        step = self.max_length - len(self.prefix) - len(self.suffix)
        return 0 if n_tokens <= 0 else 1 if self.truncate else -(-n_tokens // step)

    def survey(self, lengths: Mapping[int, int], what: str) -> str:
        """Before a pass: one line saying how many windows the documents make (``lengths``:
        document number -> its token count); warns (UserWarning) about documents far longer than
        the others (LONG_FACTOR x the median and LONG_TOKENS), which alone take most of the time."""
        total = sum(self.count(n) for n in lengths.values())
        line = (f"{what}: {len(lengths):,} documents, {sum(lengths.values()):,} tokens -> {total:,} windows of at "
                f"most {self.max_length} tokens")
        if self.truncate or not lengths:
            return line
        median = statistics.median(lengths.values())
        long = [d for d, n in lengths.items() if n > LONG_TOKENS and n > LONG_FACTOR * median]
        if long:
            shown = ", ".join(f"document {d} ({lengths[d]:,} tokens, {self.count(lengths[d]):,} windows)"
                              for d in long[:5]) + (f" and {len(long) - 5} more" if len(long) > 5 else "")
            share = sum(self.count(lengths[d]) for d in long)
            warnings.warn(f"{what}: {shown} far longer than the others (median {median:,.0f} tokens): "
                          f"{share:,} of the {total:,} windows, most of the time; split long documents (one per "
                          f"line) or pass --truncate to score only each document's first {self.max_length} tokens",
                          stacklevel=2)
        return line

    def pad(self, windows: Sequence[Window]) -> dict[str, torch.Tensor]:
        """A batch: input_ids and attention_mask, padded on the tokenizer's side."""
        length = max(len(w.ids) for w in windows)
        ids = torch.full((len(windows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(windows), length), dtype=torch.long)
        for row, w in enumerate(windows):
            n = len(w.ids)
            cols = slice(length - n, length) if self.padding_side == "left" else slice(0, n)
            ids[row, cols] = torch.tensor(w.ids, dtype=torch.long)
            mask[row, cols] = 1
        return {"input_ids": ids, "attention_mask": mask}
