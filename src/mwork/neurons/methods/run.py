"""Running a detection method on several languages' corpora: scores, native sets, files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from mwork.files import check_name, child_path
from mwork.fingerprints import texts_digest
from mwork.neurons.methods.base import LanguageScores, check_languages
from mwork.neurons.neuronset import NeuronSet
from mwork.texts import DETECTION_ARTICLES, TextSource

def parse_corpus_specs(specs: Iterable[str], what: str = "--corpus") -> dict[str, str]:
    """``["en=FILE", "zh=xquad:zh"]`` -> ``{"en": "FILE", "zh": "xquad:zh"}`` (order kept)."""
    out: dict[str, str] = {}
    for spec in specs:
        lang, sep, text = str(spec).partition("=")
        lang = lang.strip()
        if not sep or not text:
            raise ValueError(f"{what} {spec!r}: expected LANG=FILE (e.g. fr=corpus/fr.txt or zh=xquad:zh)")
        check_name(lang, "language code", what)  # it names the file LANG.safetensors
        if lang in out:
            raise ValueError(f"{what} names {lang} twice: give each language once")
        out[lang] = text
    if not out:
        raise ValueError(f"give at least one {what} LANG=FILE")
    return out


def read_corpora(corpora: Mapping[str, Any], *, default_articles: range = DETECTION_ARTICLES,
                 **options: Any) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """Every language's documents and what they are: ``corpora`` maps a language to a text spec
    (``mwork.texts``: a file, ``xquad:LANG[A:B]`` ...), a ``TextSource`` or a list of documents.
    ``options`` (``max_docs``, ``text_field``) apply to specs; XQuAD specs without articles get
    ``default_articles`` (detection: 0-23)."""
    texts: dict[str, list[str]] = {}
    info: dict[str, dict[str, Any]] = {}
    for lang, corpus in corpora.items():
        if isinstance(corpus, (str, Path, TextSource)):
            source = TextSource.parse(corpus, articles=default_articles,
                                      **{k: v for k, v in options.items() if v is not None})
            texts[lang] = source.texts()
            info[lang] = {"spec": str(corpus) if not isinstance(corpus, TextSource) else None, **source.describe()}
        else:
            texts[lang] = [str(t) for t in corpus]
            info[lang] = {"format": "documents given in Python"}
        info[lang]["n_docs"] = len(texts[lang])
        info[lang]["sha256"] = texts_digest(texts[lang])
    return texts, info


def language_scores(model: torch.nn.Module, tokenizer: Any, corpora: Mapping[str, Any], method: str = "lape",
                    config: Any = None, *, progress: bool = True, corpus_options: Mapping[str, Any] | None = None,
                    **overrides: Any) -> LanguageScores:
    """The scores of ``method`` (a registered name) for every language of ``corpora`` (see
    :func:`read_corpora`; ``corpus_options``: its options, e.g. ``{"max_docs": 100}``);
    ``config`` / ``overrides``: the method's settings."""
    from mwork.neurons.methods import get_detection_method

    m = get_detection_method(method)
    cfg = m.make_config(config, **overrides)
    check_languages(list(corpora), method)
    texts, info = read_corpora(corpora, **(corpus_options or {}))
    scores = m.scores(model, tokenizer, texts, cfg, progress=progress)
    scores.meta["corpora"] = info
    return scores


def detect_languages(model: torch.nn.Module, tokenizer: Any, corpora: Mapping[str, Any], method: str = "lape",
                     config: Any = None, *, out_dir: str | Path | None = None, progress: bool = True,
                     model_id: str | None = None, corpus_options: Mapping[str, Any] | None = None,
                     **overrides: Any) -> dict[str, NeuronSet]:
    """Each language's set by the method's own rule (LAPE: the authors' thresholds; AP: top and
    bottom N; PLND: the language-specific sets). With ``out_dir``, each is saved as
    ``<out_dir>/<lang>.safetensors`` (+ ``.json``); its metadata records ``method``, the rule,
    the settings, the model and every language's corpus."""
    from mwork.neurons.methods import get_detection_method

    m = get_detection_method(method)
    cfg = m.make_config(config, **overrides)
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"the output folder {out_dir} is a file; choose another (--out-dir)")
    if out_dir is not None:
        for lang in corpora:  # each names a file in out_dir: a bad one fails before the scores, not after
            child_path(out_dir, lang, ".safetensors")
    scores = language_scores(model, tokenizer, corpora, method, cfg, progress=progress, corpus_options=corpus_options)
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
