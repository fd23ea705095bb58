"""``mwork detect`` as a job: :class:`DetectJob` (``run(model=None, tokenizer=None)``, then the
result's ``write``), from the shared option groups, :class:`DocumentOptions` (where the
documents come from) and the method's own settings (its ``config_class``).

A method says how it runs (``DetectionMethod.one_language``): one language's corpus per run
(PLND: ``--lang``, ``--corpus FILE`` or a hub data set, ``--out``; resumable, data-parallel under
torchrun; :func:`mwork.neurons.detect.detect`) or every language at once (LAPE, AP: ``--corpus
LANG=SPEC`` each, ``--out-dir``; :func:`mwork.neurons.methods.detect_languages`). Both write as
they go (PLND checkpoints beside its output), so the result's ``write()`` names the files the run
wrote, or saves the sets elsewhere::

    DetectJob(lang="fr", corpus=("fr.txt",), out="sets/fr", settings={"top_k": 50}).run()
    DetectJob(method="lape", corpus=("en=en.txt", "fr=fr.txt"), out_dir="lape").run().sets["fr"]

``units``: what is scored -- ``neurons`` (the default), or ``sae:DIR``, the features of the
dictionary in DIR (what ``mwork sae train`` / ``mwork sae load`` wrote, or a dictionary file);
each language's set is then a Dictionary of its features (``mwork.load_units`` reads it). The
dictionary is read and the method asked whether it scores features before the model loads, and
checked against the model's width before any pass.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Mapping

from mwork.config import option
from mwork.jobs import Job, ModelOptions, RunOptions
from mwork.neurons.detect_config import DetectOptions
from mwork.neurons.neuronset import NeuronSet, set_path
from mwork.texts import DETECTION_ARTICLES, FORMATS, TextSource, parse_corpus_specs, parse_range


SAE_PREFIX = "sae:"


def _units_spec(text: str) -> str:
    """``neurons`` or ``sae:DIR`` (``--units``), refused at once otherwise."""
    if text != "neurons" and not (text.startswith(SAE_PREFIX) and text[len(SAE_PREFIX):]):
        raise argparse.ArgumentTypeError(f"--units takes neurons or sae:DIR (a dictionary folder or file), not {text!r}")
    return text


def read_dictionary_units(spec: str) -> Any:
    """The dictionary ``sae:DIR`` names (None for ``neurons``), read without a model; a clear
    error for a missing folder or a unit set of another kind."""
    if spec == "neurons":
        return None
    from mwork.units.files import load_units, unit_path

    where = spec[len(SAE_PREFIX):] if spec.startswith(SAE_PREFIX) else spec
    if not unit_path(where).is_file():
        raise ValueError(f"--units {spec}: no dictionary at {where} (a folder written by mwork sae train / mwork sae "
                         "load, or its dictionary.safetensors)")
    units = load_units(where)
    if getattr(units, "kind", None) != "dictionary":
        raise ValueError(f"--units {spec}: {where} holds {getattr(units, 'kind', 'other')} units, not a dictionary; "
                         "give a folder written by mwork sae train / mwork sae load")
    return units


def _method_name(name: str) -> str:
    """A registered detection method (``--method``), refused at once otherwise."""
    from mwork.neurons.methods import detection_methods

    if name not in detection_methods():
        raise argparse.ArgumentTypeError(f"unknown detection method {name!r}; methods: "
                                         + ", ".join(detection_methods()))
    return name


@dataclass(frozen=True, kw_only=True)
class DocumentOptions:
    """Where a detection's documents come from: one corpus (a file, or a hub data set with
    ``hf_*``) for a one-language method, ``LANG=SPEC`` per language for the others; the first
    ``max_docs`` documents of each (empty ones included)."""

    corpus: tuple[str, ...] = option(
        (), "plnd: text file (one document per line), JSONL (.jsonl) or SQuAD JSON (.json); lape/ap: LANG=SPEC, once "
        "per language (SPEC: a file, FILE[A:B], xquad:LANG[A:B], hf:DATASET...)", repeat=True)
    format: str = option("auto", "corpus file format (auto: from the suffix)", choices=FORMATS)
    text_field: str | None = option(None, "JSONL / hub data set field holding the text (default: text)")
    articles: str | None = option(None, "SQuAD JSON only: articles START:STOP (e.g. 0:24)")
    hf_dataset: str | None = option(None, "hub data set id or local data set folder instead of --corpus")
    hf_config: str | None = option(None, "the hub data set's configuration")
    hf_split: str = option("train", "the hub data set's split")
    max_docs: int | None = option(None, "use the first N documents (empty ones included)")

    def text_source(self) -> TextSource:
        """The one corpus of a one-language method (checked: the file exists, the range, ...)."""
        return TextSource(
            path=self.corpus[0] if self.corpus else None, format=self.format, text_field=self.text_field or "text",
            hf_dataset=self.hf_dataset, hf_config=self.hf_config, hf_split=self.hf_split,
            articles=parse_range(self.articles, "--articles") if self.articles else None, max_docs=self.max_docs)

    def corpus_options(self) -> dict[str, Any]:
        """How ``read_corpora`` reads each ``LANG=SPEC``."""
        return {"text_field": self.text_field or "text", "max_docs": self.max_docs}

    def check_text_field(self, corpora: Mapping[str, TextSource]) -> None:
        """``text_field`` names a field of JSONL or hub rows; for any other corpus it would be ignored."""
        if self.text_field is None:
            return
        other = [f"{lang} ({source.kind()})" for lang, source in corpora.items()
                 if source.kind() not in ("jsonl", "hf")]
        if other:
            raise ValueError(f"--text-field {self.text_field} names the text field of JSONL or hub data set rows; "
                             f"the corpus of {', '.join(other)} has no fields")


@dataclass(frozen=True, kw_only=True)
class DetectJob(ModelOptions, DocumentOptions, RunOptions, Job):
    """A detection run of any registered method (module docstring). ``settings``: the method's
    config (its ``config_class``) or a mapping of its fields (default: its defaults); for a
    one-language method its language is ``lang``. The model recorded is ``model``."""

    command = "detect"
    summary = "detect language-specific neurons (PLND, LAPE, activation AP) and save NeuronSets"

    method: str = option("plnd", "detection method (see above)", parse=_method_name)
    units: str = option("neurons", "what is scored: neurons, or sae:DIR (the features of the dictionary in DIR, "
                        "written by mwork sae train / load; --method lape, ap, monolinguality)", parse=_units_spec,
                        metavar="UNITS")
    lang: str | None = option(None, "plnd: language code recorded in the set (e.g. fr)", flag="--lang",
                              metavar="LANG")
    out: str | None = option(None, "plnd: output NeuronSet path (.safetensors added if missing)", record=False)
    out_dir: str | None = option(None, "lape / ap: output folder (LANG.safetensors per language)", record=False)
    resume: bool = option(True, "plnd: continue from OUT's checkpoint if one exists with the same settings",
                          record=False)
    settings: Any = option(None, "the method's settings: its config, or a mapping of its fields", cli=False)

    # ---- checks, before the model loads ---------------------------------------------------------
    def check(self) -> None:
        method = self._method()
        if self.settings is None or isinstance(self.settings, Mapping):
            self._refuse_others()
        method.check_units(read_dictionary_units(_units_spec(self.units)), self.method_config())
        if method.one_language:
            self._check_one_language()
        else:
            self._check_languages()
        self.check_model_options()

    def _method(self) -> Any:
        from mwork.neurons.methods import get_detection_method

        return get_detection_method(self.method)

    def _refuse_others(self) -> None:
        """Settings of the other methods given with this one: an error, not ignored."""
        from mwork.neurons.methods import detection_methods, get_detection_method

        given = dict(self.settings or {})
        mine = {f.name for f in dataclasses.fields(self._method().config_class)}
        known = set(mine)
        for other in detection_methods():
            fields = dataclasses.fields(get_detection_method(other).config_class)
            known.update(f.name for f in fields)
            stray = [f for f in fields if f.name in given and f.name not in mine]
            if stray:
                flags = ", ".join(f.metadata.get("flag") or "--" + f.name.replace("_", "-") for f in stray)
                raise ValueError(f"{flags} does not apply to --method {self.method}")
        unknown = sorted(set(given) - known)
        if unknown:
            raise TypeError(f"unknown detection setting(s) {', '.join(unknown)} for --method {self.method}")

    def method_config(self) -> Any:
        """The method's settings (a one-language method's with ``language=lang``), checked."""
        method = self._method()
        language = {"language": self.lang} if method.one_language and self.lang is not None else {}
        if self.settings is None or isinstance(self.settings, Mapping):
            self._refuse_others()
            return method.make_config(None, **{**dict(self.settings or {}), **language})
        return method.make_config(self.settings, **language)

    def _several(self) -> str:
        from mwork.neurons.methods import detection_methods, get_detection_method

        return ", ".join(m for m in detection_methods() if not get_detection_method(m).one_language)

    def _check_one_language(self) -> None:
        from mwork.files import check_name, check_output_path

        name = self.method
        if self.out_dir is not None:
            raise ValueError("--out-dir is for the methods that detect several languages at once (--method "
                             f"{self._several()}); --method {name} writes one language's set to --out")
        if self.out is None:
            raise ValueError(f"--method {name} needs --out (the NeuronSet to write)")
        if self.lang is None:
            raise ValueError(f"--method {name} needs --lang LANG (the language of the corpus)")
        check_name(self.lang, "language code", "--lang")  # the one rule for language codes
        if len(self.corpus) > 1:
            raise ValueError(f"--method {name} reads one corpus (--corpus FILE); the LANG=FILE corpora are for "
                             f"--method {self._several()}")
        self.method_config()
        self.check_text_field({self.lang: self.text_source()})
        check_output_path(self.out, "NeuronSet")
        if set_path(self.out).is_dir():
            raise ValueError(f"cannot write the NeuronSet to {set_path(self.out)}: it is a folder; choose another --out")

    def _check_languages(self) -> None:
        from mwork.files import child_path
        from mwork.neurons.methods.base import check_languages

        name = self.method
        if self.out is not None or self.lang is not None:
            raise ValueError(f"--method {name} writes one set per language: give --corpus LANG=FILE for each language "
                             "and --out-dir DIR (not --out / --lang)")
        if self.out_dir is None:
            raise ValueError(f"--method {name} needs --out-dir DIR (DIR/LANG.safetensors per language)")
        if self.hf_dataset or self.hf_config or self.articles or self.format != "auto":
            raise ValueError(f"with --method {name} name each corpus as LANG=SPEC (a file, FILE[A:B], "
                             "xquad:LANG[A:B], hf:DATASET[:CONFIG][@SPLIT]), not with --hf-dataset/--articles/--format")
        specs = parse_corpus_specs(self.corpus)
        self.method_config()
        self.check_text_field({lang: TextSource.parse(spec, articles=DETECTION_ARTICLES, **self.corpus_options())
                               for lang, spec in specs.items()})
        check_languages(list(specs), name)
        if self.units != "neurons":
            from mwork.neurons.methods.top_tokens import check_language_names

            check_language_names(list(specs))
        if Path(self.out_dir).exists() and not Path(self.out_dir).is_dir():
            raise ValueError(f"the output folder {self.out_dir} is a file; choose another (--out-dir)")
        for lang in specs:
            child_path(self.out_dir, lang, ".safetensors")

    # ---- the run ---------------------------------------------------------------------------------
    def context(self) -> ContextManager[Any]:
        """PLND is data-parallel under torchrun (the ranks share the corpus; rank 0 writes)."""
        from mwork import distributed

        return distributed.group() if self._method().one_language else contextlib.nullcontext()

    def compute(self, model: Any, tokenizer: Any) -> "DetectResult | LanguageSetsResult":
        config = self.method_config()
        if self._method().one_language:
            from mwork import distributed
            from mwork.neurons.detect import detect

            source = self.text_source()
            start = time.time()
            ns = detect(model, tokenizer, source, config, out=self.out,
                        options=DetectOptions(resume=self.resume, progress=self.progress, model_id=self.model,
                                              corpus_info=source.describe()))
            return DetectResult(ns, config, self.out, time.time() - start, distributed.world_size())
        from mwork.neurons.methods import language_sets

        start = time.time()
        units = None if self.units == "neurons" else read_dictionary_units(self.units)
        found = language_sets(model, tokenizer, parse_corpus_specs(self.corpus), self.method, config,
                              out_dir=self.out_dir, corpus_options=self.corpus_options(),
                              options=DetectOptions(progress=self.progress, model_id=self.model, units=units))
        return LanguageSetsResult(found.sets, self.method, self.out_dir, time.time() - start, found.top_tokens)


@dataclass
class DetectResult:
    """One language's set (a one-language method), saved at ``out`` by the run."""

    neurons: NeuronSet
    config: Any
    out: str | Path | None = None
    seconds: float = 0.0
    world_size: int = 1

    def write(self, out: str | Path | None = None) -> dict[str, Path]:
        """The set's files: where the run saved it, or saved again at ``out``."""
        target = out if out is not None else self.out
        if target is None:
            raise ValueError("give the path to write the NeuronSet to")
        path = set_path(target)
        if self.out is None or path.resolve() != set_path(self.out).resolve():
            path = self.neurons.save(target)
        return {"set": path, "json": path.with_suffix(".json")}

    def lines(self) -> list[str]:
        """What ``mwork detect`` prints: the set's size and the rule's numbers."""
        ns = self.neurons
        per_kind = ", ".join(f"{k}={ns.count(k)}" for k in ns.kinds)
        across = ns.meta["across_documents"]
        need, n = across["min_doc_count"], ns.meta["n_docs"]
        fewer = {k: f"{across['min_doc_count_per_kind'][k]}/{m}" for k, m in across["n_docs_per_kind"].items()
                 if m != n}
        label = " [REFERENCE-COMPAT]" if self.config.reference_compat else ""
        world = self.world_size
        return [f"{self.config.language}: {ns.count()} neurons ({ns.fraction():.4%} of all; {per_kind}) important in "
                f"{need}/{n} documents"
                + ("".join(f", {k} in {v}" for k, v in fewer.items()) if fewer else "")
                + f" ({len(ns.meta['empty_documents'])} empty, {len(ns.meta['failed_documents'])} failed){label} "
                f"-> {Path(self.out)} ({self.seconds:.0f} s{f', {world} processes' if world > 1 else ''})"]


@dataclass
class LanguageSetsResult:
    """One set per language (a method that detects every language at once), saved in
    ``out_dir`` by the run; ``top_tokens``: on a dictionary's features, the content of
    ``top_tokens.json`` (each chosen feature's top activating tokens per language)."""

    sets: dict[str, NeuronSet]
    method: str
    out_dir: str | Path | None = None
    seconds: float = 0.0
    top_tokens: dict[str, Any] | None = None

    def write(self, out_dir: str | Path | None = None) -> dict[str, Path]:
        """``LANG.safetensors`` (+ ``.json``) per language and, on features, ``top_tokens.json``:
        where the run saved them, or saved again in ``out_dir``."""
        from mwork.files import child_path
        from mwork.neurons.methods.top_tokens import FILE, write_top_tokens

        target = out_dir if out_dir is not None else self.out_dir
        if target is None:
            raise ValueError("give the folder to write the sets to")
        same = self.out_dir is not None and Path(target).resolve() == Path(self.out_dir).resolve()
        files = {}
        for lang, ns in self.sets.items():
            path = child_path(target, lang, ".safetensors")
            files[lang] = path if same else ns.save(path)
        if self.top_tokens is not None:
            files[FILE] = Path(target) / FILE if same else write_top_tokens(target, self.top_tokens)
        return files

    def lines(self) -> list[str]:
        """What ``mwork detect`` prints: each language's set, then the time."""
        out = []
        for lang, ns in self.sets.items():
            if getattr(ns, "kind", None) == "dictionary":
                total = sum(book.width for book in ns.books.values())
                out.append(f"{lang}: {ns.count()} features ({ns.count() / total:.4%} of the dictionary's {total}) by "
                           f"{self.method} -> {Path(self.out_dir) / (lang + '.safetensors')}")
                continue
            per_kind = ", ".join(f"{k}={ns.count(k)}" for k in ns.kinds if ns.count(k))
            out.append(f"{lang}: {ns.count()} neurons ({ns.fraction():.4%} of all; {per_kind or 'none'}) by "
                       f"{self.method} -> {Path(self.out_dir) / (lang + '.safetensors')}")
        if self.top_tokens is not None:
            out.append(f"top activating tokens of the {len(self.top_tokens['features'])} chosen features per language "
                       f"-> {Path(self.out_dir) / 'top_tokens.json'}")
        return out + [f"({self.seconds:.0f} s)"]
