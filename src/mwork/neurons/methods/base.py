"""What every detection method gives: a score per neuron and language, and sets drawn from it.

A method (PLND, LAPE, activation AP, or one registered from outside) turns the documents of
several languages into :class:`LanguageScores`: for each language and neuron kind a
``(layers, neurons)`` float64 tensor, higher meaning "more specific to this language", and a
boolean ``eligible`` tensor saying where the method's own rule admits the neuron for that
language at all. Sets of any size are drawn from it with :meth:`LanguageScores.top`: the
``n`` highest-scoring neurons over every layer and kind, eligible ones first, so that sets of
equal size can be compared between methods. Each method's own rule (its published
thresholds) gives its *native* sets (``DetectionMethod.native_sets``).

**Dictionary features.** Scores of a unit set's units (``units``: a ``mwork.units.Dictionary``)
have one kind, ``"features"``, of shape (1, units): every unit of the set in its order. Sets drawn
from them are that set's subsets (a Dictionary holding the chosen features, with the per-language
tensors of ``extra`` as its per-unit statistics), saved and read back like neuron sets
(``mwork.load_units``). A method that scores features says so (``DetectionMethod.unit_kinds``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch

from mwork.corpus_statistics import TopValues
from mwork.models.adapters import KINDS
from mwork.neurons.methods.stats import FEATURES, StatsRequest
from mwork.neurons.methods.top_tokens import STATISTIC_KEY, joined, top_request
from mwork.neurons.neuronset import NeuronSet

#: what ``mwork detect --units`` can score: neurons, or the features of a dictionary
UNIT_KINDS = ("neurons", "dictionary")


@dataclass
class LanguageScores:
    """Per language and kind, a score per neuron (higher: more specific) and where the method's
    own rule admits it (``eligible``). ``rule`` says what the score is; ``meta`` how it was made
    (settings, corpora); ``extra`` per-language tensors recorded in the drawn sets (e.g. the
    activation probabilities, the AP values); ``top_values``: per language, every unit's largest
    activations and where they happened (asked for with ``scores(..., top_tokens=N)``; not kept
    by :meth:`to_tensors`)."""

    method: str
    langs: tuple[str, ...]
    fingerprint: dict[str, Any]
    scores: dict[str, dict[str, torch.Tensor]]
    eligible: dict[str, dict[str, torch.Tensor]]
    rule: str
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    units: Any = None
    top_values: dict[str, TopValues] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.langs = tuple(self.langs)
        if self.units is not None:
            shape_of = {FEATURES: (1, self.units.count())}
        else:
            shape_of = {k: (self.fingerprint["num_layers"], self.fingerprint["neurons_per_layer"][k]) for k in KINDS}
        for lang in self.langs:
            if lang not in self.scores or lang not in self.eligible:
                raise ValueError(f"{self.method}: no scores for language {lang!r}")
            for kind, s in self.scores[lang].items():
                if kind not in shape_of:
                    raise ValueError(f"{self.method}: unknown {'unit' if self.units is not None else 'neuron'} kind "
                                     f"{kind!r}")
                if tuple(s.shape) != shape_of[kind] or tuple(self.eligible[lang][kind].shape) != shape_of[kind]:
                    raise ValueError(f"{self.method}: {lang} {kind} scores have shape {tuple(s.shape)}, the model "
                                     f"needs {shape_of[kind]}")
                if torch.isnan(s).any():
                    raise ValueError(f"{self.method}: {lang} {kind} scores contain NaN")

    @property
    def kinds(self) -> list[str]:
        """The kinds this method scores (in KINDS order)."""
        first = self.scores[self.langs[0]]
        return [k for k in (KINDS if self.units is None else (FEATURES,)) if k in first]

    def total(self) -> int:
        """Neurons this method can draw from (its kinds, every layer)."""
        return sum(self.scores[self.langs[0]][k].numel() for k in self.kinds)

    def ranking(self, lang: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Every neuron of the method's kinds, best first: (flat indices over the kinds in KINDS
        order, layer-major; whether each is eligible). Eligible neurons come before the others;
        among each, higher scores first; ties go to the lower flat index."""
        if lang not in self.scores:
            raise ValueError(f"{self.method} has no scores for {lang!r}; it has {', '.join(self.langs)}")
        s = torch.cat([self.scores[lang][k].flatten().to(torch.float64) for k in self.kinds])
        e = torch.cat([self.eligible[lang][k].flatten().bool() for k in self.kinds])
        order = torch.sort(s, descending=True, stable=True).indices
        order = order[torch.sort((~e[order]).to(torch.uint8), stable=True).indices]
        return order, e[order]

    def top(self, lang: str, n: int, meta: Mapping[str, Any] | None = None) -> NeuronSet:
        """The ``n`` best neurons of ``lang`` (see :meth:`ranking`) as a NeuronSet; its metadata
        records the method, the rule, the size and how many drawn neurons the method's own rule
        does not admit (``beyond_rule``: nonzero only when fewer than ``n`` are eligible)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"the set size must be a non-negative number of neurons, got {n!r}")
        total = self.total()
        if n > total:
            raise ValueError(f"{self.method} scores {total} neurons ({'+'.join(self.kinds)}); a set of {n} is "
                             "larger than that")
        order, eligible = self.ranking(lang)
        chosen, ok = order[:n], eligible[:n]
        if self.units is not None:
            return self.pick(lang, torch.sort(chosen).values, {
                "rule": f"the {n} highest {self.method} scores of {lang} over every feature of the dictionary, "
                        "eligible features first", "size": n, "beyond_rule": int((~ok).sum()), **dict(meta or {})})
        layers = self.fingerprint["num_layers"]
        masks = {k: torch.zeros(layers, c, dtype=torch.bool) for k, c in self.fingerprint["neurons_per_layer"].items()}
        start = 0
        for kind in self.kinds:
            size = masks[kind].numel()
            mine = chosen[(chosen >= start) & (chosen < start + size)] - start
            masks[kind].view(-1)[mine] = True
            start += size
        info = {"fingerprint": self.fingerprint, "method": self.method, "language": lang, "name": lang,
                "rule": f"the {n} highest {self.method} scores of {lang} over every layer and kind "
                        f"({'+'.join(self.kinds)}), eligible neurons first",
                "score_rule": self.rule, "size": n, "beyond_rule": int((~ok).sum()),
                "eligible": int(sum(int(self.eligible[lang][k].sum()) for k in self.kinds)),
                "method_settings": self.meta.get("settings", {}), **dict(meta or {})}
        extra = {name: t.clone() for name, t in self.extra.get(lang, {}).items()}
        return NeuronSet(masks, info, extra)

    def pick(self, lang: str, ids: torch.Tensor, meta: Mapping[str, Any] | None = None) -> Any:
        """The units ``ids`` (positions in ``units``) as ``lang``'s set: a subset of the scored
        unit set, the per-language ``extra`` tensors as its per-unit statistics, the method and
        its rule in its metadata (``meta`` added)."""
        if self.units is None:
            raise ValueError(f"{self.method}: these scores are of neurons; draw sets with top()")
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        out = self.units.subset(ids)
        out.stats = {name: t.reshape(-1)[ids].to(torch.float64).clone() for name, t in self.extra.get(lang, {}).items()}
        out.meta.update({"fingerprint": self.fingerprint, "method": self.method, "language": lang, "name": lang,
                         "score_rule": self.rule, "size": int(ids.numel()), "beyond_rule": 0,
                         "eligible": int(self.eligible[lang][FEATURES].sum()),
                         "method_settings": self.meta.get("settings", {}), **dict(meta or {})})
        return out

    # ---- as tensors (for caches) -------------------------------------------------------------
    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and JSON header that :meth:`from_tensors` reads back exactly."""
        tensors: dict[str, torch.Tensor] = {}
        for lang in self.langs:
            for kind in self.kinds:
                tensors[f"score/{lang}/{kind}"] = self.scores[lang][kind].contiguous()
                tensors[f"eligible/{lang}/{kind}"] = self.eligible[lang][kind].to(torch.uint8).contiguous()
            for name, t in self.extra.get(lang, {}).items():
                tensors[f"extra/{lang}/{name}"] = t.contiguous()
        header = {"method": self.method, "langs": list(self.langs), "fingerprint": self.fingerprint,
                  "rule": self.rule, "meta": self.meta}
        if self.units is not None:
            header["units"] = {"kind": self.units.kind, "count": self.units.count()}
        return tensors, header

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], header: Mapping[str, Any],
                     units: Any = None) -> "LanguageScores":
        """Scores saved by :meth:`to_tensors`; scores of features need the unit set they score (``units``)."""
        saved = header.get("units")
        if saved is not None and (units is None or units.count() != saved["count"]):
            raise ValueError(f"these scores are of {saved['count']} {saved['kind']} units: give that unit set (units=)")
        if saved is None and units is not None:
            raise ValueError("these scores are of neurons; they take no unit set")
        scores: dict[str, dict[str, torch.Tensor]] = {}
        eligible: dict[str, dict[str, torch.Tensor]] = {}
        extra: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in tensors.items():
            what, lang, name = key.split("/", 2)
            target = {"score": scores, "eligible": eligible, "extra": extra}[what]
            target.setdefault(lang, {})[name] = t.bool() if what == "eligible" else t
        return cls(header["method"], tuple(header["langs"]), dict(header["fingerprint"]), scores, eligible,
                   header["rule"], dict(header["meta"]), extra, units)


class DetectionMethod:
    """A way of finding language-specific neurons; register subclasses with
    ``mwork.register_detection_method``.

    ``config_class``: a dataclass of the method's settings (``mwork.config.option`` fields: they
    become ``mwork detect`` options). ``scores`` turns each language's documents into
    :class:`LanguageScores`; ``native_sets`` applies the method's own rule to them.
    Statistics methods (``statistics = True``) instead say what one streaming pass over the
    corpora must collect (``request``) and compute their scores from it (``from_stats``), so
    that several of them share one pass (see ``mwork.neurons.methods.stats``)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    statistics: ClassVar[bool] = False
    unit_kinds: ClassVar[tuple[str, ...]] = ("neurons",)
    """What it scores (:data:`UNIT_KINDS`): ``"dictionary"`` -- the features of a dictionary
    given as ``units`` to :meth:`scores`, :meth:`request` and :meth:`from_stats`."""
    units_refusal: ClassVar[str] = ""
    """Why it does not score some unit kind (said when it is asked to)."""
    one_language: ClassVar[bool] = False
    """How ``mwork detect`` runs it. False: every language at once (``--corpus LANG=SPEC`` each,
    ``--out-dir``: ``detect_languages``). True (PLND): one language's corpus per run (``--lang``,
    ``--corpus``, ``--out``; resumable, data-parallel: ``mwork.neurons.detect.detect``), the
    language-specific sets then coming from several runs (``mwork specific``); that pipeline runs
    PLND's pass, so a method setting it takes PLND's ``DetectConfig``."""

    def make_config(self, config: Any = None, **overrides: Any) -> Any:
        """``config`` (or the defaults) with ``overrides`` replaced."""
        import dataclasses

        if config is None:
            return self.config_class(**overrides)
        if not isinstance(config, self.config_class):
            raise TypeError(f"method {self.name!r} takes a {self.config_class.__name__}, got {type(config).__name__}")
        return dataclasses.replace(config, **overrides) if overrides else config

    def check_units(self, units: Any = None, config: Any = None) -> None:
        """A clear error when this method does not score ``units`` (None: neurons), or when its
        settings ``config`` cannot draw sets from that many units -- before any pass."""
        kind = "neurons" if units is None else getattr(units, "kind", type(units).__name__)
        if kind not in self.unit_kinds:
            what = "neurons" if units is None else f"{kind} units"
            raise ValueError(f"--method {self.name} does not score {what} (it scores {', '.join(self.unit_kinds)})"
                             + (f": {self.units_refusal}" if self.units_refusal else ""))

    def scores(self, model: torch.nn.Module, tokenizer: Any, corpora: Mapping[str, Sequence[str]], config: Any, *,
               progress: bool = True, units: Any = None, top_tokens: int = 0) -> LanguageScores:
        """Scores of every neuron (or of every unit of ``units``, a dictionary's features) for
        every language of ``corpora`` (``{lang: documents}``); ``top_tokens``: also each feature's
        that many largest activations per language, in the same pass (``LanguageScores.top_values``;
        dictionary features of a statistics method only)."""
        self.check_units(units, config)
        if top_tokens and (units is None or not self.statistics):
            raise ValueError("top tokens are measured for a dictionary's features in the pass of a statistics method "
                             "(--method lape, ap, monolinguality with --units sae:DIR)")
        if self.statistics:
            from mwork.neurons.methods.stats import PassOptions, collect_statistics

            on = {} if units is None else {"units": units}
            request = self.request(config, **on)
            if top_tokens:
                request = request.merge(StatsRequest(statistics=(top_request(units, top_tokens),)))
            stats = collect_statistics(model, tokenizer, corpora, request,
                                       PassOptions("windows", config.max_length, config.truncate, config.batch_size),
                                       progress=progress, **on)
            scores = self.from_stats(stats, config, **on)
            if top_tokens:
                scores.top_values = {lang: joined(stats.extra[STATISTIC_KEY][lang], units) for lang in scores.langs}
            return scores
        raise NotImplementedError(f"method {self.name!r} does not implement scores()")

    def request(self, config: Any, units: Any = None) -> Any:
        raise NotImplementedError

    def from_stats(self, stats: Any, config: Any, units: Any = None) -> LanguageScores:
        raise NotImplementedError

    def native_sets(self, scores: LanguageScores, config: Any) -> dict[str, NeuronSet]:
        """Each language's set by the method's own rule."""
        raise NotImplementedError

    def kinds(self, config: Any) -> tuple[str, ...]:
        """The neuron kinds this method scores with these settings."""
        return tuple(getattr(config, "kinds", ("ffn",)))


def check_languages(langs: Sequence[str], method: str, at_least: int = 2) -> tuple[str, ...]:
    """Languages given once each, at least ``at_least`` of them."""
    langs = tuple(langs)
    repeated = sorted({lang for lang in langs if langs.count(lang) > 1})
    if repeated:
        raise ValueError(f"the corpora name {', '.join(repeated)} more than once: give each language once")
    if len(langs) < at_least:
        raise ValueError(f"{method} compares languages: give the corpora of at least {at_least} languages "
                         f"(got {', '.join(langs) or 'none'})")
    return langs
