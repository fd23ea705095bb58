"""Neuron deltas: trainable changes to only the parameters that belong to a set of neurons.

Enhancement trains, for every selected neuron, only its own slices (the adapter says which:
``Adapter.neuron_slices``): rows of W_gate / W_up (and their bias elements) and the column of
W_down for an FFN neuron, the row (and bias element) of W_Q / W_K / W_V for an attention
neuron. Each slice is a small tensor in the nn.Linear orientation:

* ``side="out"`` (rows): ``weight`` (n, in_features), ``bias`` (n,) when the module has one;
  a forward hook adds ``x @ weight.T + bias`` to output features ``index``.
* ``side="in"`` (columns): ``weight`` (out_features, n); a forward hook adds
  ``x[..., index] @ weight.T`` to the output.

Expert neurons of a mixture-of-experts layer (``mwork.models.families.moe``) own rows of 3-D
expert parameters, which no module of their own computes: their slices (``site`` set) act at
points of the block's computation through the same edits -- rows at ``ffn.gate.out`` /
``ffn.up.out`` (input: the block's input), columns at ``ffn.out`` (input: the routed hidden
state r * h, so the delta's output is weighted by the router as the expert's is) -- and merge
into the parameters the adapter names (``Adapter.expert_parameters``).

The hooked model computes exactly what the merged weights ``W + ΔW`` compute, while the base
weights are never touched; the optimiser sees only these small tensors, so its state is the
size of the selected slices. ``merge_into`` adds the deltas into a freshly loaded model
(load time), ``save`` / ``NeuronDelta.load`` write and read ``delta.safetensors`` + ``delta.json``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from mwork.files import read_json, read_safetensors, save_safetensors, write_text
from mwork.hooks import DeviceCache, Hooks, module_site
from mwork.models.adapters import KINDS, get_adapter
from mwork.neurons.neuronset import NeuronSet, as_neuron_set

FORMAT_VERSION = 1
DELTA_FILE = "delta.safetensors"
META_FILE = "delta.json"


@dataclass
class SliceDelta:
    """The delta of one (layer, kind, role) slice; ``module`` is a name inside the model."""

    layer: int
    kind: str
    role: str
    module: str
    side: str  # "out" | "in"
    transposed: bool  # the module stores its weight (in, out) (GPT-2 Conv1D)
    index: torch.Tensor  # feature indices in the module (LongTensor, n)
    channels: torch.Tensor  # neuron indices of ``kind`` (LongTensor, n)
    weight: nn.Parameter
    bias: nn.Parameter | None = None
    site: str | None = None  # a point of a MoE block's computation (``module``: the block), not a module

    @property
    def key(self) -> str:
        return f"layers.{self.layer}.{self.kind}.{self.role}"

    def parameters(self) -> list[nn.Parameter]:
        return [self.weight] + ([self.bias] if self.bias is not None else [])


def _in_out(module: nn.Module, transposed: bool) -> tuple[int, int]:
    w = module.weight
    return (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])


def _delta_dtype(weight: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    # float32 at least: a bf16 delta would round small updates away
    return dtype or torch.promote_types(weight.dtype, torch.float32)


class NeuronDelta:
    """Trainable per-slice deltas for a NeuronSet on one model (see the module docstring)."""

    def __init__(self, slices: list[SliceDelta], meta: dict[str, Any] | None = None):
        self.slices = slices
        self.meta: dict[str, Any] = dict(meta or {})

    # ---- construction -----------------------------------------------------------------
    @classmethod
    def zeros(cls, model: nn.Module, neurons: NeuronSet | str | Path, dtype: torch.dtype | None = None) -> "NeuronDelta":
        """Zero deltas for every slice owned by ``neurons`` (checked against ``model``)."""
        ns = as_neuron_set(neurons, model)
        adapter = get_adapter(model)
        names = {id(m): n for n, m in model.named_modules()}
        slices: list[SliceDelta] = []
        for layer in range(adapter.num_layers):
            for kind in KINDS:
                channels = ns.indices(kind, layer)
                if len(channels) == 0:
                    continue
                for sl in adapter.neuron_slices(layer, kind):
                    site = getattr(sl, "site", None) or None
                    if site:  # expert channels: a slice of the virtual map over every expert channel
                        w, (n_in, n_out) = next(sl.module.parameters()), (sl.in_features, sl.out_features)
                        has_bias = False
                    else:
                        w, (n_in, n_out) = sl.module.weight, _in_out(sl.module, sl.transposed)
                        has_bias = getattr(sl.module, "bias", None) is not None
                    index = sl.index[channels].to(torch.long)
                    dt, dev = _delta_dtype(w, dtype), w.device
                    if sl.side == "out":
                        weight = nn.Parameter(torch.zeros(len(index), n_in, dtype=dt, device=dev))
                        bias = nn.Parameter(torch.zeros(len(index), dtype=dt, device=dev)) if has_bias else None
                    else:
                        weight = nn.Parameter(torch.zeros(n_out, len(index), dtype=dt, device=dev))
                        bias = None
                    slices.append(SliceDelta(layer, kind, sl.role, names[id(sl.module)], sl.side, sl.transposed,
                                             index.cpu(), channels.cpu(), weight, bias, site))
        if not slices:
            raise ValueError("the neuron set is empty: nothing to train (pick a set with at least one neuron)")
        return cls(slices)

    # ---- queries ----------------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        return [p for s in self.slices for p in s.parameters()]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> dict[str, Any]:
        per_kind: dict[str, int] = {}
        seen: set[tuple[int, str]] = set()
        for s in self.slices:  # several slices per (layer, kind): count its neurons once
            if (s.layer, s.kind) not in seen:
                seen.add((s.layer, s.kind))
                per_kind[s.kind] = per_kind.get(s.kind, 0) + len(s.channels)
        return {"neurons": per_kind, "slices": len(self.slices), "parameters": self.num_parameters()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Delta values by name (``<key>.weight`` / ``<key>.bias``), detached, on the CPU."""
        out: dict[str, torch.Tensor] = {}
        for s in self.slices:
            out[f"{s.key}.weight"] = s.weight.detach().cpu().contiguous()
            if s.bias is not None:
                out[f"{s.key}.bias"] = s.bias.detach().cpu().contiguous()
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for s in self.slices:
                s.weight.copy_(state[f"{s.key}.weight"])
                if s.bias is not None:
                    s.bias.copy_(state[f"{s.key}.bias"])

    def element_masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``{parameter name: bool mask}`` of the base-model elements these slices change."""
        masks: dict[str, torch.Tensor] = {}
        for s in self.slices:
            if s.site:
                for part in get_adapter(model).expert_parameters(s.layer, s.role, s.index):
                    m = masks.setdefault(part.name, torch.zeros(part.param.shape, dtype=torch.bool))
                    m[part.index] = True
                continue
            module = model.get_submodule(s.module)
            m = masks.setdefault(f"{s.module}.weight", torch.zeros(module.weight.shape, dtype=torch.bool))
            rows_are_out = not s.transposed
            on_rows = (s.side == "out") == rows_are_out
            if on_rows:
                m[s.index, :] = True
            else:
                m[:, s.index] = True
            if s.bias is not None:
                b = masks.setdefault(f"{s.module}.bias", torch.zeros(module.bias.shape, dtype=torch.bool))
                b[s.index] = True
        return masks

    # ---- use --------------------------------------------------------------------------
    @contextlib.contextmanager
    def attach(self, model: nn.Module) -> Iterator["NeuronDelta"]:
        """Edits (``mwork.hooks``) that add the deltas to the selected features (removed on exit)."""
        groups: dict[tuple[str, str | None], list[SliceDelta]] = {}
        for s in self.slices:
            groups.setdefault((s.module, s.site), []).append(s)
        hooks = Hooks()
        for (name, site), group in groups.items():
            where = get_adapter(model).site(site, group[0].layer) if site else module_site(model.get_submodule(name))
            hooks.edit(where, _make_edit(group), call=True)
        with hooks:
            yield self

    @torch.no_grad()
    def merge_into(self, model: nn.Module) -> None:
        """Add the deltas into ``model``'s weights (a load-time merge; other elements untouched)."""
        for s in self.slices:
            if s.site:
                _merge_expert_slice(model, s)
                continue
            module = model.get_submodule(s.module)
            W = module.weight
            d = s.weight.to(device=W.device, dtype=W.dtype)
            idx = s.index.to(W.device)
            if s.side == "out":
                if s.transposed:
                    W.index_add_(1, idx, d.T)
                else:
                    W.index_add_(0, idx, d)
                if s.bias is not None:
                    module.bias.index_add_(0, idx, s.bias.to(device=W.device, dtype=module.bias.dtype))
            elif s.transposed:
                W.index_add_(0, idx, d.T)
            else:
                W.index_add_(1, idx, d)

    # ---- files --------------------------------------------------------------------------
    def slice_table(self) -> list[dict[str, Any]]:
        rows = []
        for s in self.slices:
            row = {"key": s.key, "layer": s.layer, "kind": s.kind, "role": s.role, "module": s.module,
                   "side": s.side, "transposed": s.transposed, "n": len(s.index),
                   "shape": list(s.weight.shape), "bias": s.bias is not None}
            if s.site:
                row["site"] = s.site
            rows.append(row)
        return rows

    def save(self, out_dir: str | Path, meta: dict[str, Any] | None = None) -> Path:
        """Write ``out_dir/delta.safetensors`` (only the slices) and ``out_dir/delta.json``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = self.state_dict()
        for s in self.slices:
            tensors[f"{s.key}.index"] = s.index.clone()
            tensors[f"{s.key}.channels"] = s.channels.clone()  # shared by a neuron's slices: copy
        meta = dict(self.meta, **(meta or {}))
        meta.update(format_version=FORMAT_VERSION, slices=self.slice_table())
        header = {"mwork_delta": json.dumps({"format_version": FORMAT_VERSION, "slices": self.slice_table(),
                                             "fingerprint": meta.get("fingerprint")}, sort_keys=True)}
        # each file atomically: a killed run leaves the old file or the new one, never half of one
        save_safetensors(out / DELTA_FILE, tensors, metadata=header)
        write_text(out / META_FILE, json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        self.meta = meta
        return out / DELTA_FILE

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> "NeuronDelta":
        """Read a delta folder (or its ``delta.safetensors``); with ``model``, check that it fits."""
        p = Path(path)
        st = p / DELTA_FILE if p.is_dir() or p.suffix != ".safetensors" else p
        if not st.is_file():
            raise FileNotFoundError(f"no delta at {st} (expected a folder written by `mwork enhance`)")
        remedy = ("train the delta again with `mwork enhance` (into a new folder), or name another delta folder")
        tensors, metadata = read_safetensors(st, "mwork delta", remedy)
        try:
            header = json.loads(metadata.get("mwork_delta", "null") or "null")
        except json.JSONDecodeError:
            raise ValueError(f"{st} has a damaged mwork_delta header; {remedy}") from None
        if header is None:
            raise ValueError(f"{st} is a safetensors file but not an mwork delta")
        meta_path = st.with_name(META_FILE)
        meta = read_json(meta_path, "delta record", remedy) if meta_path.is_file() else {}
        slices = []
        try:
            for row in header["slices"]:
                k = row["key"]
                bias = tensors.get(f"{k}.bias")
                slices.append(SliceDelta(row["layer"], row["kind"], row["role"], row["module"], row["side"],
                                         row["transposed"], tensors[f"{k}.index"], tensors[f"{k}.channels"],
                                         nn.Parameter(tensors[f"{k}.weight"]),
                                         nn.Parameter(bias) if bias is not None else None, row.get("site")))
        except (KeyError, TypeError) as err:
            raise ValueError(f"{st} is an incomplete mwork delta (missing {err}); {remedy}") from None
        delta = cls(slices, meta)
        if model is not None:
            delta.check_compatible(model, header.get("fingerprint"))
        return delta

    def check_compatible(self, model: nn.Module, fingerprint: dict[str, Any] | None = None) -> None:
        """Raise ValueError unless every slice fits a module of ``model`` with the right shape."""
        fp = get_adapter(model).fingerprint()
        fingerprint = fingerprint or self.meta.get("fingerprint")
        made_for = self.meta.get("model_id", "another model")
        if fingerprint and fingerprint != fp:
            raise ValueError(f"this delta was trained on {made_for} and does not fit this model "
                             f"(shape {fingerprint} vs {fp})")
        for s in self.slices:
            try:
                module = model.get_submodule(s.module)
            except AttributeError:
                raise ValueError(f"this delta was trained on {made_for}: the model has no module {s.module!r}") from None
            if s.site:
                n_in, n_out = _expert_slice_shape(model, s, made_for)
            else:
                n_in, n_out = _in_out(module, s.transposed)
            expected = (len(s.index), n_in) if s.side == "out" else (n_out, len(s.index))
            width = n_out if s.side == "out" else n_in
            if tuple(s.weight.shape) != expected or (len(s.index) and int(s.index.max()) >= width):
                raise ValueError(f"delta slice {s.key} has shape {tuple(s.weight.shape)}; module {s.module} "
                                 f"needs {expected}: the delta was trained on {made_for}")


def _expert_slice_shape(model: nn.Module, s: SliceDelta, made_for: str) -> tuple[int, int]:
    """(in, out) features of the virtual map an expert slice belongs to, as the model's adapter says."""
    adapter = get_adapter(model)
    if not 0 <= s.layer < adapter.num_layers:
        raise ValueError(f"delta slice {s.key}: the model has no layer {s.layer}; the delta was trained on {made_for}")
    for sl in adapter.neuron_slices(s.layer, s.kind):
        if sl.role == s.role and getattr(sl, "site", None) == s.site:
            return sl.in_features, sl.out_features
    raise ValueError(f"delta slice {s.key} acts at {s.site!r}, which this model's layer {s.layer} does not have: "
                     f"the delta was trained on {made_for}")


def _merge_expert_slice(model: nn.Module, s: SliceDelta) -> None:
    """Add an expert slice's delta into the expert parameters it belongs to."""
    for part in get_adapter(model).expert_parameters(s.layer, s.role, s.index):
        P = part.param
        d = s.weight[part.rows] if s.side == "out" else s.weight[:, part.rows].T  # (rows, D)
        d = d.to(device=P.device, dtype=P.dtype)
        index = tuple(i.to(P.device) if isinstance(i, torch.Tensor) else i for i in part.index)
        P[index] += d.T if part.transposed else d


def _make_edit(group: list[SliceDelta]):
    """One edit per module applying all of its slices to its output, out of place (autograd-safe)."""

    indices = [DeviceCache(s.index) for s in group]  # moved once per device

    def edit(x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        out = output
        for s, index in zip(group, indices):
            idx = index.on(x)
            w = s.weight.to(x.dtype)
            if s.side == "out":
                add = x @ w.T
                if s.bias is not None:
                    add = add + s.bias.to(x.dtype)
                out = out.index_add(-1, idx, add.to(out.dtype))
            else:
                out = out + (x.index_select(-1, idx) @ w.T).to(out.dtype)
        return out

    return edit


def apply_delta(model: nn.Module, delta: "NeuronDelta | str | Path") -> NeuronDelta:
    """Merge a trained delta (a folder written by ``mwork enhance``, or a NeuronDelta) into the
    weights of ``model`` -- meant for a freshly loaded model; returns the delta."""
    d = delta if isinstance(delta, NeuronDelta) else NeuronDelta.load(delta, model)
    if isinstance(delta, NeuronDelta):
        d.check_compatible(model)
    d.merge_into(model)
    return d
