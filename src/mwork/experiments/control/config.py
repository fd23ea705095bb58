"""``ControlConfig``: every setting of a control experiment (``mwork experiment control``), in one
place: the options (generated with ``mwork.config``), the settings a resumed run must match and
the settings recorded with the results. Bad values are refused here, and the inputs (items,
unit set files) by :meth:`ControlConfig.check`, before a model is loaded."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mwork.config import option
from mwork.control.items import ITEM_SETS, item_languages
from mwork.experiments.control.layers import REGIONS, layer_spec
from mwork.experiments.control.levers import CHOICES, NEURON_MODES, VECTOR_MODES, lever
from mwork.experiments.control.prompts import INSTRUCTION_LANGUAGES
from mwork.jobs import Job, ModelOptions, OutputOptions, RunOptions, WrittenResult
from mwork.steering import POSITIONS, strength_problem

DEFAULT_SOURCES: tuple[str, ...] = ("en", "zh", "ru")
DEFAULT_TARGETS: tuple[str, ...] = ("en", "fr", "es", "de", "ru", "zh")
CHOOSE: tuple[str, ...] = ("pair", "lever")



def _check_strengths(values: tuple[float, ...], flag: str) -> None:
    problem = strength_problem(values) if values else "give at least one strength"
    if problem:
        raise ValueError(f"{flag}: {problem}")
    if any(s == 0 for s in values):
        raise ValueError(f"{flag}: 0 leaves the model unchanged (the unsteered rows are always there); give non-zero "
                         "strengths")
    if len(set(values)) != len(values):
        raise ValueError(f"{flag} {list(values)} repeats a value; give each once")


def _check_choices(values: tuple[str, ...], known: tuple[str, ...], flag: str) -> None:
    if not values:
        raise ValueError(f"{flag}: give at least one of {', '.join(known)}")
    bad = [v for v in values if v not in known]
    if bad:
        raise ValueError(f"{flag}: unknown {', '.join(map(repr, bad))}; use {', '.join(known)}")
    if len(set(values)) != len(values):
        raise ValueError(f"{flag}: {list(values)} repeats a value; give each once")


@dataclass(frozen=True, kw_only=True)
class ControlConfig(ModelOptions, RunOptions, OutputOptions, Job):
    """One control experiment: levers x sources x targets x settings, chosen on dev, reported on test."""

    command = "control"
    summary = ("language control that keeps the meaning: levers (neurons, vectors, random, prompt) over sources x "
               "targets, scored on forcing and meaning, settings chosen on dev and reported on test")

    levers: tuple[str, ...] | None = option(None, "comma-separated, of " + ", ".join(CHOICES) + " (default: every "
                                            "lever whose --neurons-dir / --vectors-dir is given, and prompt)")
    neurons_dir: str | None = option(None, "folder of LANG.safetensors language neuron sets (any detection method)",
                                     metavar="DIR")
    features_dir: str | None = option(None, "folder of LANG.safetensors language dictionary features (mwork detect "
                                       "--units sae:DIR)", metavar="DIR")
    vectors_dir: str | None = option(None, "folder of LANG.safetensors language vectors (mwork vectors)",
                                     metavar="DIR")
    sources: tuple[str, ...] | None = option(None, "source languages (default: those of en,zh,ru the item sets "
                                             "have)")
    targets: tuple[str, ...] | None = option(None, "target languages (default: those of en,fr,es,de,ru,zh the "
                                             "item sets have); a pair whose source is its target is left out")
    items: tuple[str, ...] = option(("xquad-text",), "item sets, comma-separated, of " + ", ".join(ITEM_SETS))
    data: str | None = option(None, "XQuAD / MGSM data: a local folder (as the tasks read) or 'hub' (default: "
                              "$MWORK_DATA, else the hub)", metavar="DIR")
    limit: int = option(8, "items per source, target and item set, split between dev and test", metavar="N")
    dev_fraction: float = option(0.5, "the share of the items (of --limit, and of the paragraphs or problems the "
                                 "split hashes) that is dev")
    layers: tuple[str, ...] | None = option(None, "layer ranges to sweep, comma-separated: all, understanding (U), "
                                            "task-solving (T), generation (G) or layers such as 6-12 or 3+7-9 "
                                            "(default: all, and the three regions when --understanding / "
                                            "--generation or --lens is given)")
    neuron_layers: tuple[str, ...] | None = option(None, "layer ranges of the neuron and feature edits "
                                                   "(neurons, features, their random baselines), as --layers: a "
                                                   "language's neurons lie in few layers, "
                                                   "so a range that holds none of them is no edit (default: "
                                                   "--layers)")
    strengths: tuple[float, ...] = option((0.5, 1.0, 2.0), "strengths to sweep, comma-separated (not 0: that is "
                                          "the unsteered model)", metavar="A,B,...")
    vector_strengths: tuple[float, ...] | None = option(None, "strengths of the vector edits (vectors, prompt+vector, "
                                                        "random directions), on their own scale: a vector is added "
                                                        "at every layer of the range (default: --strengths)",
                                                        metavar="A,B,...")
    modes: tuple[str, ...] = option(NEURON_MODES, "neuron modes to sweep (set: x <- (1-a) x + a s; add: x <- x + "
                                    "a s; s the target language's mean activation)")
    vector_modes: tuple[str, ...] = option(("add", "add-norm", "swap"), "vector modes to sweep: add (x <- x + a v), "
                                           "add-norm (the hidden state's norm restored), swap (the source "
                                           "language's direction removed first), swap-norm")
    instructions: tuple[str, ...] = option(INSTRUCTION_LANGUAGES, "prompt levers: the instruction in the source "
                                           "language (source) and / or in English (en)")
    positions: tuple[str, ...] = option(("all",), "token positions to sweep: all, prompt, generated")
    understanding: int | None = option(None, "U: the first U layers are the understanding region", metavar="U")
    generation: int | None = option(None, "G: the last G layers are the generation region", metavar="G")
    lens: str | None = option(None, "a `mwork lens` result to estimate U and G from", metavar="DIR")
    stats_corpus: tuple[str, ...] = option((), "LANG=SPEC: a target language's texts for the neurons' mean "
                                           "activations (default: builtin:LANG)", repeat=True, metavar="LANG=SPEC")
    stats_docs: int = option(64, "documents of each target language's texts for the mean activations", metavar="N")
    stats_max_length: int = option(128, "tokens per document for the mean activations")
    seed: int = option(0, "seed of the random neurons and directions")
    choose: str = option("pair", "choose a setting per lever on dev for each pair, or one per lever over every pair",
                         choices=CHOOSE)
    chat: bool = option(False, "give every prompt as a user turn of the model's chat template")
    text_shots: int = option(1, "text items: 1 shows one other sentence of the data and the cue followed by it "
                             "before the item's (a base model then repeats the sentence it is given); 0: the "
                             "item's sentence and the cue alone", choices=(0, 1))
    judge: str | None = option(None, "a causal LM (alias, local folder or hub id; the model itself too) that rates "
                               "each output's relevance to its item 0-2, as CLaS-Bench's judge (columns judge, "
                               "meaning_judge)", metavar="MODEL")
    meaning_from: str = option("measure", "the meaning axis: the item's measure (match for text, F1 for QA) or the "
                               "judge's relevance (needs --judge)", choices=("measure", "judge"))
    max_new_tokens: int = option(32, "tokens generated per item")
    batch_size: int = option(8, "prompts per generation batch")
    stack: int = option(8, "settings (cells) of a pair generated together: their rows share batches of "
                        "--batch-size, each setting's edit on its own rows (1: each setting alone); greedy "
                        "outputs are the same", record=False, metavar="N")

    def __post_init__(self) -> None:
        self._normalise()
        self._check_values()

    def _normalise(self) -> None:
        """Lists given as text (Python callers) as tuples; names checked; layer entries written one way."""
        from mwork.files import parse_names

        for name in ("levers", "items", "modes", "vector_modes", "instructions", "positions"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = tuple(x.strip() for x in value.split(",") if x.strip())
            object.__setattr__(self, name, None if value is None else tuple(value))
        for name in ("sources", "targets"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, parse_names(getattr(self, name), flag=f"--{name}"))
        for name in ("layers", "neuron_layers"):
            value = getattr(self, name)
            if value is None:
                continue
            specs = value.split(",") if isinstance(value, str) else value
            value = tuple(layer_spec(s) for s in specs if str(s).strip())
            object.__setattr__(self, name, value)
            if not value or len(set(value)) != len(value):
                raise ValueError(f"--{name.replace('_', '-')}: give each layer range once, got {list(value)}")
        object.__setattr__(self, "strengths", tuple(float(s) for s in self.strengths))
        if self.vector_strengths is not None:
            object.__setattr__(self, "vector_strengths", tuple(float(s) for s in self.vector_strengths))

    def _check_values(self) -> None:
        """Each option's own rules (the inputs they name are checked by :meth:`check`)."""
        from mwork.lens.regions import check_region_options

        if self.levers is not None:
            _check_choices(self.levers, CHOICES, "--levers")
        for flag, values, known in (("--items", self.items, tuple(ITEM_SETS)), ("--modes", self.modes, NEURON_MODES),
                                    ("--vector-modes", self.vector_modes, VECTOR_MODES),
                                    ("--instructions", self.instructions, INSTRUCTION_LANGUAGES),
                                    ("--positions", self.positions, POSITIONS)):
            _check_choices(values, known, flag)
        _check_strengths(self.strengths, "--strengths")
        if self.meaning_from not in ("measure", "judge"):
            raise ValueError(f"--meaning-from must be measure or judge, got {self.meaning_from!r}")
        if self.meaning_from == "judge" and not self.judge:
            raise ValueError("--meaning-from judge needs --judge MODEL: the model that rates the outputs")
        if self.text_shots not in (0, 1):
            raise ValueError(f"--text-shots must be 0 or 1, got {self.text_shots}")
        if self.vector_strengths is not None:
            _check_strengths(self.vector_strengths, "--vector-strengths")
        if not 0.0 < self.dev_fraction < 1.0 or not math.isfinite(self.dev_fraction):
            raise ValueError(f"--dev-fraction must be between 0 and 1 (both splits need items), got {self.dev_fraction}")
        if self.limit < 2:
            raise ValueError(f"--limit must be at least 2 (an item for dev and one for test), got {self.limit}")
        for name in ("max_new_tokens", "batch_size", "stack", "stats_docs", "stats_max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.choose not in CHOOSE:
            raise ValueError(f"--choose must be one of {', '.join(CHOOSE)}, got {self.choose!r}")
        check_region_options(self.lens, self.understanding, self.generation)
        for flag, specs in (("--layers", self.layers), ("--neuron-layers", self.neuron_layers)):
            if specs and any(s in REGIONS for s in specs) and self.lens is None and \
                    (self.understanding is None or self.generation is None):
                raise ValueError(f"{flag} names a region: give --understanding and --generation, or --lens")

    # ---- what the run does, decided before any model is loaded ------------------------------

    def chosen_levers(self) -> tuple[str, ...]:
        """The levers to run (``levers``, or every lever whose inputs are given)."""
        if self.levers is not None:
            return self.levers
        out = [name for name in CHOICES if all(self.has_folder(need) for need in lever(name).needs)]
        if "random" in out and not (self.neurons_dir or self.features_dir or self.vectors_dir):
            out.remove("random")
        return tuple(out)

    def has_folder(self, need: str) -> bool:
        """Whether the folder of a unit family (``neurons``, ``features``, ``vectors``) is given."""
        return self.folder(need) is not None

    def folder(self, family: str) -> str | None:
        """The folder of a unit family's LANG.safetensors files."""
        return {"neurons": self.neurons_dir, "features": self.features_dir, "vectors": self.vectors_dir}[family]

    def strengths_of(self) -> dict[str, tuple[float, ...]]:
        """The strengths swept per unit family (``neurons``, ``features``: ``strengths``; ``vectors``)."""
        return {"neurons": self.strengths, "features": self.strengths,
                "vectors": self.vector_strengths or self.strengths}

    def layer_specs(self) -> tuple[str, ...]:
        """Every layer range swept (``layers``, or ``all`` and the regions when they can be told;
        then those of ``neuron_layers`` not among them)."""
        return tuple(dict.fromkeys((*self._layers(), *(self.neuron_layers or ()))))

    def layer_specs_of(self) -> dict[str, tuple[str, ...]]:
        """The layer ranges swept per unit family (``neurons``, ``features``: ``neuron_layers``;
        ``vectors``)."""
        return {"neurons": self.neuron_layers or self._layers(), "features": self.neuron_layers or self._layers(),
                "vectors": self._layers()}

    def _layers(self) -> tuple[str, ...]:
        if self.layers is not None:
            return self.layers
        known = self.lens is not None or (self.understanding is not None and self.generation is not None)
        return ("all", *REGIONS) if known else ("all",)

    def languages(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The sources and targets: as given (each must be in every item set), or the defaults
        that every item set has."""
        common = set.intersection(*(set(item_languages(s)) for s in self.items))
        out = []
        for name, given, default in (("sources", self.sources, DEFAULT_SOURCES),
                                     ("targets", self.targets, DEFAULT_TARGETS)):
            if given is None:
                langs = tuple(lang for lang in default if lang in common)
            else:
                missing = [lang for lang in given if lang not in common]
                if missing:
                    have = {s: ", ".join(item_languages(s)) for s in self.items}
                    raise ValueError(f"--{name}: {', '.join(missing)} not in the item set(s) "
                                     + "; ".join(f"{s} has {h}" for s, h in have.items()))
                if len(set(given)) != len(given):
                    raise ValueError(f"--{name} {list(given)} repeats a language; give each once")
                langs = given
            if not langs:
                raise ValueError(f"no {name}: the item sets {', '.join(self.items)} have none of "
                                 f"{', '.join(default)}; give --{name}")
            out.append(langs)
        return out[0], out[1]

    def pairs(self) -> list[tuple[str, str]]:
        """Every (source, target) with source != target."""
        sources, targets = self.languages()
        pairs = [(s, t) for s in sources for t in targets if s != t]
        if not pairs:
            raise ValueError(f"no language pair: every target is its source ({', '.join(sources)}); the control "
                             "experiment moves a source language to another: give other --targets")
        return pairs

    def check(self) -> None:
        """Everything a user gives, before a model is loaded: the levers and their files, the
        languages and the prompts (:func:`mwork.experiments.control.inputs.check_inputs`)."""
        from mwork.experiments.control.inputs import check_inputs

        self.check_model_options()
        check_inputs(self)

    def run(self, model: Any = None, tokenizer: Any = None) -> WrittenResult:
        """The experiment (``run_control``): the inputs are read and checked before the model is
        loaded; finished cells are kept under ``out`` and reused by a rerun."""
        import mwork.experiments.control.schema as schema
        from mwork.experiments.control.runner import run_control

        self.check()
        data = run_control(self, model=model, tokenizer=tokenizer)
        folder = Path(self.out)
        names = (schema.CONTROL.name, schema.CHOSEN.name, schema.GENERATIONS.name, schema.SUMMARY.name,
                 schema.HEATMAP, schema.PARETO)
        return WrittenResult(folder, {n: folder / n for n in names if (folder / n).exists()}, data,
                             extra={"out": self.out})
