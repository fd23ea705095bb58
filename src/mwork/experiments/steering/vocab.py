"""The language of every vocabulary token: what "target-language probability mass" sums over.

Each token id is decoded on its own and labelled by the lens's token-level identifier
(``mwork.lens.langid``: script, then wordfreq for Latin words; special and added tokens are
unknown), with the lens's default candidates (every Latin-script wordfreq language). Labelling a
262k vocabulary takes minutes, so the labels are cached under ``$MWORK_CACHE/steer/``, keyed by
the tokenizer's vocabulary and the identifier's settings (a digest, never a path).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from mwork.config import digest
from mwork.files import write_json
from mwork.lens.langid import UNKNOWN, WORDFREQ_LATIN_LANGUAGES, ScriptWordfreqIdentifier, TokenLabeler


@dataclass(frozen=True)
class VocabLanguages:
    """``index[token_id]`` is the position in ``names`` of the token's language (``names[0]`` is
    unknown); token ids past the tokenizer's (padding rows of the LM head) are unknown."""

    names: tuple[str, ...]
    index: torch.Tensor  # long (vocab,)
    labeler: TokenLabeler
    settings: dict

    def code(self, lang: str) -> int | None:
        return self.names.index(lang) if lang in self.names else None

    def mask(self, lang: str) -> torch.Tensor:
        """Bool (vocab,): the tokens labelled ``lang``."""
        c = self.code(lang)
        return torch.zeros_like(self.index, dtype=torch.bool) if c is None else self.index == c

    def resized(self, size: int) -> torch.Tensor:
        """``index`` for a logits row of ``size`` entries (extra ids unknown)."""
        if size == len(self.index):
            return self.index
        out = torch.zeros(size, dtype=torch.long)
        n = min(size, len(self.index))
        out[:n] = self.index[:n]
        return out


def _tokenizer_key(tokenizer: Any) -> str:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    special = sorted(set(getattr(tokenizer, "all_special_ids", []) or []))
    return digest({"vocab": vocab, "special": special, "len": len(tokenizer)})


def vocab_languages(tokenizer: Any, identifier: Any = None, *, cache: bool = True,
                    progress: bool = False) -> VocabLanguages:
    """The language of every token of ``tokenizer`` (see the module docstring); cached on disk."""
    from mwork.models.loading import cache_dir

    identifier = identifier if identifier is not None else ScriptWordfreqIdentifier(WORDFREQ_LATIN_LANGUAGES)
    labeler = TokenLabeler(tokenizer, identifier)
    settings = identifier.settings() if hasattr(identifier, "settings") else {"identifier": type(identifier).__name__}
    key = digest({"tokenizer": _tokenizer_key(tokenizer), "identifier": settings, "rule": "decode([id]) each"})[:24]
    path = cache_dir() / "steer" / f"vocab-languages-{key}.json"
    labels = None
    if cache and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("key") == key and len(data["labels"]) == len(tokenizer):
                labels = data["labels"]
        except (OSError, ValueError, KeyError, TypeError):
            labels = None  # a torn cache file is recomputed
    if labels is None:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        special = labeler._special
        from tqdm.auto import tqdm

        bar = tqdm(texts, desc="labelling the vocabulary", unit="token", disable=not progress)
        labels = [UNKNOWN if i in special else identifier.label(t) for i, t in enumerate(bar)]
        if cache:
            write_json(path, {"key": key, "settings": settings, "labels": labels})
    names = (UNKNOWN, *sorted({x for x in labels if x != UNKNOWN}))
    code = {n: i for i, n in enumerate(names)}
    index = torch.tensor([code[x] for x in labels], dtype=torch.long)
    return VocabLanguages(names, index, labeler, dict(settings))
