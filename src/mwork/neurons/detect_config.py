"""``DetectConfig``: every setting of a detection run, in one place; ``DetectOptions``: how a
run goes (progress, resuming, what is recorded), which never changes what it computes.

``DetectConfig``'s fields are at once the keyword arguments of ``mwork.neurons.detect.detect``,
the ``mwork detect`` options (generated with ``mwork.config.add_arguments``, help written here
once) and, through ``mwork.config.fingerprint``, both the settings a checkpoint must match and
the settings recorded in the NeuronSet's metadata.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from mwork.config import option, per_kind
from mwork.models.adapters import KINDS
from mwork.neurons.rules import DEFAULT_TOP_FRACTION, DocumentRule, document_rule

DEFAULT_MAX_LENGTH = 512
DEFAULT_BATCH_SIZE = 8
DEFAULT_BUFFER_DOCS = 64
DEFAULT_CHECKPOINT_EVERY = 100
RULE_VALUES = ("epsilon", "top_fraction", "top_k")  # at most one; mutually exclusive on the command line
QK_METHODS = ("exact", "approx")
# settings that only decide which counted neurons are kept: a checkpoint (the counts) does not
# depend on them, so a run may be finished with another value
AGGREGATION_ONLY = ("min_doc_fraction",)


@dataclass(frozen=True)
class DetectConfig:
    """The settings of one detection run (see ``mwork.neurons.detect``)."""

    language: str = option(help="language code recorded in the set (e.g. fr)", flag="--lang", metavar="LANG",
                           required=True)
    rule: str | None = option(
        None, "per-document rule (implied by the value option; default top-fraction)",
        choices=("top-fraction", "top-k", "epsilon"), record=False)
    epsilon: float | dict[str, float] | None = option(
        None, "absolute importance threshold (the paper); E or per kind: ffn=E1,q=E2,...",
        parse=per_kind(float, KINDS), metavar="E")
    top_fraction: float | dict[str, float] | None = option(
        None, f"fraction per layer and kind (the default rule, with {DEFAULT_TOP_FRACTION}: the top "
        f"{DEFAULT_TOP_FRACTION:.0%} per layer and kind); F or ffn=F1,q=F2,...",
        parse=per_kind(float, KINDS), metavar="F")
    top_k: int | dict[str, int] | None = option(
        None, "neurons per layer and kind; K or ffn=K1,q=K2,...", parse=per_kind(int, KINDS), metavar="K")
    min_doc_fraction: float = option(
        1.0, "keep neurons important in at least this fraction of the documents (1: all of them)")
    kinds: tuple[str, ...] = option(tuple(KINDS), "neuron kinds, comma-separated")
    max_length: int = option(
        DEFAULT_MAX_LENGTH, "tokens per window; longer documents are split into windows")
    truncate: bool = option(
        False, "score only each document's first MAX_LENGTH tokens instead of all its windows (faster)")
    batch_size: int = option(DEFAULT_BATCH_SIZE, "windows per batch")
    buffer_docs: int = option(
        DEFAULT_BUFFER_DOCS, "documents per block: sorted by length inside a block for batching; checkpoints fall "
        "on block ends; under torchrun block i goes to rank i % N, so use at least N blocks")
    reference_compat: bool = option(
        False, "COMPARISON ONLY: the reference code's scores (sum|up_proj|, unscaled Q/K outer product, |V output|) "
        "and its rule (top 12000 FFN / 2000 attention per layer, capped); not the paper's math")
    qk_method: str = option(
        "exact", "Q/K scores: exact Eq. 8 or its first-order approximation", choices=QK_METHODS)
    checkpoint_every: int = option(
        DEFAULT_CHECKPOINT_EVERY, "write OUT.checkpoint.safetensors every N documents", record=False)

    def __post_init__(self) -> None:
        if not isinstance(self.language, str) or not self.language:
            raise ValueError("language must be a non-empty language code (e.g. fr)")
        kinds = (self.kinds,) if isinstance(self.kinds, str) else tuple(self.kinds)
        object.__setattr__(self, "kinds", kinds)
        if not kinds or set(kinds) - set(KINDS):
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
        twice = sorted({k for k in kinds if kinds.count(k) > 1})
        if twice:
            raise ValueError(f"kinds lists {', '.join(twice)} more than once ({','.join(kinds)}); give each kind once")
        if not 0 < self.min_doc_fraction <= 1:
            raise ValueError(f"min_doc_fraction must be in (0, 1], got {self.min_doc_fraction}")
        for name in ("max_length", "batch_size", "buffer_docs", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_length < 2 and {"q", "k"} & set(kinds):
            raise ValueError(f"max_length {self.max_length} gives one-token windows, where no Q or K channel can "
                             "change the attention (each query has one key); use max_length >= 2 or kinds ffn,v")
        if self.qk_method not in QK_METHODS:
            raise ValueError(f"qk_method must be 'exact' or 'approx', got {self.qk_method!r}")
        if self.reference_compat and self.qk_method != "exact":
            raise ValueError("qk_method='approx' is for mwork's own scores; the reference-compat scores have no "
                             "approximation")
        for name in RULE_VALUES:  # a copy, so that the config cannot change under a run
            value = getattr(self, name)
            if isinstance(value, Mapping):
                object.__setattr__(self, name, dict(value))
        rule = self.document_rule()  # validates the values; at most one is given
        self._check_rule_name(rule)
        if isinstance(rule.value, Mapping) and rule.name in self.given_rule():
            unused = [k for k in rule.value if k not in kinds]
            if unused:
                raise ValueError(f"{rule.name} gives a value for {', '.join(unused)}, which is not among the kinds "
                                 f"({','.join(kinds)}); drop it or add it to kinds")
        for kind in kinds:
            rule.for_kind(kind)  # a per-kind rule must cover every kind

    def given_rule(self) -> dict[str, Any]:
        """The rule values given (at most one)."""
        return {n: getattr(self, n) for n in RULE_VALUES if getattr(self, n) is not None}

    def _check_rule_name(self, rule: DocumentRule) -> None:
        if self.rule is None:
            return
        name = self.rule.replace("-", "_")
        if name not in RULE_VALUES:
            raise ValueError(f"unknown rule {self.rule!r}; use top-fraction, top-k or epsilon")
        given = list(self.given_rule())
        if given and given != [name]:
            raise ValueError(f"--rule {self.rule} does not match the value given (--{given[0].replace('_', '-')})")
        if not given and name != "top_fraction":
            raise ValueError(f"--rule {self.rule} needs its value: --{name.replace('_', '-')} VALUE")

    def document_rule(self) -> DocumentRule:
        """The per-document rule these settings choose (default: the top 20 % per layer and kind)."""
        return document_rule(epsilon=self.epsilon, top_fraction=self.top_fraction, top_k=self.top_k,
                             reference_compat=self.reference_compat)

    @classmethod
    def make(cls, config: "DetectConfig | None" = None, **overrides: Any) -> "DetectConfig":
        """``config`` (or the defaults) with ``overrides`` (field names) replaced."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown detection setting(s) {', '.join(unknown)}; DetectConfig has "
                            f"{', '.join(sorted(names))}")
        if config is None:
            if "language" not in overrides:
                raise TypeError("detect() needs language= (or a DetectConfig)")
            return cls(**overrides)
        return dataclasses.replace(config, **overrides)


@dataclass(frozen=True, kw_only=True)
class DetectOptions:
    """How a detection runs, not what it finds: one object instead of a keyword each, for
    ``detect`` (all but ``units``) and ``detect_languages`` (``progress``, ``model_id``, ``units``). Their
    keywords are still accepted one by one (``detect(..., progress=False)``)."""

    progress: bool = True
    #: detect: continue an existing checkpoint with the same settings (one with others is refused)
    resume: bool = True
    #: detect: where to checkpoint (default: ``<out>.checkpoint.safetensors`` when there is an ``out``)
    checkpoint: str | Path | None = None
    #: detect: ``scorer(model, batch, kinds)`` instead of the importance function
    scorer: Callable[..., Any] | None = None
    #: recorded as the model (default: the model's own name)
    model_id: str | None = None
    #: detect: recorded as the corpus (default: the documents' ``describe()``)
    corpus_info: Mapping[str, Any] | None = None
    #: detect_languages: a dictionary whose features are scored instead of the neurons
    units: Any = None

    @classmethod
    def split(cls, options: "DetectOptions | None", overrides: Mapping[str, Any], *,
              allowed: tuple[str, ...] | None = None, where: str = "detect") -> tuple["DetectOptions", dict[str, Any]]:
        """``options`` with the keywords of ``overrides`` that name its fields, and the other
        keywords (the method's settings); ``allowed``: the fields ``where`` takes (another one
        set: an error, not ignored)."""
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        options = options if options is not None else cls()
        mine = {k: v for k, v in overrides.items() if k in fields}
        if mine:
            options = dataclasses.replace(options, **mine)
        stray = [k for k, default in fields.items()
                 if allowed is not None and k not in allowed and getattr(options, k) is not default]
        if stray:
            raise TypeError(f"{where}() takes no {', '.join(stray)} (only detect() does)")
        return options, {k: v for k, v in overrides.items() if k not in fields}
