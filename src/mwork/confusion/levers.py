"""Levers against language confusion, each switched on toward the expected language of a prompt.

* ``none``: the model as it is;
* ``prompt``: an instruction naming the language (``Reply in French.``) before the test prompt;
* ``neurons``: the language's neurons (``--neurons-dir``, ``LANG.safetensors`` per language, as
  ``mwork detect`` writes them), steered with ``mwork.steer`` in ``set`` (toward their mean
  activation on the language) or ``add`` mode; a set that carries no mean activation has it
  measured on ``--stats-corpus LANG=SPEC`` (as ``experiment control`` does);
* ``vectors``: the language's residual vector (``--vectors-dir``, ``LANG.safetensors`` per
  language, as ``mwork vectors`` writes them), steered in ``add`` (``x + alpha v``), ``add-norm``
  (the same with each edited hidden state's norm restored, ReCoVeR's) or ``set`` mode;
* ``random``: the baseline of the same size: the neurons' set or the vectors drawn at random
  (``random_like``: the same count per layer and kind, or the same norm per layer), steered the
  same way. Random neurons carry no activation statistic: in ``set`` / ``add`` mode their mean on
  the language is measured on ``--stats-corpus LANG=SPEC`` (one pass per language); random
  vectors have no coordinate statistic, so they go with ``--vector-mode add``.

Everything a lever needs from files is checked by :meth:`LeverOptions.check_levers` before a
model loads; :class:`Levers` then prepares each (lever, language) once, on first use."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

from mwork.config import digest, option
from mwork.files import child_path
from mwork.fingerprints import file_digest, fingerprint_texts
from mwork.intervene import parse_layers
from mwork.neurons.neuronset import NeuronSet
from mwork.steering import steer, strength_problem
from mwork.units.directions import Directions
from mwork.units.files import load_units
from mwork.units.neurons import NeuronUnits

NONE, PROMPT, NEURONS, VECTORS, RANDOM = "none", "prompt", "neurons", "vectors", "random"
LEVERS: tuple[str, ...] = (NONE, PROMPT, NEURONS, VECTORS, RANDOM)
#: the levers that steer units (the others change nothing or only the prompt)
STEERING: tuple[str, ...] = (NEURONS, VECTORS, RANDOM)
#: the statistic ``set`` / ``add`` move toward (``mwork.steer``'s default)
STAT = "mean"
#: how vectors are steered (``add-norm``: ``add`` with ``keep_norm``)
VECTOR_MODES: tuple[str, ...] = ("add", "add-norm", "set")


@dataclass(frozen=True, kw_only=True)
class LeverOptions:
    """Which levers a run compares and how each is switched on (mixed into a job's config)."""

    levers: tuple[str, ...] = option((NONE,), f"levers to compare, each toward the expected language: "
                                     f"{', '.join(LEVERS)}", metavar="LEVERS")
    neurons_dir: str | None = option(None, "folder of the languages' neuron sets, LANG.safetensors (mwork detect)",
                                     metavar="DIR")
    vectors_dir: str | None = option(None, "folder of the languages' residual vectors, LANG.safetensors "
                                     "(mwork vectors)", metavar="DIR")
    neuron_mode: str = option("set", "how neurons are steered: set (toward their mean on the language) or add",
                              choices=("set", "add"))
    neuron_strength: float = option(1.0, "the neurons' strength alpha")
    neuron_layers: str | None = option(None, "steer only the neurons of these layers (e.g. 10-17; default: all)")
    vector_mode: str = option("add", "how vectors are steered: add (x + alpha v), add-norm (the same, each edited "
                              "hidden state rescaled to its norm, as experiment control's add-norm) or set (toward "
                              "the language's mean coordinate)", choices=VECTOR_MODES)
    vector_strength: float = option(4.0, "the vectors' strength alpha")
    vector_layers: str | None = option(None, "steer only the vectors of these layers (e.g. 8; default: every "
                                       "layer the file holds)")
    positions: str = option("all", "where levers steer: all, prompt or generated positions",
                            choices=("all", "prompt", "generated"))
    random_of: str | None = option(None, "what the random lever draws like: neurons or vectors (default: "
                                   "neurons when --neurons-dir is given, else vectors)", choices=(NEURONS, VECTORS))
    stats_corpus: tuple[str, ...] = option((), "LANG=SPEC: the texts on which random neurons' mean activation is "
                                           "measured (random neurons in set/add mode; once per language)",
                                           repeat=True, metavar="LANG=SPEC")
    stats_docs: int = option(64, "the first N documents of each --stats-corpus")

    def random_kind(self) -> str:
        """What the random lever draws like."""
        return self.random_of or (NEURONS if self.neurons_dir else VECTORS)

    def steered_kind(self, lever: str) -> str | None:
        """Which unit files a lever reads (neurons, vectors, or None)."""
        if lever == RANDOM:
            return self.random_kind()
        return lever if lever in (NEURONS, VECTORS) else None

    def check_levers(self, languages: tuple[str, ...]) -> dict[str, str]:
        """Every lever's inputs, checked before a model loads: the folders and each language's
        file, the strengths and layers, the random baseline's statistic corpus. Returns the
        statistic corpora by language (``LANG=SPEC`` parsed)."""
        bad = [x for x in self.levers if x not in LEVERS]
        if bad or not self.levers:
            raise ValueError(f"unknown lever {bad[0] if bad else ''!r} in --levers: the levers are {', '.join(LEVERS)}")
        if len(set(self.levers)) != len(self.levers):
            raise ValueError(f"--levers names a lever twice: {','.join(self.levers)}")
        for name in ("neuron_strength", "vector_strength"):
            problem = strength_problem([getattr(self, name)])
            if problem:
                raise ValueError(f"--{name.replace('_', '-')}: {problem}")
        parse_layers(self.neuron_layers)
        parse_layers(self.vector_layers)
        if self.stats_docs < 1:
            raise ValueError(f"--stats-docs must be at least 1, got {self.stats_docs}")
        for lever in self.levers:
            kind = self.steered_kind(lever)
            if kind is None:
                continue
            folder = self.neurons_dir if kind == NEURONS else self.vectors_dir
            flag = f"--{kind}-dir"
            if folder is None:
                why = f"the {lever} lever" + (f" (drawn like the {kind})" if lever == RANDOM else "")
                raise ValueError(f"{why} needs {flag}: the folder holding LANG.safetensors for each language")
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"{flag} {folder} is not a folder")
            missing = [lang for lang in languages if not child_path(folder, lang, ".safetensors").is_file()]
            if missing:
                raise FileNotFoundError(f"{flag} {folder} has no {', '.join(f'{m}.safetensors' for m in missing)}: "
                                        f"the {lever} lever needs each language's set (write them with mwork "
                                        f"{'detect' if kind == NEURONS else 'vectors'})")
        corpora = self._check_random(languages)
        for lever in self.levers:
            kind = self.steered_kind(lever)
            if kind is not None and lever != RANDOM:
                folder = self.neurons_dir if kind == NEURONS else self.vectors_dir
                for lang in languages:
                    self._check_file(kind, child_path(str(folder), lang, ".safetensors"), lang in corpora)
        return corpora

    def _check_file(self, kind: str, path: Path, has_corpus: bool) -> None:
        """A lever's file holds units of its kind, with the statistic its mode moves toward (for
        neurons, measured on the language's ``--stats-corpus`` when the file has none)."""
        units = load_units(path)
        if kind == NEURONS and not isinstance(units, NeuronUnits):
            raise ValueError(f"{path} holds {units.kind}, not a neuron set: --neurons-dir is for mwork detect's sets")
        if kind == VECTORS and not isinstance(units, Directions):
            raise ValueError(f"{path} holds {units.kind}, not directions: --vectors-dir is for mwork vectors' files")
        mode = self.neuron_mode if kind == NEURONS else self.vector_mode
        needs = kind == NEURONS or mode == "set"  # a direction's add moves along the direction itself
        have = units.neurons.statistic_names() if isinstance(units, NeuronUnits) else sorted(units.stats)
        if needs and STAT not in have and not (kind == NEURONS and has_corpus):
            how = ("give --stats-corpus LANG=SPEC to measure it on the language's texts" if kind == NEURONS else
                   "mwork vectors writes it; or use --vector-mode add")
            raise ValueError(f"{path} carries no {STAT!r} statistic, which --{kind[:-1]}-mode {mode} moves toward "
                             f"({how})")

    def _check_random(self, languages: tuple[str, ...]) -> dict[str, str]:
        from mwork.texts import parse_corpus_specs

        corpora = parse_corpus_specs(self.stats_corpus, "--stats-corpus") if self.stats_corpus else {}
        if RANDOM not in self.levers:
            return corpora
        if self.random_kind() == VECTORS and self.vector_mode == "set":
            raise ValueError("random vectors carry no coordinate statistic to set: give --vector-mode add with the "
                             "random lever drawn like the vectors")
        if self.random_kind() == NEURONS:
            missing = [lang for lang in languages if lang not in corpora]
            if missing:
                raise ValueError(f"random neurons in {self.neuron_mode} mode need their mean activation on the "
                                 f"language: give --stats-corpus LANG=SPEC for {', '.join(missing)} (e.g. "
                                 f"{missing[0]}=builtin:{missing[0]})")
        return corpora

    def steer_settings(self, kind: str) -> dict[str, Any]:
        """``mwork.steer``'s keyword arguments for units of ``kind``."""
        if kind == NEURONS:
            return {"mode": self.neuron_mode, "strength": self.neuron_strength, "layers": self.neuron_layers,
                    "positions": self.positions}
        return {"mode": self.vector_mode.removesuffix("-norm"), "strength": self.vector_strength,
                "layers": self.vector_layers, "positions": self.positions,
                "keep_norm": self.vector_mode.endswith("-norm")}


@dataclass
class PreparedLever:
    """A lever toward one language: the units it steers (None: none), how, and a digest of what
    it is made of (for the cells' inputs)."""

    lever: str
    language: str
    units: Any = None
    settings: dict[str, Any] | None = None
    digest: str | None = None

    def context(self, model: Any) -> ContextManager[Any]:
        """Inside it, the lever is on (a no-op for ``none`` and ``prompt``)."""
        if self.units is None:
            return contextlib.nullcontext()
        return steer(model, units=self.units, **(self.settings or {}))


class Levers:
    """Each (lever, language) prepared once: the unit files read, the random sets drawn (seeded)
    and, where their mode needs it, their statistic measured."""

    def __init__(self, options: LeverOptions, *, seed: int, stats_corpora: dict[str, str], progress: bool = True):
        self.options, self.seed, self.stats_corpora, self.progress = options, seed, stats_corpora, progress
        self._done: dict[tuple[str, str], PreparedLever] = {}

    def get(self, lever: str, language: str, model: Any = None, tokenizer: Any = None) -> PreparedLever:
        key = (lever, language)
        if key not in self._done:
            self._done[key] = self._prepare(lever, language, model, tokenizer)
        return self._done[key]

    def digests(self, languages: tuple[str, ...], model: Any, tokenizer: Any) -> dict[str, str]:
        """``{"LEVER/LANG": digest}`` of every steering lever of the run (their cells' unit inputs)."""
        return {f"{lever}/{lang}": self.get(lever, lang, model, tokenizer).digest or ""
                for lever in self.options.levers if lever in STEERING for lang in languages}

    def _file(self, kind: str, language: str) -> Path:
        folder = self.options.neurons_dir if kind == NEURONS else self.options.vectors_dir
        return child_path(str(folder), language, ".safetensors")

    def _prepare(self, lever: str, language: str, model: Any, tokenizer: Any) -> PreparedLever:
        kind = self.options.steered_kind(lever)
        if kind is None:
            return PreparedLever(lever, language)
        path = self._file(kind, language)
        units = load_units(path, model)  # its kind and statistic: LeverOptions.check_levers
        settings = self.options.steer_settings(kind)
        made = {"file": file_digest(path), "settings": settings}
        if lever == RANDOM:
            units, extra = self._random(units, language, settings["mode"], model, tokenizer)
            made.update(extra)
        elif isinstance(units, NeuronUnits) and STAT not in units.neurons.statistic_names():
            measured, made["stats_corpus"] = self._with_mean(units.neurons, language, model, tokenizer)
            units = NeuronUnits(measured)
        return PreparedLever(lever, language, units, settings, digest(made)[:16])

    def _random(self, units: Any, language: str, mode: str, model: Any, tokenizer: Any) -> tuple[Any, dict]:
        """The random set like ``units`` (seeded), with its statistic where ``mode`` needs one."""
        if isinstance(units, Directions):
            return units.random_like(seed=self.seed), {"random_seed": self.seed}
        ns: NeuronSet = units.neurons
        drawn = ns.random_like(seed=self.seed, exclude=ns)
        extra: dict[str, Any] = {"random_seed": self.seed}
        if mode in ("set", "add"):
            drawn, extra["stats_corpus"] = self._with_mean(drawn, language, model, tokenizer)
        return NeuronUnits(drawn), extra

    def _with_mean(self, ns: NeuronSet, language: str, model: Any, tokenizer: Any) -> tuple[NeuronSet, str]:
        """``ns`` with its mean activation on the language's ``--stats-corpus``, and the texts' digest."""
        from mwork.neurons.statistics import add_statistics
        from mwork.texts import read_texts

        spec = self.stats_corpora[language]
        texts = read_texts(spec)[:self.options.stats_docs]
        if not any(t.strip() for t in texts):
            raise ValueError(f"--stats-corpus {language}={spec} has no non-empty document")
        measured = add_statistics(model, tokenizer, ns, texts, (STAT,), language=language,
                                  corpus={"spec": spec, "max_docs": self.options.stats_docs})
        return measured, fingerprint_texts(texts)
