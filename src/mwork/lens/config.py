"""``LensConfig``: every setting of a logit-lens run, in one place.

Its fields are at once the keyword arguments of :func:`mwork.lens.pipeline.run_lens`, the
``mwork lens`` options (generated with :func:`mwork.config.add_arguments`, help written here
once) and, through :func:`mwork.config.fingerprint`, what ``lens.json`` records and what the
demo's lens stage is keyed by.
"""

from __future__ import annotations

from dataclasses import dataclass

from mwork.config import option
from mwork.lens.langid import CLASSIC_LATIN_LANGUAGES, WORDFREQ_LATIN_LANGUAGES
from mwork.lens.lenses import LENSES
from mwork.lens.prompts import builtin_languages

DEFAULT_LANGS: tuple[str, ...] = ("zh", "ru", "fr", "de", "es")
POSITIONS = ("all", "prompt", "generated")


def _unescape(text: str) -> str:
    """``\\n`` typed on a command line is a newline."""
    return text.replace("\\n", "\n")


def _codes(value, flag: str = "--langs") -> tuple[str, ...]:
    from mwork.files import parse_names

    if not isinstance(value, str):
        value = [c for c in value if not (isinstance(c, str) and not c.strip())]
    return parse_names(value, flag=flag)  # a code names a prompts file: checked like every language code


@dataclass(frozen=True)
class LensConfig:
    """The settings of one logit-lens run (see :mod:`mwork.lens.pipeline`)."""

    langs: tuple[str, ...] | None = option(
        None, f"comma-separated input languages (default {','.join(DEFAULT_LANGS)}; with --prompts, every "
        f"language of the file); built-in prompt sets: {', '.join(builtin_languages())}")
    prompts: str | None = option(
        None, "your prompts: plain text (one per line, language = the single --langs code) or JSONL with "
        "text and lang", metavar="FILE")
    top_k: int = option(10, "tokens decoded per layer and position")
    max_new_tokens: int = option(8, "greedily generated tokens per prompt, decoded too (0 = prompt only)")
    max_prompts: int | None = option(None, "at most this many prompts per language")
    batch_size: int = option(64, "prompts per batch")
    positions: str = option("all", "which decoded positions count in the shares", choices=POSITIONS)
    template: str = option("{prompt}", "prompt template; {prompt} is replaced, \\n is a newline "
                           "(e.g. 'Q: {prompt}\\nA:')", parse=_unescape)
    latin_langs: tuple[str, ...] = option(
        WORDFREQ_LATIN_LANGUAGES, "wordfreq languages that Latin-script tokens are looked up in (every one "
        f"wordfreq has; mwork's old list was {','.join(CLASSIC_LATIN_LANGUAGES)})")
    include_special: bool = option(False, "also decode the positions of special tokens such as BOS")
    lens: str = option("logit", "how a layer is decoded: logit (final norm + LM head), tuned (a tuned lens, "
                       "--tuned-lens) or patchscope (patched into an identity prompt); see docs/latent.md",
                       choices=LENSES)
    tuned_lens: str | None = option(None, "folder of a tuned lens written by `mwork lens train` (for --lens tuned)",
                                    metavar="DIR")
    decode_chunk: int = option(256, "hidden states decoded through the LM head at once", cli=False, record=False)
    progress: bool = option(True, "show a progress bar", cli=False, record=False)

    def __post_init__(self) -> None:
        if self.langs is not None:
            object.__setattr__(self, "langs", _codes(self.langs))
            twice = sorted({c for c in self.langs if self.langs.count(c) > 1})
            if twice:
                raise ValueError(f"langs lists {', '.join(twice)} more than once; give each language once")
        object.__setattr__(self, "latin_langs", _codes(self.latin_langs, "--latin-langs"))
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"max_prompts must be >= 1, got {self.max_prompts}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.decode_chunk < 1:
            raise ValueError(f"decode_chunk must be >= 1, got {self.decode_chunk}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")
        if "{prompt}" not in self.template:
            raise ValueError("template must contain '{prompt}'")
        if self.lens not in LENSES:
            raise ValueError(f"lens must be one of {', '.join(LENSES)}, got {self.lens!r}")
        if self.lens == "tuned" and not self.tuned_lens:
            raise ValueError("--lens tuned needs --tuned-lens DIR (write one with `mwork lens train`)")
        if not self.latin_langs:
            raise ValueError("latin_langs is empty; give at least one wordfreq language code, e.g. en")
        twice = sorted({c for c in self.latin_langs if self.latin_langs.count(c) > 1})
        if twice:
            raise ValueError(f"latin_langs lists {', '.join(twice)} more than once; give each language once")
