"""``DemoSettings``: the sizes of every stage of ``mwork demo``, checked as a whole when they are
made, so a bad combination is one clear error before the first stage runs, not a traceback
after two of them.

The stages' own settings are their configs, held as they are: ``lens`` (:class:`LensConfig`),
``detect`` (a :class:`DetectConfig` template; each language fills in ``language``) and
``enhance`` (:class:`EnhanceSettings`). Each config checks its own fields; :func:`check_settings`
checks what lies between the stages and what no config knows (built-in prompts and corpora,
English among the languages, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from mwork.experiments.training import EnhanceSettings
from mwork.lens.pipeline import DEFAULT_LANGS, LensConfig
from mwork.models.loading import DEFAULT_MODEL
from mwork.neurons.detect_config import DetectConfig

ENGLISH = "en"
STAGE_CONFIGS = {"lens": LensConfig, "detect": DetectConfig, "enhance": EnhanceSettings}


def _lens(**sizes: Any) -> LensConfig:
    return LensConfig(top_k=10, **sizes)


def _detect(**sizes: Any) -> DetectConfig:
    # language: a placeholder, replaced by each detection language (Demo.detect_config)
    return DetectConfig(language=ENGLISH, kinds=("ffn", "q", "k", "v"), top_fraction=0.02, min_doc_fraction=0.9,
                        **sizes)


def _enhance(**sizes: Any) -> EnhanceSettings:
    return EnhanceSettings(lr=1e-4, grad_accum=1, warmup_ratio=0.0, **sizes)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of every stage; ``quick()`` fits about 5 minutes on two CPU cores, the default
    about 20. ``with_(...)`` changes some, a stage config's fields by a dict:
    ``DemoSettings.quick().with_(lens={"max_prompts": 1}, detect_docs=3)``."""

    model: str = DEFAULT_MODEL  # every stage's model (the stage configs' own model options are not used)
    lens: LensConfig = field(default_factory=lambda: _lens(langs=("en", "zh", "ru", "fr", "de", "es"),
                                                           max_prompts=10, max_new_tokens=8))
    langs: tuple[str, ...] = ("en", "zh", "fr", "es", "ru", "de")  # detection
    deact_langs: tuple[str, ...] | None = ("en", "zh", "fr", "ru")  # deactivation (None: all of langs)
    detect: DetectConfig = field(default_factory=lambda: _detect(max_length=192))
    detect_docs: int = 64
    eval_texts: int = 6
    eval_max_length: int = 128
    seeds: tuple[int, ...] = (0, 1, 2)
    enhance_lang: str = "zh"  # not among langs: the first non-English one of langs (said when the demo starts)
    enhance_docs: int = 48
    enhance: EnhanceSettings = field(default_factory=lambda: _enhance(max_steps=12, batch_size=4, max_length=128))
    enhance_baselines: tuple[str, ...] = ("random",)
    corpus_dir: str | None = None
    xquad: bool = False  # detect on XQuAD articles 0-23, evaluate on 24-47 (local copy, else the hub)

    def __post_init__(self) -> None:
        for name in ("langs", "deact_langs", "seeds", "enhance_baselines"):
            value = getattr(self, name)
            if isinstance(value, str):  # "en,fr" from Python, as on the command line
                value = [part.strip() for part in value.split(",") if part.strip()]
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        check_settings(self)

    @classmethod
    def quick(cls, **changes: Any) -> "DemoSettings":
        small = cls(lens=_lens(langs=("zh", "ru", "fr", "de", "es"), max_prompts=2, max_new_tokens=2),
                    langs=("en", "zh", "fr", "ru", "de"), deact_langs=("en", "zh", "ru"),
                    detect=_detect(max_length=96), detect_docs=8, eval_texts=3, eval_max_length=96, seeds=(0,),
                    enhance_docs=8, enhance=_enhance(max_steps=3, batch_size=2, max_length=96), enhance_baselines=())
        return small.with_(**changes)

    def with_(self, **changes: Any) -> "DemoSettings":
        """These settings with ``changes``: a field's new value, or for a stage config (``lens``,
        ``detect``, ``enhance``) a config or a dict of its fields to change. Every problem is
        said in one ValueError."""
        problems = []
        for name, value in list(changes.items()):
            if name in STAGE_CONFIGS and isinstance(value, Mapping):
                try:
                    changes[name] = replace(getattr(self, name), **value)
                except (TypeError, ValueError) as err:
                    problems.append(f"{name}: {err}")
                    del changes[name]  # the rest is still checked, with this config as it was
        if not problems:
            return replace(self, **changes)
        try:
            replace(self, **changes)
        except ValueError as err:
            problems.append(str(err).removeprefix("demo settings: "))
        raise ValueError("demo settings: " + "; ".join(problems))

    @property
    def deactivation_langs(self) -> tuple[str, ...]:
        return tuple(self.deact_langs or self.langs)

    @property
    def lens_langs(self) -> tuple[str, ...]:
        """The lens's languages (its default ones when it names none)."""
        return tuple(self.lens.langs or DEFAULT_LANGS)

    def enhance_language(self) -> tuple[str, str]:
        """The language the enhance stage trains, and a note when it is not ``enhance_lang``."""
        if self.enhance_lang in self.langs:
            return self.enhance_lang, ""
        lang = next(x for x in self.langs if x != ENGLISH)
        return lang, (f"enhance_lang {self.enhance_lang!r} is not among the detection languages "
                      f"({','.join(self.langs)}), so the enhance stage trains {lang!r}'s neurons")

    def record(self) -> dict[str, Any]:
        """The settings as run.json shows them: the demo's own fields, and each stage config's
        recorded fields (:func:`mwork.config.fingerprint`; the detection template without its
        placeholder language)."""
        from mwork.config import fingerprint

        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = fingerprint(value) if name in STAGE_CONFIGS else value
        out["detect"].pop("language", None)
        return out


def _twice(values: tuple) -> list:
    return sorted({v for v in values if values.count(v) > 1}, key=str)


def check_settings(s: DemoSettings) -> None:
    """Raise one ValueError listing every problem of ``s`` (none: return). The stage configs
    have checked their own fields; these are the rules between the stages and the demo's own."""
    from mwork.files import check_name
    from mwork.lens.prompts import builtin_languages

    problems: list[str] = []
    if not isinstance(s.model, str) or not s.model:
        problems.append("model must be a model alias, folder or hub id")
    wrong = [name for name, cls in STAGE_CONFIGS.items() if not isinstance(getattr(s, name), cls)]
    for name in wrong:
        problems.append(f"{name} must be a {STAGE_CONFIGS[name].__name__}, got {type(getattr(s, name)).__name__}")
    if wrong:
        raise ValueError("demo settings: " + "; ".join(problems))
    for name in ("langs", "deact_langs", "enhance_lang"):
        value = getattr(s, name)
        for code in ((value,) if isinstance(value, str) else value or ()):
            try:
                check_name(code)  # a language code names files (corpus_dir/LANG.txt, specific/LANG.safetensors)
            except ValueError as err:
                problems.append(f"{name}: {err}")
    for name in ("langs", "seeds", "deact_langs"):
        value = getattr(s, name)
        if value is None and name == "deact_langs":
            continue  # None: all of langs
        if not value:
            problems.append(f"{name} is empty")
        elif _twice(value):
            problems.append(f"{name} lists {', '.join(map(str, _twice(value)))} more than once")
    if s.lens.prompts is None:
        prompt_langs = builtin_languages()
        missing = [lang for lang in s.lens_langs if lang not in prompt_langs]
        if missing:
            problems.append(f"no built-in lens prompts for {', '.join(missing)} (lens.langs); available: "
                            f"{', '.join(prompt_langs)}")
    try:
        import wordfreq

        no_list = [lang for lang in s.lens.latin_langs if lang not in wordfreq.available_languages()]
    except ImportError:  # pragma: no cover - wordfreq is a dependency
        no_list = []
    if no_list:
        problems.append(f"lens.latin_langs: wordfreq has no word list for {', '.join(no_list)}")
    if s.lens.prompts is None and all(lang == ENGLISH for lang in s.lens_langs):
        problems.append("lens.langs needs a non-English language: the layer regions come from non-English prompts")
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
    for name, low in (("detect_docs", 1), ("eval_texts", 1), ("eval_max_length", 2), ("enhance_docs", 1)):
        value = getattr(s, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            problems.append(f"{name} must be an integer >= {low}, got {value!r}")
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
