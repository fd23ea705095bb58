"""Wendler-style word tasks: prompts whose answer is one word, and the tokens that can start it.

* ``translation`` (A -> B): few-shot ``Français: "chien" - 中文: "狗"`` lines, then
  ``Français: "fleur" - 中文: "`` (the answer: the B word of the query item);
* ``repetition`` (B -> B): the same with A = B;
* ``cloze`` (B): few-shot ``<B sentence with ___> → "<word>"`` lines, then the query sentence
  and ``→ "``.

Per lens layer the measure (:mod:`mwork.latent.measure`) sums the probability of the tokens
that can *start* a word: every token whose bytes are a non-empty prefix of the word's UTF-8
bytes, with or without a leading space (Wendler et al. 2024). Tokens in both the target word's
and the English word's set (e.g. a single ``s`` for "sun" / "sol") are removed from both, so that
no probability counts for both.

Item filter, per model (tokenizer): an item is kept for target language B when the first token
of the English word and the first token of the B word differ and neither is a prefix of the
other (compared without a leading space, case-folded); :func:`survival` counts them.
"""

from __future__ import annotations

import json
import random
import re
import weakref
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from mwork.latent.words import LANGUAGE_NAMES, WordList

TASKS = ("translation", "repetition", "cloze")
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted (printable character -> byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    spec = json.loads(backend.to_str())
    return "ByteLevel" in json.dumps(spec.get("decoder")) or "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))


class TokenBytes:
    """Every token's bytes (byte-level BPE: through GPT-2's alphabet; SentencePiece: ``▁`` is a
    space, ``<0xNN>`` a byte), and the reverse index bytes -> token ids. Special tokens are left out."""

    def __init__(self, tokenizer):
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        byte_level = _is_byte_level(tokenizer)
        decoder = _byte_decoder()
        size = len(tokenizer)
        pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
        self.bytes: list[bytes] = []
        self.index: dict[bytes, list[int]] = {}
        for i, piece in enumerate(pieces):
            if piece is None or i in special:
                self.bytes.append(b"")
                continue
            if byte_level:
                b = b"".join(bytes([decoder[c]]) if c in decoder else c.encode("utf-8") for c in piece)
            else:
                m = _BYTE_TOKEN.match(piece)
                b = bytes([int(m.group(1), 16)]) if m else piece.replace("▁", " ").encode("utf-8")
            self.bytes.append(b)
            if b:
                self.index.setdefault(b, []).append(i)

    def starts(self, word: str) -> set[int]:
        """Ids of the tokens that can start ``word``: byte prefixes of it, with or without a leading space."""
        wb = word.encode("utf-8")
        out: set[int] = set()
        for n in range(1, len(wb) + 1):
            out.update(self.index.get(wb[:n], ()))
            out.update(self.index.get(b" " + wb[:n], ()))
        return out


_TABLES: "weakref.WeakKeyDictionary[Any, TokenBytes]" = weakref.WeakKeyDictionary()


def token_bytes(tokenizer) -> TokenBytes:
    """The (cached) :class:`TokenBytes` of a tokenizer."""
    try:
        table = _TABLES.get(tokenizer)
    except TypeError:
        return TokenBytes(tokenizer)
    if table is None:
        table = _TABLES[tokenizer] = TokenBytes(tokenizer)
    return table


def first_token(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"the word {word!r} encodes to no tokens")
    return ids[0]


def distinct_starts(tokenizer, english: str, word: str) -> bool:
    """The item filter: the two words' first tokens differ and neither is a prefix of the other
    (without a leading space, case-folded)."""
    table = token_bytes(tokenizer)

    def text(token: int) -> str:
        return table.bytes[token].decode("utf-8", "replace").strip().casefold()

    a, b = text(first_token(tokenizer, english)), text(first_token(tokenizer, word))
    return bool(a) and bool(b) and not a.startswith(b) and not b.startswith(a)


@dataclass(frozen=True)
class WordPrompt:
    """One query: its prompt, the expected word in the target language and its English translation,
    and the token ids that can start each (shared tokens removed from both)."""

    task: str
    source: str
    target: str
    item: str
    prompt: str
    word: str
    english: str
    target_tokens: tuple[int, ...]
    english_tokens: tuple[int, ...]


def kept_items(words: WordList, tokenizer, task: str, source: str, target: str) -> tuple[list[str], int]:
    """(ids that survive the filter for this task and pair, ids that had every word needed)."""
    if task == "cloze":
        candidates = [i for i in words.pair(target, target) if (i, target) in words.cloze]
    else:
        candidates = words.pair(source if task == "translation" else target, target)
    kept = [i for i in candidates if distinct_starts(tokenizer, words.items[i]["en"], words.items[i][target])]
    return kept, len(candidates)


def _line(task: str, source: str, target: str, words: WordList, item: str, answer: bool) -> str:
    w = words.items[item]
    end = f'{w[target]}"' if answer else ""
    if task == "cloze":
        return f'{words.cloze[(item, target)]} → "{end}'
    a = source if task == "translation" else target
    return f'{LANGUAGE_NAMES.get(a, a)}: "{w[a]}" - {LANGUAGE_NAMES.get(target, target)}: "{end}'


def build_prompts(words: WordList, tokenizer, task: str, source: str, target: str, *, limit: int | None = None,
                  shots: int = 4, seed: int = 0) -> tuple[list[WordPrompt], dict[str, int]]:
    """The prompts of one task and language pair (``source`` is used by translation only) and the
    survival counts ``{"candidates": n, "kept": k, "used": u}``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if target == "en":
        raise ValueError("the target language must not be English (the measure compares the target word with English)")
    kept, candidates = kept_items(words, tokenizer, task, source, target)
    used = kept[:limit] if limit is not None else kept
    table = token_bytes(tokenizer)
    prompts = []
    for item in used:
        others = [i for i in kept if i != item]
        rng = random.Random(f"{seed}:{task}:{source}:{target}:{item}")
        examples = rng.sample(others, min(shots, len(others)))
        lines = [_line(task, source, target, words, e, True) for e in examples]
        prompt = "\n".join(lines + [_line(task, source, target, words, item, False)])
        word, english = words.items[item][target], words.items[item]["en"]
        t, e = table.starts(word), table.starts(english)
        shared = t & e
        prompts.append(WordPrompt(task, source if task == "translation" else target, target, item, prompt, word,
                                  english, tuple(sorted(t - shared)), tuple(sorted(e - shared))))
    return prompts, {"candidates": candidates, "kept": len(kept), "used": len(used)}

