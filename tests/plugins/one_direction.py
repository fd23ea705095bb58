"""A unit kind from outside mwork: one unit-norm direction at ``layer.out`` of one layer.

Its value is the coordinate along the unit vector ``v`` (``u = x . v``) and a change of ``u`` is
written back along ``v``; it brings its own read, write, file and compatibility check, and is
registered with ``mwork.units.register_unit_kind``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mwork.models.adapters import get_adapter
from mwork.units import UnitGroup, UnitSet, read_unit_file


class _Group(UnitGroup):
    def __init__(self, site, layer: int, v: torch.Tensor):
        self.site, self.v = site, v
        self.parts = [("one-direction", layer, torch.tensor([0]))]

    def read(self, x):
        return (x @ self.v.to(x))[..., None]

    def editor(self, op, keep=1.0, shift=None):
        def edit(x):
            u = self.read(x)
            new_u = {"zero": torch.zeros_like(u), "set": torch.full_like(u, float(shift[0]) if shift is not None else 0.0),
                     "affine": keep * u + (0.0 if shift is None else float(shift[0]))}[op]
            return x + (new_u - u) * self.v.to(x)
        return edit


class OneDirection(UnitSet):
    kind = "one-direction"

    def __init__(self, v: torch.Tensor, layer: int):
        self.v = torch.as_tensor(v, dtype=torch.float32) / torch.as_tensor(v, dtype=torch.float32).norm()
        self.layer = int(layer)

    def groups(self, model):
        return [_Group(get_adapter(model).site("layer.out", self.layer), self.layer, self.v)]

    def count(self):
        return 1

    def check_compatible(self, model):
        if get_adapter(model).fingerprint()["hidden_size"] != self.v.numel():
            raise ValueError("this direction does not fit the model's hidden size")

    def restrict(self, layers=None, kinds=None):
        return self

    def statistic(self, name, group):
        return torch.tensor([0.0], dtype=torch.float64)

    def save(self, path):
        from safetensors.torch import save_file

        path = Path(path)
        save_file({"v": self.v}, str(path), metadata={"mwork": json.dumps({"unit_kind": self.kind, "layer": self.layer})})
        return path

    @classmethod
    def load(cls, path, model=None):
        tensors, meta = read_unit_file(path)
        out = cls(tensors["v"], meta["layer"])
        if model is not None:
            out.check_compatible(model)
        return out
