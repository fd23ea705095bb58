"""Planning the grid: the layer regions, and every cell to measure, each under a frozen key
(``mwork.experiments.kernel`` keeps, resumes and executes them).

A cell is one evaluation: language ``eval_lang`` measured with ``variant`` neurons of language
``neurons_of`` switched off in ``region`` (``specific``: its language-specific neurons there;
``random<seed>``: random neurons of the same count per layer and kind). The unmodified model's
cells are ``CellKey("original", "none", None, lang)``. Cells are keyed by what they measure,
so the headline and the grid's "all layers" row share theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from mwork.experiments.kernel import Cell
from mwork.experiments.kernel import CellKey as KernelKey
from mwork.layer_regions import GENERATION, TASK_SOLVING, UNDERSTANDING, region_layers
from mwork.models.adapters import KINDS
from mwork.neurons.neuronset import NeuronSet

ATTN_KINDS = ("q", "k", "v")
ORIGINAL = "original"
ALL_LAYERS = "all layers"


@dataclass(frozen=True)
class Region:
    """A row of the grid: which layers and kinds are switched off."""

    name: str
    layers: tuple[int, ...]
    kinds: tuple[str, ...]


def layer_regions(num_layers: int, understanding: int, generation: int) -> list[Region]:
    """The paper's regions: understanding = first U layers, generation = last G layers,
    task-solving = the rest, split into attention and FFN; plus all layers together
    (``mwork.layer_regions.region_layers``)."""
    spans = region_layers(num_layers, understanding, generation)
    task = tuple(spans[TASK_SOLVING])
    regions = [
        Region("understanding", tuple(spans[UNDERSTANDING]), KINDS),
        Region("task-solving attention", task, ATTN_KINDS),
        Region("task-solving FFN", task, ("ffn",)),
        Region("generation", tuple(spans[GENERATION]), KINDS),
        Region(ALL_LAYERS, tuple(range(num_layers)), KINDS),
    ]
    return [r for r in regions if r.layers]


def check_languages(langs: Sequence[str], english: str) -> list[str]:
    """The non-English languages; a clear error for a repeated language, no English, or English alone."""
    repeated = sorted({lang for lang in langs if list(langs).count(lang) > 1})
    if repeated:
        raise ValueError(f"the languages (--langs) name {', '.join(repeated)} more than once ({','.join(langs)}): "
                         "give each language once")
    if english not in langs:
        raise ValueError(f"the languages (--langs) must include English ({english!r}) to measure ΔEng; got "
                         f"{', '.join(langs) or 'none'}")
    targets = [lang for lang in langs if lang != english]
    if not targets:
        raise ValueError(f"the languages (--langs {','.join(langs)}) have none besides English: give at least one "
                         "non-English language too")
    return targets


@dataclass(frozen=True)
class GridSpec:
    """What the grid measures (the settings that decide which cells exist)."""

    langs: tuple[str, ...]
    english: str
    understanding: int
    generation: int
    seeds: tuple[int, ...]
    matrix: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "langs", tuple(self.langs))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        check_languages(self.langs, self.english)
        if not self.seeds:
            raise ValueError("give at least one random-baseline seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"the seeds {list(self.seeds)} repeat a seed: give each seed once")

    @property
    def targets(self) -> list[str]:
        return [lang for lang in self.langs if lang != self.english]

    @property
    def variants(self) -> list[str]:
        return ["specific"] + [f"random{s}" for s in self.seeds]

    def recorded(self, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The settings recorded with the results (and compared on resume): these fields, then
        the caller's ``settings``, then ``matrix`` when it is on (older folders stay resumable)."""
        out = {"langs": list(self.langs), "english": self.english, "understanding": self.understanding,
               "generation": self.generation, "seeds": list(self.seeds), **dict(settings or {})}
        if self.matrix:
            out["matrix"] = True
        return out


@dataclass(frozen=True)
class CellKey(KernelKey):
    """What one grid cell measures (see the module docstring)."""

    region: str
    variant: str
    neurons_of: str | None
    eval_lang: str

    @classmethod
    def original(cls, lang: str) -> "CellKey":
        return cls(ORIGINAL, "none", None, lang)

    @classmethod
    def from_json(cls, value: Any) -> "CellKey":
        key = super().from_json(value)
        if not all(isinstance(v, str) for v in (key.region, key.variant, key.eval_lang)):
            raise ValueError(f"cell key fields must be strings (neurons_of may be null); got {value!r}")
        return key

    def __str__(self) -> str:
        return ORIGINAL + "|" + self.eval_lang if self.region == ORIGINAL else super().__str__()


def _variants(ns: NeuronSet, region: Region, seeds: Sequence[int]) -> list[tuple[str, NeuronSet]]:
    spec = ns.restrict(region.layers, region.kinds)
    return [("specific", spec)] + [(f"random{s}", spec.random_like(seed=s)) for s in seeds]


def plan_cells(spec: GridSpec, neuron_sets: Mapping[str, NeuronSet], num_layers: int) -> list[Cell]:
    """Every cell of the grid, in the order they are computed: the unmodified model, the headline
    (each language with its own neurons off, all layers), the regions, then the matrix."""
    regions = layer_regions(num_layers, spec.understanding, spec.generation)
    full = Region(ALL_LAYERS, tuple(range(num_layers)), KINDS)
    cells: dict[CellKey, Cell] = {}

    def add(key: CellKey, off: NeuronSet | None) -> None:
        cells.setdefault(key, Cell(key, off))

    for lang in spec.langs:
        add(CellKey.original(lang), None)
    for lang in spec.langs:
        for variant, ns in _variants(neuron_sets[lang], full, spec.seeds):
            add(CellKey(full.name, variant, lang, lang), ns)
    for region in regions:
        for t in spec.targets:
            for variant, ns in _variants(neuron_sets[t], region, spec.seeds):
                for ev in (spec.english, t):
                    add(CellKey(region.name, variant, t, ev), ns)
    if spec.matrix:
        for t in spec.langs:
            for variant, ns in _variants(neuron_sets[t], full, spec.seeds):
                for ev in spec.langs:
                    add(CellKey(full.name, variant, t, ev), ns)
    return list(cells.values())


def kinds_switched_off(region: Region, neuron_sets: Mapping[str, NeuronSet], langs: Sequence[str]) -> tuple[str, ...]:
    """The region's kinds that hold at least one neuron of some language's set there: what the
    region really switches off (a q+k+v region over sets of V neurons only switches off v)."""
    return tuple(k for k in region.kinds
                 if any(neuron_sets[t].restrict(region.layers, (k,)).count(k) > 0 for t in langs))
