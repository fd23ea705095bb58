"""``DemoSettings``: the sizes of every stage of ``mwork demo``, checked as a whole when they are
made, so a bad combination is one clear error before the first stage runs, not a traceback
after two of them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from mwork.models.loading import DEFAULT_MODEL

ENGLISH = "en"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of every stage; ``quick()`` fits about 5 minutes on two CPU cores, the default
    about 20."""

    model: str = DEFAULT_MODEL
    lens_langs: tuple[str, ...] = ("en", "zh", "ru", "fr", "de", "es")
    lens_prompts: int = 10
    lens_new_tokens: int = 8
    lens_latin_langs: tuple[str, ...] | None = None  # wordfreq languages for Latin tokens (None: every one)
    langs: tuple[str, ...] = ("en", "zh", "fr", "es", "ru", "de")  # detection
    deact_langs: tuple[str, ...] | None = ("en", "zh", "fr", "ru")  # deactivation (None: all of langs)
    detect_kinds: tuple[str, ...] = ("ffn", "q", "k", "v")
    detect_docs: int = 64
    detect_max_length: int = 192
    detect_top_fraction: float = 0.02
    detect_min_doc_fraction: float = 0.9
    eval_texts: int = 6
    eval_max_length: int = 128
    seeds: tuple[int, ...] = (0, 1, 2)
    enhance_lang: str = "zh"  # not among langs: the first non-English one of langs (said when the demo starts)
    enhance_docs: int = 48
    enhance_steps: int = 12
    enhance_lr: float = 1e-4
    enhance_baselines: tuple[str, ...] = ("random",)
    corpus_dir: str | None = None
    xquad: bool = False  # detect on XQuAD articles 0-23, evaluate on 24-47 (local copy, else the hub)

    def __post_init__(self) -> None:
        for name in ("lens_langs", "lens_latin_langs", "langs", "deact_langs", "detect_kinds", "seeds",
                     "enhance_baselines"):
            value = getattr(self, name)
            if isinstance(value, str):  # "en,fr" from Python, as on the command line
                value = [part.strip() for part in value.split(",") if part.strip()]
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        check_settings(self)

    @classmethod
    def quick(cls, **overrides: Any) -> "DemoSettings":
        small = cls(lens_langs=("zh", "ru", "fr", "de", "es"), lens_prompts=2, lens_new_tokens=2,
                    langs=("en", "zh", "fr", "ru", "de"), deact_langs=("en", "zh", "ru"), detect_docs=8,
                    detect_max_length=96, eval_texts=3, eval_max_length=96, seeds=(0,), enhance_docs=8,
                    enhance_steps=3, enhance_baselines=())
        return replace(small, **overrides)

    @property
    def deactivation_langs(self) -> tuple[str, ...]:
        return tuple(self.deact_langs or self.langs)

    def enhance_language(self) -> tuple[str, str]:
        """The language the enhance stage trains, and a note when it is not ``enhance_lang``."""
        if self.enhance_lang in self.langs:
            return self.enhance_lang, ""
        lang = next(x for x in self.langs if x != ENGLISH)
        return lang, (f"enhance_lang {self.enhance_lang!r} is not among the detection languages "
                      f"({','.join(self.langs)}), so the enhance stage trains {lang!r}'s neurons")


def _twice(values: tuple) -> list:
    return sorted({v for v in values if values.count(v) > 1}, key=str)


def check_settings(s: DemoSettings) -> None:
    """Raise one ValueError listing every problem of ``s`` (none: return)."""
    from mwork.lens.prompts import builtin_languages
    from mwork.models.adapters import KINDS

    problems: list[str] = []
    if not isinstance(s.model, str) or not s.model:
        problems.append("model must be a model alias, folder or hub id")
    prompt_langs = builtin_languages()
    from mwork.files import check_name

    for name in ("lens_langs", "langs", "deact_langs", "lens_latin_langs", "enhance_lang"):
        value = getattr(s, name)
        for code in ((value,) if isinstance(value, str) else value or ()):
            try:
                check_name(code)  # a language code names files (corpus_dir/LANG.txt, specific/LANG.safetensors)
            except ValueError as err:
                problems.append(f"{name}: {err}")
    for name in ("lens_langs", "langs", "detect_kinds", "seeds", "deact_langs", "lens_latin_langs"):
        value = getattr(s, name)
        if value is None and name in ("deact_langs", "lens_latin_langs"):
            continue  # None: the default (all of langs; every wordfreq language)
        if not value:
            problems.append(f"{name} is empty")
        elif _twice(value):
            problems.append(f"{name} lists {', '.join(map(str, _twice(value)))} more than once")
    missing = [lang for lang in s.lens_langs if lang not in prompt_langs]
    if missing:
        problems.append(f"no built-in lens prompts for {', '.join(missing)} (lens_langs); available: "
                        f"{', '.join(prompt_langs)}")
    if s.lens_latin_langs is not None:
        try:
            import wordfreq

            no_list = [lang for lang in s.lens_latin_langs if lang not in wordfreq.available_languages()]
        except ImportError:  # pragma: no cover - wordfreq is a dependency
            no_list = []
        if no_list:
            problems.append(f"lens_latin_langs: wordfreq has no word list for {', '.join(no_list)}")
    if s.lens_langs and all(lang == ENGLISH for lang in s.lens_langs):
        problems.append("lens_langs needs a non-English language: the layer regions come from non-English prompts")
    if ENGLISH not in s.langs:
        problems.append(f"the languages ({','.join(s.langs) or 'none'}) must include en: deactivation compares "
                        "every language's neurons with English; e.g. --langs en," + ",".join(dict.fromkeys(s.langs)))
    if not [lang for lang in s.langs if lang != ENGLISH]:
        problems.append("the languages need at least one besides en")
    if s.deact_langs is not None:
        outside = [lang for lang in s.deact_langs if lang not in s.langs]
        if outside:
            problems.append(f"deact_langs {','.join(outside)} are not among the detection languages "
                            f"({','.join(s.langs)}): they would have no neurons")
        if ENGLISH not in s.deact_langs or len(s.deact_langs) < 2:
            problems.append("deact_langs must include en and at least one other language")
    if s.enhance_lang == ENGLISH:
        problems.append("enhance_lang must be a non-English language (its neurons are trained on its texts)")
    if s.corpus_dir is not None and s.xquad:
        problems.append("give either corpus_dir (--corpus-dir) or xquad (--xquad), not both")
    if s.corpus_dir is None and not s.xquad:
        from mwork.corpora import DATASET_BUILD_CODES

        no_corpus = [lang for lang in s.langs if lang not in DATASET_BUILD_CODES]
        if no_corpus:
            problems.append(f"no built-in corpus for {', '.join(no_corpus)}; available: "
                            f"{', '.join(sorted(DATASET_BUILD_CODES))} (or give --corpus-dir)")
    bad_kinds = [k for k in s.detect_kinds if k not in KINDS]
    if bad_kinds:
        problems.append(f"unknown neuron kinds {', '.join(bad_kinds)}; choose from {', '.join(KINDS)}")
    for name, low in (("lens_prompts", 1), ("lens_new_tokens", 0), ("detect_docs", 1), ("detect_max_length", 2),
                      ("eval_texts", 1), ("eval_max_length", 2), ("enhance_docs", 1), ("enhance_steps", 1)):
        value = getattr(s, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            problems.append(f"{name} must be an integer >= {low}, got {value!r}")
    for name in ("detect_top_fraction", "detect_min_doc_fraction"):
        value = getattr(s, name)
        if not 0 < value <= 1:
            problems.append(f"{name} must be in (0, 1], got {value!r}")
    if not s.enhance_lr > 0:
        problems.append(f"enhance_lr must be > 0, got {s.enhance_lr!r}")
    if any(not isinstance(seed, int) or isinstance(seed, bool) for seed in s.seeds):
        problems.append(f"seeds must be integers, got {s.seeds!r}")
    if s.enhance_baselines:
        from mwork.experiments.enhance import METHODS

        unknown = [m for m in s.enhance_baselines if m not in METHODS or m == "neurons"]
        if unknown:
            problems.append(f"unknown enhance baselines {', '.join(unknown)}; choose from "
                            f"{', '.join(m for m in METHODS if m != 'neurons')}")
    if problems:
        raise ValueError("demo settings: " + "; ".join(problems))
