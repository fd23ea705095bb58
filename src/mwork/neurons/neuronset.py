"""NeuronSet: a set of neurons per layer and kind, with the facts needed to trust and reuse it.

Stored as one safetensors file (a boolean mask per kind, plus optional per-neuron tensors such
as document counts) with its metadata both inside the file header and in a JSON file beside
it (``x.safetensors`` + ``x.json``), so a researcher can read either.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch

from mwork.models.adapters import KINDS, get_adapter, model_name

FORMAT_VERSION = 1
_ALLOW_OTHER_MODEL: contextvars.ContextVar[bool] = contextvars.ContextVar("mwork_allow_other_model", default=False)
STATISTIC_PREFIX = "stat."  # extra tensors stat.<name>.<kind>: activation statistics (steering)


@contextlib.contextmanager
def other_models_allowed(allow: bool = True) -> Iterator[None]:
    """Inside, NeuronSets may be applied to a model other than (but shaped like) the one they
    were made for (``mwork --allow-other-model COMMAND``); see ``NeuronSet.check_compatible``."""
    token = _ALLOW_OTHER_MODEL.set(allow)
    try:
        yield
    finally:
        _ALLOW_OTHER_MODEL.reset(token)


def set_path(path: str | Path) -> Path:
    """Accept ``x``, ``x.safetensors`` or ``x.json``; return the ``.safetensors`` path."""
    p = Path(path)
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    elif p.suffix != ".safetensors":
        p = p.with_name(p.name + ".safetensors")
    return p


class NeuronSet:
    """Neurons per kind (``ffn``, ``q``, ``k``, ``v``) as boolean masks of shape (layers, neurons).

    ``meta`` holds ``fingerprint`` (the model's shape, see ``Adapter.fingerprint``) and whatever
    explains how the set was made (model id, language, rule, corpus, document count ...).
    ``extra`` holds optional per-neuron tensors (e.g. ``doc_count.ffn``: in how many documents
    each neuron was important).
    """

    def __init__(
        self,
        masks: Mapping[str, torch.Tensor],
        meta: Mapping[str, Any] | None = None,
        extra: Mapping[str, torch.Tensor] | None = None,
    ):
        unknown = set(masks) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown neuron kinds {sorted(unknown)}; kinds are {KINDS}")
        self.masks: dict[str, torch.Tensor] = {k: masks[k].to(torch.bool).cpu() for k in KINDS if k in masks}
        layer_counts = {m.shape[0] for m in self.masks.values()}
        if len(layer_counts) > 1:
            raise ValueError(f"masks disagree on the number of layers: {sorted(layer_counts)}")
        self.meta: dict[str, Any] = dict(meta or {})
        self.extra: dict[str, torch.Tensor] = dict(extra or {})

    # ---- construction -----------------------------------------------------------------
    @classmethod
    def empty_for(cls, model: torch.nn.Module, meta: Mapping[str, Any] | None = None) -> "NeuronSet":
        """An empty set shaped for ``model`` (every kind, every layer)."""
        adapter = get_adapter(model)
        masks = {k: torch.zeros(adapter.num_layers, n, dtype=torch.bool) for k, n in adapter.neuron_counts().items()}
        return cls(masks, {"fingerprint": adapter.fingerprint(), **dict(meta or {})})

    @classmethod
    def from_indices(
        cls,
        model: torch.nn.Module,
        indices: Mapping[str, Mapping[int, Iterable[int]]],
        meta: Mapping[str, Any] | None = None,
    ) -> "NeuronSet":
        """Build from ``{kind: {layer: [neuron, ...]}}`` for ``model``."""
        ns = cls.empty_for(model, meta)
        for kind, per_layer in indices.items():
            if kind not in ns.masks:
                raise ValueError(f"unknown neuron kind {kind!r}; kinds are {KINDS}")
            for layer, idx in per_layer.items():
                ns.masks[kind][layer, torch.as_tensor(list(idx), dtype=torch.long)] = True
        return ns

    # ---- queries ----------------------------------------------------------------------
    @property
    def kinds(self) -> list[str]:
        return list(self.masks)

    @property
    def num_layers(self) -> int:
        return next(iter(self.masks.values())).shape[0] if self.masks else 0

    @property
    def fingerprint(self) -> dict[str, Any] | None:
        return self.meta.get("fingerprint")

    def indices(self, kind: str, layer: int) -> torch.Tensor:
        """Sorted neuron indices of ``kind`` in ``layer`` (LongTensor)."""
        if kind not in self.masks:
            return torch.zeros(0, dtype=torch.long)
        return self.masks[kind][layer].nonzero().flatten()

    def count(self, kind: str | None = None, layer: int | None = None) -> int:
        """Number of neurons, optionally of one kind and/or one layer."""
        kinds = [kind] if kind is not None else self.kinds
        total = 0
        for k in kinds:
            if k not in self.masks:
                continue
            m = self.masks[k]
            total += int(m[layer].sum() if layer is not None else m.sum())
        return total

    def counts(self) -> dict[str, list[int]]:
        """Per kind, the count in each layer."""
        return {k: m.sum(dim=1).tolist() for k, m in self.masks.items()}

    def expert_counts(self) -> torch.Tensor | None:
        """FFN neurons per (layer, expert) of a set made for a mixture-of-experts model (its
        fingerprint records the experts: FFN channel e * expert_size + k is channel k of expert
        e, a shared expert's channels last, counted in the last column); None for other sets."""
        experts = (self.fingerprint or {}).get("experts")
        if not experts or "ffn" not in self.masks:
            return None
        E, I, S = experts["num_experts"], experts["expert_size"], experts["shared_expert_size"]
        m = self.masks["ffn"]
        counts = m[:, :E * I].reshape(m.shape[0], E, I).sum(-1)
        if S:
            counts = torch.cat([counts, m[:, E * I:].sum(-1, keepdim=True)], dim=1)
        return counts

    def total_neurons(self) -> int:
        """All neurons of these kinds in the model the set was made for."""
        fp = self.fingerprint
        if fp:
            per_layer = fp["neurons_per_layer"]
            return fp["num_layers"] * sum(per_layer[k] for k in KINDS)
        return sum(m.numel() for m in self.masks.values())

    def fraction(self) -> float:
        """Share of all the model's neurons (FFN + Q + K + V, every layer) in this set."""
        return self.count() / max(self.total_neurons(), 1)

    def __len__(self) -> int:
        return self.count()

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={int(m.sum())}" for k, m in self.masks.items())
        lang = self.meta.get("language")
        return f"NeuronSet({'lang=' + lang + ', ' if lang else ''}{parts}, fraction={self.fraction():.4%})"

    # ---- algebra ----------------------------------------------------------------------
    def _check_same_shape(self, other: "NeuronSet") -> None:
        if self.fingerprint and other.fingerprint and self.fingerprint != other.fingerprint:
            raise ValueError("NeuronSets were made for models of different shapes; they cannot be combined")
        for k in set(self.masks) & set(other.masks):
            if self.masks[k].shape != other.masks[k].shape:
                raise ValueError(f"NeuronSets differ in shape for kind {k!r}")

    def _combine(self, other: "NeuronSet", op: str) -> "NeuronSet":
        self._check_same_shape(other)
        masks = {}
        for k in dict.fromkeys([*self.masks, *other.masks]):
            a, b = self.masks.get(k), other.masks.get(k)
            if a is None:
                a = torch.zeros_like(b)
            if b is None:
                b = torch.zeros_like(a)
            masks[k] = {"and": a & b, "or": a | b, "sub": a & ~b}[op]
        meta = {"fingerprint": self.fingerprint or other.fingerprint}
        return NeuronSet(masks, meta)

    def __and__(self, other: "NeuronSet") -> "NeuronSet":
        return self._combine(other, "and")

    def __or__(self, other: "NeuronSet") -> "NeuronSet":
        return self._combine(other, "or")

    def __sub__(self, other: "NeuronSet") -> "NeuronSet":
        return self._combine(other, "sub")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronSet) or set(self.masks) != set(other.masks):
            return False
        return all(torch.equal(self.masks[k], other.masks[k]) for k in self.masks)

    def jaccard(self, other: "NeuronSet") -> float:
        """|A ∩ B| / |A ∪ B| (1.0 for two empty sets)."""
        union = (self | other).count()
        return (self & other).count() / union if union else 1.0

    def restrict(self, layers: Iterable[int] | None = None, kinds: Iterable[str] | None = None) -> "NeuronSet":
        """The subset in the given layers and kinds (others emptied, shapes kept, so the activation
        statistics stay valid and are kept)."""
        if layers is not None:
            layers = sorted(set(int(i) for i in layers))
            bad = [i for i in layers if not 0 <= i < self.num_layers]
            if bad:
                raise ValueError(f"layers {bad} out of range: the set (and its model) has layers 0..{self.num_layers - 1}")
        keep_layers = None if layers is None else torch.as_tensor(layers, dtype=torch.long)
        keep_kinds = set(self.kinds if kinds is None else kinds)
        masks = {}
        for k, m in self.masks.items():
            new = torch.zeros_like(m)
            if k in keep_kinds:
                if keep_layers is None:
                    new = m.clone()
                else:
                    new[keep_layers] = m[keep_layers]
            masks[k] = new
        meta = dict(self.meta, restricted={"layers": None if layers is None else keep_layers.tolist(),
                                            "kinds": sorted(keep_kinds)})
        stats = {k: v for k, v in self.extra.items() if k.startswith(STATISTIC_PREFIX)}
        return NeuronSet(masks, meta, stats)

    def random_like(self, seed: int, exclude: "NeuronSet | None" = None) -> "NeuronSet":
        """Random neurons with exactly the same count per layer and kind (a baseline).

        ``exclude``: neurons never drawn (e.g. the set itself), where enough others remain."""
        gen = torch.Generator().manual_seed(seed)
        masks = {}
        for k, m in self.masks.items():
            new = torch.zeros_like(m)
            for layer in range(m.shape[0]):
                n = int(m[layer].sum())
                if n == 0:
                    continue
                pool = torch.arange(m.shape[1])
                if exclude is not None and k in exclude.masks:
                    allowed = pool[~exclude.masks[k][layer]]
                    pool = allowed if len(allowed) >= n else pool
                pick = pool[torch.randperm(len(pool), generator=gen)[:n]]
                new[layer, pick] = True
            masks[k] = new
        meta = {"fingerprint": self.fingerprint, "random_like": self.meta.get("name") or self.meta.get("language"),
                "seed": seed, "rule": "random, same count per layer and kind"}
        return NeuronSet(masks, meta)

    # ---- activation statistics (steering) -------------------------------------------------
    def statistic(self, name: str, kind: str) -> torch.Tensor | None:
        """The stored statistic ``name`` (``mean``, ``median``, ``q0.9`` ...) of the activations of
        ``kind``'s neurons, (layers, neurons), NaN where not measured; None when not stored. Written
        by ``mwork.neurons.statistics.add_statistics``; ``meta["statistics"]`` says how."""
        return self.extra.get(f"{STATISTIC_PREFIX}{name}.{kind}")

    def statistic_names(self) -> list[str]:
        """The statistics stored with this set (each for some kinds)."""
        names = {k[len(STATISTIC_PREFIX):].rsplit(".", 1)[0] for k in self.extra if k.startswith(STATISTIC_PREFIX)}
        return sorted(names)

    def with_statistics(self, values: Mapping[str, Mapping[str, torch.Tensor]], info: Mapping[str, Any]) -> "NeuronSet":
        """A copy carrying ``values[stat][kind]`` ((layers, neurons) tensors) as its statistics and
        ``info`` as ``meta["statistics"]``; statistics stored before are dropped (they may come
        from another corpus)."""
        extra = {k: v for k, v in self.extra.items() if not k.startswith(STATISTIC_PREFIX)}
        for stat, per_kind in values.items():
            for kind, tensor in per_kind.items():
                if kind not in self.masks or tuple(tensor.shape) != tuple(self.masks[kind].shape):
                    raise ValueError(f"statistic {stat} of {kind}: shape {tuple(tensor.shape)} does not fit this set")
                extra[f"{STATISTIC_PREFIX}{stat}.{kind}"] = tensor.detach().to(torch.float32).cpu().contiguous()
        return NeuronSet(self.masks, dict(self.meta, statistics=dict(info)), extra)

    # ---- model compatibility ------------------------------------------------------------
    def check_compatible(self, model: torch.nn.Module, allow_other_model: bool | None = None) -> None:
        """Raise a clear error if ``model`` is not the kind of model this set was made for: its
        shape, then its family (model type) and its name where both are recorded. A set made
        on another model of the same shape (a fine-tune, a sibling family) is refused unless
        ``allow_other_model`` (default: :func:`other_models_allowed`, which ``mwork
        --allow-other-model COMMAND`` sets)."""
        fp = get_adapter(model).fingerprint()
        self._check_shape(fp)
        allow = _ALLOW_OTHER_MODEL.get() if allow_other_model is None else allow_other_model
        if allow:
            return
        made_for = self.meta.get("model_id") or "another model"
        mine = self.fingerprint or {}
        if mine.get("model_type") and mine["model_type"] != fp["model_type"]:
            raise ValueError(f"this NeuronSet was made for a {mine['model_type']} model ({made_for}), and this model is "
                             f"a {fp['model_type']}: its neurons are not this model's, even at the same shape. Pass "
                             "allow_other_model=True (mwork --allow-other-model COMMAND ...) if you mean it")
        here, made = _identity(model_name(model)), _identity(self.meta.get("model_id"))
        if made not in (None, "", "unknown") and here and here != made:
            raise ValueError(f"this NeuronSet was made for {self.meta['model_id']}, and this model is {here}. Pass "
                             "allow_other_model=True (mwork --allow-other-model COMMAND ...) to apply it anyway "
                             "(e.g. to a fine-tune of that model)")

    def _check_shape(self, fp: dict[str, Any]) -> None:
        mine = self.fingerprint
        if mine is None:
            for k, m in self.masks.items():
                expected = (fp["num_layers"], fp["neurons_per_layer"][k])
                if tuple(m.shape) != expected:
                    raise ValueError(f"NeuronSet kind {k!r} has shape {tuple(m.shape)}, model needs {expected}")
            return
        keys = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "neurons_per_layer")
        diff = {key: (mine.get(key), fp.get(key)) for key in keys if mine.get(key) != fp.get(key)}
        if diff:
            details = "; ".join(f"{key}: set {a} vs model {b}" for key, (a, b) in diff.items())
            made_for = self.meta.get("model_id", "another model")
            raise ValueError(f"this NeuronSet was made for {made_for} and does not fit this model ({details})")

    # ---- files --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.safetensors) and its ``.json`` metadata, each atomically (a killed
        run leaves the old file or the new one); returns the safetensors path."""
        from mwork.files import save_safetensors, write_text

        st = set_path(path)
        if st.is_dir():
            raise ValueError(f"cannot write the NeuronSet to {st}: it is a folder; choose another path")
        meta = dict(self.meta, format_version=FORMAT_VERSION, counts=self.counts(), count=self.count(),
                    fraction=self.fraction())
        tensors = {f"mask.{k}": m.to(torch.uint8).contiguous() for k, m in self.masks.items()}
        tensors.update({f"extra.{k}": v.contiguous() for k, v in self.extra.items()})
        text = json.dumps(meta, indent=2, sort_keys=True, default=str)
        save_safetensors(st, tensors, metadata={"mwork": json.dumps(meta, sort_keys=True, default=str)})
        write_text(st.with_suffix(".json"), text + "\n")
        return st

    @classmethod
    def load(cls, path: str | Path, model: torch.nn.Module | None = None) -> "NeuronSet":
        """Read a NeuronSet; with ``model``, also check that it fits that model."""
        from mwork.files import read_set_file

        tensors, meta = read_set_file(set_path(path), "NeuronSet", "detect the set again (mwork detect) or restore the file")
        masks = {k[len("mask."):]: v.bool() for k, v in tensors.items() if k.startswith("mask.")}
        extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
        for key in ("counts", "count", "fraction", "format_version"):
            meta.pop(key, None)
        ns = cls(masks, meta, extra)
        if model is not None:
            ns.check_compatible(model)
        return ns


def _identity(name: str | None) -> str | None:
    """A model's name for comparison: an existing folder by its resolved path."""
    if name and Path(name).is_dir():
        return str(Path(name).resolve())
    return name


def as_neuron_set(neurons: "NeuronSet | str | Path", model: torch.nn.Module | None = None) -> NeuronSet:
    """Accept a NeuronSet or a path to one (checked against ``model`` when given)."""
    if isinstance(neurons, NeuronSet):
        if model is not None:
            neurons.check_compatible(model)
        return neurons
    return NeuronSet.load(neurons, model)


def require_neurons(ns: NeuronSet, action: str, source: str | None = None, restricted: bool = False) -> NeuronSet:
    """The one rule of every command that acts on a set (``mwork steer``, ``eval``, ``ppl``): a set
    with no neuron (after ``--layers`` / ``--kinds`` when ``restricted``) is refused, since the run
    would measure the untouched model while its results are labelled as an intervention.
    ``action``: what would be done to the neurons ("steer", "switch off"); ``source``: the set's
    file, for the message."""
    if ns.count() == 0:
        named = f"the NeuronSet {source}" if source else "the NeuronSet"
        where = " in the chosen layers and kinds" if restricted else ""
        raise ValueError(f"{named} has no neuron{where}: nothing to {action} (the run would be the unchanged model)")
    return ns
