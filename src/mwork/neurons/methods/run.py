"""Running a detection method on several languages' corpora: scores, native sets, files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from mwork.files import child_path
from mwork.neurons.detect_config import DetectOptions
from mwork.neurons.methods.base import LanguageScores, check_languages
from mwork.neurons.methods.registry import get_detection_method
from mwork.neurons.neuronset import NeuronSet
from mwork.texts import parse_corpus_specs, read_corpora  # noqa: F401  (their home is mwork.texts)


def language_scores(model: torch.nn.Module, tokenizer: Any, corpora: Mapping[str, Any], method: str = "lape",
                    config: Any = None, *, progress: bool = True, corpus_options: Mapping[str, Any] | None = None,
                    units: Any = None, **overrides: Any) -> LanguageScores:
    """The scores of ``method`` (a registered name) for every language of ``corpora`` (see
    :func:`read_corpora`; ``corpus_options``: its options, e.g. ``{"max_docs": 100}``);
    ``units``: a dictionary whose features are scored (None: neurons; checked against the model
    before the pass); ``config`` / ``overrides``: the method's settings."""
    m = get_detection_method(method)
    cfg = m.make_config(config, **overrides)
    m.check_units(units, cfg)
    check_languages(list(corpora), method)
    if units is not None:
        units.check_compatible(model)
    texts, info = read_corpora(corpora, **(corpus_options or {}))
    on = {} if units is None else {"units": units}
    scores = m.scores(model, tokenizer, texts, cfg, progress=progress, **on)
    scores.meta["corpora"] = info
    return scores


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
    (also as keywords); ``config`` / the other keywords: the method's settings."""
    options, overrides = DetectOptions.split(options, overrides, allowed=("progress", "model_id", "units"),
                                             where="detect_languages")
    progress, model_id, units = options.progress, options.model_id, options.units
    m = get_detection_method(method)
    cfg = m.make_config(config, **overrides)
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"the output folder {out_dir} is a file; choose another (--out-dir)")
    if out_dir is not None:
        for lang in corpora:  # each names a file in out_dir: a bad one fails before the scores, not after
            child_path(out_dir, lang, ".safetensors")
    scores = language_scores(model, tokenizer, corpora, method, cfg, progress=progress, corpus_options=corpus_options,
                             units=units)
    sets = m.native_sets(scores, cfg)
    name = model_id or getattr(model.config, "_name_or_path", None) or "unknown"
    for lang, ns in sets.items():
        ns.meta.update(model_id=name, languages=list(scores.langs), corpus=scores.meta["corpora"][lang],
                       corpora=scores.meta["corpora"], score_rule=scores.rule,
                       method_meta={k: v for k, v in scores.meta.items() if k != "corpora"})
    if out_dir is not None:
        for lang, ns in sets.items():
            ns.save(child_path(out_dir, lang, ".safetensors"))
    return sets
