"""Directions as units: vectors in a site's space (residual-stream language vectors, probes).

Unit ``j`` at layer ``l`` has a write vector ``w_j`` and a read vector ``r_j``; by default
``r_j = w_j / |w_j|^2``, so ``u_j = x . r_j`` is the coordinate of ``x`` along ``w_j`` and

* ``add`` (``affine`` with keep 1, shift alpha):  ``x <- x + alpha w_j``;
* ``zero``:  ``x <- x - (x . r_j) w_j``, the component along ``w_j`` removed;
* ``set`` to a statistic ``c``:  ``x <- x + (c - x . r_j) w_j``;
* ``affine``:  ``x <- x + ((keep - 1) u_j + shift) w_j``.

Several units at one layer are edited each by its own coordinate (for orthogonal directions the
edits are independent projections). The arithmetic is done in float32 or wider and cast back to
the model's dtype. Files: safetensors (``write``, ``read``, ``layers``, ``stat.NAME``) with the
metadata in its header and a ``.json`` beside it, like a NeuronSet; nothing unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from mwork.hooks import DeviceCache, Site, module_device
from mwork.units.base import LayeredUnits, RowGroup, register_unit_kind, widen

#: Sites whose tensor lives in the residual stream's space (hidden_size features).
RESIDUAL_SITES = ("layer.in", "layer.out", "attn.out", "o.out", "ffn.out", "final_norm.in")
FORMAT_VERSION = 1


class DirectionGroup(RowGroup):
    """The directions of one set at one layer: read rows ``read`` and write rows ``write`` (k, d)."""

    def __init__(self, site, layer: int, ids: torch.Tensor, read: torch.Tensor, write: torch.Tensor):
        self.site = site
        self.parts = [("directions", layer, ids)]
        device = module_device(site.module)
        self._read = DeviceCache(read.to(device=device, dtype=torch.float64), keep_dtype=False)
        self._write = DeviceCache(write.to(device=device, dtype=torch.float64), keep_dtype=False)
        self.width = int(write.shape[1])

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.width:
            raise ValueError(f"directions of width {self.width} cannot edit {self.site!r}, whose values have "
                             f"{x.shape[-1]} features: they were made for another site or model")

    def read(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        wide = widen(x)
        return wide @ self._read.on(wide).T

    def write_rows(self, like: torch.Tensor) -> torch.Tensor:
        self._check(like)
        return self._write.on(like)


@register_unit_kind
class Directions(LayeredUnits):
    """Directions at one site (default ``layer.out``, the residual stream after a layer): unit
    ``j`` is ``write[j]`` at layer ``layers[j]`` (named ``names[j]``, e.g. a language), read by
    ``read[j]`` (default ``write[j] / |write[j]|^2``). ``stats``: per-unit statistics (e.g. the
    target language's mean coordinate ``mean``), float64 (n,) each. ``meta``: free JSON (the
    model's fingerprint under ``fingerprint`` and its name under ``model_id`` are checked)."""

    kind = "directions"
    noun = "directions"

    def __init__(self, write: torch.Tensor, layers: Sequence[int] | torch.Tensor, *, site: str = "layer.out",
                 read: torch.Tensor | None = None, names: Sequence[str] | None = None,
                 stats: Mapping[str, torch.Tensor] | None = None, meta: Mapping[str, Any] | None = None):
        write = torch.as_tensor(write).detach().to(torch.float32).cpu()
        if write.dim() != 2:
            raise ValueError(f"write must be (units, features), got shape {tuple(write.shape)}")
        layers_t = torch.as_tensor(list(layers) if not isinstance(layers, torch.Tensor) else layers, dtype=torch.long)
        if layers_t.shape != (write.shape[0],):
            raise ValueError(f"one layer per direction: {write.shape[0]} directions, {layers_t.numel()} layers")
        if not bool(torch.isfinite(write).all()):
            raise ValueError("a direction holds NaN or inf: measure it again")
        if read is None:
            norm2 = (write.double() ** 2).sum(-1, keepdim=True)
            if bool((norm2 == 0).any()):
                raise ValueError("a direction is the zero vector: it has no coordinate to read or set")
            read = (write.double() / norm2).float()
        read = torch.as_tensor(read).detach().to(torch.float32).cpu()
        if read.shape != write.shape:
            raise ValueError(f"read {tuple(read.shape)} and write {tuple(write.shape)} must have the same shape")
        self.write, self.read, self.layers, self.site = write, read, layers_t, site
        self.names = list(names) if names is not None else [""] * write.shape[0]
        if len(self.names) != write.shape[0]:
            raise ValueError(f"{len(self.names)} names for {write.shape[0]} directions")
        self.stats = {k: torch.as_tensor(v, dtype=torch.float64).reshape(-1) for k, v in (stats or {}).items()}
        for k, v in self.stats.items():
            if v.numel() != write.shape[0]:
                raise ValueError(f"statistic {k!r} has {v.numel()} values for {write.shape[0]} directions")
        self.meta = dict(meta or {})

    # ---- the unit set ---------------------------------------------------------------------
    def group(self, site: Site, layer: int, ids: torch.Tensor) -> DirectionGroup:
        return DirectionGroup(site, layer, ids, self.read[ids], self.write[ids])

    def check_compatible(self, model: nn.Module) -> None:
        self.check_fits(model, int(self.write.shape[1]), RESIDUAL_SITES)

    def subset(self, ids: torch.Tensor) -> "Directions":
        return Directions(self.write[ids], self.layers[ids], site=self.site, read=self.read[ids],
                          names=[self.names[i] for i in ids.tolist()],
                          stats={k: v[ids] for k, v in self.stats.items()}, meta=self.meta)

    def random_like(self, seed: int) -> "Directions":
        """The random baseline: for each direction, a seeded random one of the same norm at the
        same layer (read as the coordinate along it); no statistic is carried over."""
        gen = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(self.write.shape, generator=gen, dtype=torch.float64)
        scaled = noise / noise.norm(dim=-1, keepdim=True) * self.write.double().norm(dim=-1, keepdim=True)
        meta = dict(self.meta, random_like=sorted(set(self.names)), seed=int(seed),
                    rule="random directions, the same norm and layer as each direction")
        return Directions(scaled.float(), self.layers, site=self.site, names=[f"random{seed}"] * self.count(),
                          meta=meta)

    # ---- files ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        return self.write_file(path, {"write": self.write.contiguous(), "read": self.read.contiguous(),
                                      "layers": self.layers.contiguous()},
                               {"names": self.names, "layers": sorted(set(self.layers.tolist())),
                                "format_version": FORMAT_VERSION})

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> "Directions":
        from mwork.units.files import read_unit_file

        tensors, meta = read_unit_file(path)
        for key in ("write", "read", "layers"):
            if key not in tensors:
                raise ValueError(f"{path}: a directions file must hold {key!r}; write it with Directions.save")
        site, names = meta.pop("site", "layer.out"), meta.pop("names", None)
        for key in ("unit_kind", "count", "layers", "format_version"):
            meta.pop(key, None)
        stats = {k[len("stat."):]: v for k, v in tensors.items() if k.startswith("stat.")}
        out = cls(tensors["write"], tensors["layers"], site=site, read=tensors["read"], names=names, stats=stats,
                  meta=meta)
        if model is not None:
            out.check_compatible(model)
        return out

    def __repr__(self) -> str:
        return f"Directions({self.count()} at {self.site}, layers {sorted(set(self.layers.tolist()))})"
