"""Unit set files: one loader for every kind (``mwork.load_units``).

Every unit set is a safetensors file whose header holds the JSON metadata under ``mwork`` (and a
``.json`` copy beside it). The metadata's ``unit_kind`` names the kind that reads it; a file
without one is a NeuronSet (its format predates unit kinds and stays readable). Nothing is
unpickled: safetensors holds tensors only. A folder that holds one dictionary (what ``mwork sae
train`` writes: ``DIR/dictionary.safetensors``) stands for that file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mwork.neurons.neuronset import NeuronSet, set_path
from mwork.units.base import UNIT_KINDS, UnitSet
from mwork.units.neurons import NeuronUnits


#: the file a dictionary folder (``mwork sae train --out DIR``) holds its dictionary in
FOLDER_FILE = "dictionary.safetensors"


def unit_path(path: str | Path) -> Path:
    """The unit set file ``path`` names: ``x``, ``x.safetensors``, ``x.json``, or a folder holding
    ``dictionary.safetensors``."""
    p = Path(path)
    if p.is_dir() and (p / FOLDER_FILE).is_file():
        return p / FOLDER_FILE
    return set_path(p)


def read_unit_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the metadata of a unit set file (``x``, ``x.safetensors``, ``x.json`` or a
    dictionary folder)."""
    from mwork.files import read_set_file

    return read_set_file(unit_path(path), "unit set",
                         "write the set again (mwork detect, mwork vectors, mwork sae train) or restore it")


def load_units(path: str | Path, model: nn.Module | None = None) -> UnitSet:
    """Read any unit set file: a NeuronSet (as :class:`NeuronUnits`, its ``.neurons``), directions,
    or a kind an installed package registers; checked against ``model`` when given."""
    path = unit_path(path)
    _, meta = read_unit_file(path)
    kind = meta.get("unit_kind")
    if kind is None:
        return NeuronUnits(NeuronSet.load(path, model))
    return UNIT_KINDS.get(str(kind)).load(path, model)


def as_units(units: "UnitSet | NeuronSet | str | Path", model: nn.Module | None = None) -> UnitSet:
    """A unit set from a UnitSet, a NeuronSet or a path (checked against ``model`` when given)."""
    if isinstance(units, NeuronSet):
        units = NeuronUnits(units)
    elif not isinstance(units, UnitSet):
        return load_units(units, model)
    if model is not None:
        units.check_compatible(model)
    return units
