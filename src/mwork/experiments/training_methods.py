"""Training methods: what is trained, how it is switched on, and what a run keeps.

Every method runs through the same loop (:func:`mwork.experiments.training.train`) and the same
comparison (:func:`mwork.experiments.compare.compare`); a method only says

* ``parameters()``: its trainable tensors (the optimiser sees only these);
* ``hooks()`` / ``active()``: how they take part in the forward pass (forward hooks for neuron
  deltas, peft's layers for LoRA, nothing for full fine-tuning) -- inside ``active()`` only
  ``parameters()`` require gradients and the model is in train mode;
* ``state()`` / ``load_state()``: its tensors for a checkpoint (``resumable`` methods);
* ``save(out, meta)`` / ``result(meta, out)``: what a finished run writes and returns;
* ``for_comparison(model, context)``: how the comparison builds it on a fresh model;
* ``evaluating()``: the trained model to evaluate, and ``row_facts()``: extra table columns.

The built-in methods are ``neurons`` (the paper's: only the selected neurons' slices),
``random`` (as many random neurons), ``lora`` and ``full``. A new method is one entry: subclass
:class:`Method`, set ``name``, override what differs, and register it with
:func:`register_training_method` (or an entry point in the group ``mwork.training_methods``); ``compare(...,
methods=[..., "yours"])`` and ``mwork enhance compare --methods ...,yours`` then run it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from mwork.neurons.delta import DELTA_FILE, META_FILE, NeuronDelta
from mwork.files import write_json
from mwork.experiments.training import EnhanceSettings, TrainResult
from mwork.fingerprints import neurons_digest
from mwork.models.adapters import get_adapter
from mwork.neurons.neuronset import NeuronSet
from mwork.registry import Registry

ENTRY_POINT_GROUP = "mwork.training_methods"
TRAIN_FILE = "train.json"


@dataclass(frozen=True)
class ComparisonContext:
    """What the comparison gives every method: the NeuronSet under study, the LoRA setting that
    matches its trainable-parameter count (:func:`lora_for_budget`), the LoRA alpha, the seed of
    the random-neuron baseline and the training settings."""

    neurons: NeuronSet
    lora: dict[str, Any]
    lora_alpha: float | None
    random_seed: int
    settings: EnhanceSettings


class Method:
    """A training method (base class: every weight of the model trains, nothing is saved but
    ``train.json``). Subclasses set ``name`` and override what differs; see the module docstring."""

    name: ClassVar[str] = ""
    resumable: ClassVar[bool] = False  # writes checkpoints and can resume
    result_file: ClassVar[str] = TRAIN_FILE  # its presence in ``out`` marks a finished run
    outputs: ClassVar[tuple[str, ...]] = (TRAIN_FILE,)  # files / folders a run writes into ``out``

    def __init__(self, model: nn.Module):
        self.model = model
        self.forward_model: nn.Module = model

    @classmethod
    def for_comparison(cls, model: nn.Module, context: ComparisonContext) -> "Method":
        """This method on a freshly loaded ``model``, as the comparison runs it."""
        return cls(model)

    # ---- what trains ------------------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def identity(self) -> dict[str, Any]:
        """JSON facts beyond the settings and data that decide the result (resume must match)."""
        return {}

    def facts(self) -> dict[str, Any]:
        """JSON facts recorded in the run's metadata."""
        return {}

    def state(self) -> dict[str, torch.Tensor]:
        mine = {id(p) for p in self.parameters()}
        return {n: p.detach().cpu().clone() for n, p in self.forward_model.named_parameters() if id(p) in mine}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.forward_model.named_parameters())
        with torch.no_grad():
            for n, v in state.items():
                params[n].copy_(v)

    def hooks(self) -> contextlib.AbstractContextManager:
        """What makes the trainable tensors take part in the forward pass (default: nothing)."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Only ``parameters()`` require gradients inside; flags and train mode restored after."""
        flags = {p: p.requires_grad for p in self.model.parameters()}
        mode = self.forward_model.training
        mine = {id(p) for p in self.parameters()}
        try:
            for p in self.model.parameters():
                p.requires_grad_(id(p) in mine)
            self.forward_model.train()
            with self.hooks():
                yield
        finally:
            for p, f in flags.items():
                p.requires_grad_(f)
            self.forward_model.train(mode)

    # ---- what a run keeps -------------------------------------------------------------------
    def save(self, out: Path, meta: dict[str, Any]) -> None:
        write_json(out / TRAIN_FILE, meta, indent=2, default=str)

    def result(self, meta: dict[str, Any], out: Path | None) -> TrainResult:
        return TrainResult(meta, model=self.forward_model, out=out)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[nn.Module]:
        """The trained model, ready to evaluate (the comparison measures perplexity and tasks on it)."""
        with self.hooks():
            yield self.model

    def row_facts(self) -> dict[str, Any]:
        """Extra columns of the comparison's row (``lora_rank`` is always a column)."""
        return {}


# ---- the registry ---------------------------------------------------------------------------

def _register_plugin(obj: Any) -> None:
    """An entry point's object: a Method subclass is registered under its name (unless the name
    is taken); a module registers its methods when it is imported."""
    if isinstance(obj, type) and issubclass(obj, Method) and REGISTRY.peek(obj.name) is None:
        register_training_method(obj)


REGISTRY: Registry[type[Method]] = Registry(
    "training method", ENTRY_POINT_GROUP, on_entry_point=_register_plugin,
    unknown="unknown method {name!r}; choose from {known} "
            "(or register one with mwork.experiments.training_methods.register_training_method)")
"""Method classes by name: the built-ins first, in registration order."""


def register_training_method(cls: type[Method] | None = None, *, replace: bool = False):
    """Register a :class:`Method` subclass under its ``name`` (usable as a decorator);
    ``replace=True`` overrides a method registered under the same name."""

    def add(klass: type[Method]) -> type[Method]:
        if not (isinstance(klass, type) and issubclass(klass, Method)):
            raise TypeError(f"register_training_method takes a Method subclass, got {klass!r}")
        name = klass.name
        if not name or not isinstance(name, str) or "," in name or name != name.strip():
            raise ValueError(f"{klass.__name__}.name must be a non-empty name without commas or spaces, got {name!r}")
        return REGISTRY.register(name, klass, replace=replace)

    return add if cls is None else add(cls)


def method_names() -> tuple[str, ...]:
    """Registered methods, built-ins first, in registration order."""
    return tuple(REGISTRY.names())


def get_method(name: str) -> type[Method]:
    return REGISTRY.get(name)


# ---- the built-in methods -------------------------------------------------------------------


def neuron_summary(ns: NeuronSet, path: str | Path | None) -> dict[str, Any]:
    """What a NeuronSet is, for metadata: counts, its content digest, its scalar metadata."""
    keep = {k: v for k, v in ns.meta.items() if k != "fingerprint" and isinstance(v, (str, int, float, bool))}
    return {"path": str(path) if path is not None else None, "count": ns.count(),
            "per_kind": {k: ns.count(k) for k in ns.kinds}, "fraction": ns.fraction(), "sha256": neurons_digest(ns),
            "meta": keep}


@register_training_method
class NeuronsMethod(Method):
    """The paper's method: only the parameters that belong to the neurons of a NeuronSet, as small
    delta tensors added through forward hooks (:mod:`mwork.neurons.delta`); the base weights
    are never touched. Saves ``delta.safetensors`` + ``delta.json``; resumable."""

    name = "neurons"
    resumable = True
    result_file = DELTA_FILE
    outputs = (DELTA_FILE, META_FILE)

    def __init__(self, model: nn.Module, neurons: NeuronSet, *, source: str | Path | None = None,
                 extra: dict[str, Any] | None = None):
        super().__init__(model)
        self.neurons = neurons
        self.delta = NeuronDelta.zeros(model, neurons)
        self.summary = neuron_summary(neurons, source)
        self.extra = dict(extra or {})

    @classmethod
    def for_comparison(cls, model: nn.Module, context: ComparisonContext) -> "Method":
        return cls(model, context.neurons)

    def parameters(self) -> list[nn.Parameter]:
        return self.delta.parameters()

    def identity(self) -> dict[str, Any]:
        return {"neurons_sha256": self.summary["sha256"]}

    def facts(self) -> dict[str, Any]:
        return {"neurons": self.summary, "neurons_sha256": self.summary["sha256"], "delta": self.delta.summary(),
                **self.extra}

    def state(self) -> dict[str, torch.Tensor]:
        return self.delta.state_dict()

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.delta.load_state_dict(state)

    def hooks(self) -> contextlib.AbstractContextManager:
        return self.delta.attach(self.model)

    def save(self, out: Path, meta: dict[str, Any]) -> None:
        self.delta.meta = meta
        self.delta.save(out)

    def result(self, meta: dict[str, Any], out: Path | None) -> TrainResult:
        self.delta.meta = meta
        return TrainResult(meta, delta=self.delta, out=out)


@register_training_method
class RandomNeuronsMethod(NeuronsMethod):
    """Baseline: as many random neurons, per layer and kind, drawn outside the set
    (``NeuronSet.random_like(random_seed, exclude=neurons)``), trained like the neurons."""

    name = "random"

    @classmethod
    def for_comparison(cls, model: nn.Module, context: ComparisonContext) -> "Method":
        return cls(model, context.neurons.random_like(context.random_seed, exclude=context.neurons))


@register_training_method
class LoraMethod(Method):
    """Baseline: LoRA (peft) on ``target_modules`` with rank ``rank`` (alpha default 2 x rank),
    its A matrices seeded from ``seed``. Wraps ``model`` in place (peft injects its layers).
    Saves the adapter (``lora/``, ``save_pretrained``) and ``train.json``."""

    name = "lora"
    outputs = (TRAIN_FILE, "lora")

    def __init__(self, model: nn.Module, rank: int, alpha: float | None, target_modules: list[str], seed: int):
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as err:
            raise ImportError("the LoRA baseline needs peft: pip install peft") from err
        super().__init__(model)
        alpha = 2 * rank if alpha is None else alpha
        self.rank, self.alpha, self.target_modules = rank, alpha, list(target_modules)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=target_modules, bias="none",
                            fan_in_fan_out=get_adapter(model).weights_transposed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # LoRA's A matrices are random: seeded
            self.forward_model = get_peft_model(model, config)
        self.config = config

    @classmethod
    def for_comparison(cls, model: nn.Module, context: ComparisonContext) -> "Method":
        return cls(model, context.lora["rank"], context.lora_alpha, context.lora["target_modules"],
                   context.settings.seed)

    def parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.forward_model.named_parameters() if "lora_" in n]

    def identity(self) -> dict[str, Any]:
        return {"lora": self.facts()["lora"]}

    def facts(self) -> dict[str, Any]:
        return {"lora": {"rank": self.rank, "alpha": self.alpha, "target_modules": self.target_modules, "dropout": 0.0}}

    def save(self, out: Path, meta: dict[str, Any]) -> None:
        self.forward_model.save_pretrained(out / "lora")
        super().save(out, meta)

    def row_facts(self) -> dict[str, Any]:
        return {"lora_rank": self.rank}


@register_training_method
class FullMethod(Method):
    """Baseline: full fine-tuning, every weight of ``model`` (pass a fresh copy). Saves ``train.json``."""

    name = "full"


BUILTIN_METHODS: tuple[str, ...] = tuple(m.name for m in (NeuronsMethod, RandomNeuronsMethod, LoraMethod, FullMethod))


def lora_for_budget(model: nn.Module, neurons: NeuronSet | str | Path, budget: int | None = None) -> dict[str, Any]:
    """A LoRA setting comparable to tuning ``neurons``: LoRA on the same modules the neuron
    slices live in, with the rank whose trainable-parameter count is closest to ``budget``
    (default: the neuron method's count). Returns ``rank``, ``target_modules``, ``parameters``."""
    from mwork.neurons.neuronset import as_neuron_set

    ns = as_neuron_set(neurons, model)
    delta = NeuronDelta.zeros(model, ns)
    experts = sorted({s.module for s in delta.slices if s.site})
    if experts:
        raise ValueError(f"the LoRA baseline targets nn.Linear modules, and the set's FFN neurons are expert channels "
                         f"of mixture-of-experts blocks ({experts[0]} ...), rows of 3-D expert parameters: compare "
                         "without it (methods neurons,random,full)")
    budget = delta.num_parameters() if budget is None else budget
    modules = list(dict.fromkeys(s.module for s in delta.slices))  # layer order
    per_rank = 0
    for name in modules:
        w = model.get_submodule(name).weight
        per_rank += w.shape[0] + w.shape[1]
    rank = max(1, round(budget / per_rank))
    return {"rank": rank, "target_modules": modules, "parameters": rank * per_rank, "budget": budget,
            "parameters_per_rank": per_rank}
