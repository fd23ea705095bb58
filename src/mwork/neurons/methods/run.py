"""Running a detection method on several languages' corpora: scores, native sets, files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from mwork.files import child_path
from mwork.neurons.detect_config import DetectOptions
from mwork.neurons.methods.base import LanguageScores, check_languages
from mwork.neurons.methods.registry import get_detection_method
from mwork.neurons.methods.top_tokens import (
    FILE as TOP_TOKENS_FILE, TOP, check_language_names, top_tokens_value, write_top_tokens,
)
from mwork.neurons.neuronset import NeuronSet
from mwork.texts import parse_corpus_specs, read_corpora  # noqa: F401  (their home is mwork.texts)


def language_scores(model: torch.nn.Module, tokenizer: Any, corpora: Mapping[str, Any], method: str = "lape",
                    config: Any = None, *, progress: bool = True, corpus_options: Mapping[str, Any] | None = None,
                    units: Any = None, **overrides: Any) -> LanguageScores:
    """The scores of ``method`` (a registered name) for every language of ``corpora`` (see
    :func:`read_corpora`; ``corpus_options``: its options, e.g. ``{"max_docs": 100}``);
    ``units``: a dictionary whose features are scored (None: neurons; checked against the model
    before the pass); ``config`` / ``overrides``: the method's settings. (:func:`language_sets`
    also asks for the features' top activations.)"""
    return _scores_and_texts(model, tokenizer, corpora, method, config, progress=progress,
                             corpus_options=corpus_options, units=units, top_tokens=0, **overrides)[0]


def _scores_and_texts(model: torch.nn.Module, tokenizer: Any, corpora: Mapping[str, Any], method: str, config: Any, *,
                      progress: bool, corpus_options: Mapping[str, Any] | None, units: Any, top_tokens: int,
                      **overrides: Any) -> tuple[LanguageScores, dict[str, list[str]]]:
    """:func:`language_scores` and the documents it read (the top tokens are decoded from them)."""
    m = get_detection_method(method)
    cfg = m.make_config(config, **overrides)
    m.check_units(units, cfg)
    check_languages(list(corpora), method)
    if units is not None:
        units.check_compatible(model)
    texts, info = read_corpora(corpora, **(corpus_options or {}))
    on: dict[str, Any] = {} if units is None else {"units": units}
    if top_tokens:
        on["top_tokens"] = top_tokens
    scores = m.scores(model, tokenizer, texts, cfg, progress=progress, **on)
    scores.meta["corpora"] = info
    return scores, texts


@dataclass
class LanguageSets:
    """Each language's set by a method's own rule and, when a dictionary's features were scored,
    their top activating tokens in every language (the content of ``top_tokens.json``,
    :mod:`mwork.neurons.methods.top_tokens`)."""

    sets: dict[str, Any]
    top_tokens: dict[str, Any] | None = None

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """``out_dir/LANG.safetensors`` (+ ``.json``) per language, and ``top_tokens.json``."""
        files = {lang: ns.save(child_path(out_dir, lang, ".safetensors")) for lang, ns in self.sets.items()}
        if self.top_tokens is not None:
            files[TOP_TOKENS_FILE] = write_top_tokens(out_dir, self.top_tokens)
        return files


def detect_languages(model: torch.nn.Module, tokenizer: Any, corpora: Mapping[str, Any], method: str = "lape",
                     config: Any = None, *, out_dir: str | Path | None = None,
                     corpus_options: Mapping[str, Any] | None = None, options: DetectOptions | None = None,
                     **overrides: Any) -> dict[str, NeuronSet]:
    """Each language's set by the method's own rule (LAPE: the authors' thresholds; AP: top and
    bottom N; PLND: the language-specific sets; ``units`` (of ``options``, or as a keyword): a
    dictionary whose features are scored, each set then a Dictionary of that language's features). With ``out_dir``, each is saved as
    ``<out_dir>/<lang>.safetensors`` (+ ``.json``); its metadata records ``method``, the rule,
    the settings, the model (``options.model_id``, default the model's name) and every
    language's corpus (``corpus_options``: how :func:`read_corpora` reads them, e.g.
    ``{"max_docs": 100}``). ``options``: ``progress``, ``model_id`` and ``units`` of :class:`DetectOptions`
    (also as keywords); ``config`` / the other keywords: the method's settings. On features,
    ``out_dir`` also gets ``top_tokens.json`` (:func:`language_sets`)."""
    return language_sets(model, tokenizer, corpora, method, config, out_dir=out_dir, corpus_options=corpus_options,
                         options=options, **overrides).sets


def language_sets(model: torch.nn.Module, tokenizer: Any, corpora: Mapping[str, Any], method: str = "lape",
                  config: Any = None, *, out_dir: str | Path | None = None,
                  corpus_options: Mapping[str, Any] | None = None, options: DetectOptions | None = None,
                  **overrides: Any) -> LanguageSets:
    """:func:`detect_languages`, with the sets' top activating tokens when ``units`` is a
    dictionary: the :data:`~mwork.neurons.methods.top_tokens.TOP` largest activations of every
    chosen feature in every language's corpus, measured in the same pass, decoded in context
    (:mod:`mwork.neurons.methods.top_tokens`; saved as ``out_dir/top_tokens.json``)."""
    options, overrides = DetectOptions.split(options, overrides, allowed=("progress", "model_id", "units"),
                                             where="detect_languages")
    progress, model_id, units = options.progress, options.model_id, options.units
    m = get_detection_method(method)
    cfg = m.make_config(config, **overrides)
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"the output folder {out_dir} is a file; choose another (--out-dir)")
    if units is not None:
        check_language_names(list(corpora))
    if out_dir is not None:
        for lang in corpora:  # each names a file in out_dir: a bad one fails before the scores, not after
            child_path(out_dir, lang, ".safetensors")
    scores, texts = _scores_and_texts(model, tokenizer, corpora, method, cfg, progress=progress,
                                      corpus_options=corpus_options, units=units,
                                      top_tokens=0 if units is None else TOP)
    sets = m.native_sets(scores, cfg)
    name = model_id or getattr(model.config, "_name_or_path", None) or "unknown"
    for lang, ns in sets.items():
        ns.meta.update(model_id=name, languages=list(scores.langs), corpus=scores.meta["corpora"][lang],
                       corpora=scores.meta["corpora"], score_rule=scores.rule,
                       method_meta={k: v for k, v in scores.meta.items() if k != "corpora"})
    found = LanguageSets(sets, None if units is None else
                         top_tokens_value(scores, sets, tokenizer, texts, model_id=name))
    if out_dir is not None:
        found.save(out_dir)
    return found
