"""Prompt sets for the logit lens: the built-in ones (``mwork/data/prompts/<lang>.txt``) or a
user's file (plain text, one prompt per line, or JSONL with ``text`` and ``lang``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class Prompt:
    text: str
    lang: str


def _prompt_dir():
    return resources.files("mwork") / "data" / "prompts"


def builtin_languages() -> list[str]:
    """Language codes with a built-in prompt set."""
    return sorted(p.name[: -len(".txt")] for p in _prompt_dir().iterdir() if p.name.endswith(".txt"))


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def builtin_prompts(langs: Sequence[str], max_per_lang: int | None = None) -> list[Prompt]:
    """The built-in prompts of each language in ``langs`` (written for mwork, 24 per language)."""
    langs = list(langs)
    if not langs:
        raise ValueError(f"no languages given; built-in prompt sets: {', '.join(builtin_languages())}")
    available = builtin_languages()
    unknown = [lang for lang in langs if lang not in available]
    if unknown:
        raise ValueError(
            f"no built-in prompts for language code(s) {', '.join(map(repr, unknown))}; "
            f"available: {', '.join(available)} (or pass your own prompts file)"
        )
    prompts: list[Prompt] = []
    for lang in langs:
        lines = _lines((_prompt_dir() / f"{lang}.txt").read_text(encoding="utf-8"))
        prompts.extend(Prompt(t, lang) for t in lines[:max_per_lang])
    return prompts


def read_prompts(
    path: str | Path, langs: Sequence[str] | None = None, max_per_lang: int | None = None
) -> list[Prompt]:
    """Prompts from a user's file.

    ``.jsonl`` (or any file whose first line is a JSON object): one ``{"text": ..., "lang": ...}``
    per line; ``langs``, if given, keeps only those languages. Any other file: plain text,
    one prompt per line, all in the single language ``langs[0]`` (so ``langs`` must name
    exactly one).
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"prompts file {str(path)!r} {what}")
    lines = _lines(path.read_text(encoding="utf-8"))
    if not lines:
        raise ValueError(f"prompts file {str(path)!r} is empty; write one prompt per line (or JSONL with text, lang)")
    is_jsonl = path.suffix == ".jsonl" or lines[0].startswith("{")
    if is_jsonl:
        prompts = []
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                text, lang = str(row["text"]).strip(), str(row["lang"]).strip()
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{path}:{n}: expected a JSON object with 'text' and 'lang' ({type(err).__name__}: {err})"
                ) from None
            if not text or not lang:
                raise ValueError(f"{path}:{n}: empty 'text' or 'lang'")
            prompts.append(Prompt(text, lang))
        if langs:
            wanted = set(langs)
            missing = wanted - {p.lang for p in prompts}
            if missing:
                raise ValueError(
                    f"{path} has no prompts in {', '.join(sorted(missing))}; "
                    f"its languages: {', '.join(sorted({p.lang for p in prompts}))}"
                )
            prompts = [p for p in prompts if p.lang in wanted]
    else:
        if not langs or len(langs) != 1:
            raise ValueError(
                f"{path} is plain text, so its language must be given as exactly one code "
                "(--langs xx); for several languages use JSONL lines {\"text\": ..., \"lang\": ...}"
            )
        prompts = [Prompt(t, langs[0]) for t in lines]
    if max_per_lang is not None:
        kept: dict[str, int] = {}
        limited = []
        for p in prompts:
            if kept.get(p.lang, 0) < max_per_lang:
                kept[p.lang] = kept.get(p.lang, 0) + 1
                limited.append(p)
        prompts = limited
    return prompts
