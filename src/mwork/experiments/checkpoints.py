"""Training checkpoints without pickle: one safetensors file whose header holds the JSON.

A checkpoint is a nested value (the trainable tensors, the optimiser's and the scheduler's
state dicts, the RNG states, the step, the loss history, the run's fingerprint). Its tensors are
stored as safetensors tensors and everything else as JSON in the file's header
(``mwork_checkpoint``), with each tensor replaced by ``{"$tensor": NAME}``; tuples and
integer-keyed dicts (the optimiser's state) are marked so they come back as they were. One file,
written atomically: a killed run leaves the previous checkpoint or the new one.

Reading never unpickles, so a crafted file cannot run code: anything that is not such a file is
a ValueError naming it and saying how to start over. ``checkpoint.pt`` files of older mwork
versions (pickles) are refused, not loaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from mwork.files import read_safetensors, save_safetensors

CHECKPOINT_FILE = "checkpoint.safetensors"
LEGACY_CHECKPOINT_FILE = "checkpoint.pt"  # written by mwork before 0.2 with torch.save (a pickle)
FORMAT_VERSION = 1
_HEADER = "mwork_checkpoint"
_MARKERS = ("$tensor", "$tuple", "$int_keys", "$float")


def _start_over(path: Path) -> str:
    return "delete it to start the run over, or choose another output folder"


def _pack(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    if torch.is_tensor(value):
        tensors[name] = value.detach().cpu().contiguous().clone()  # clone: no two entries share memory
        return {"$tensor": name}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            clash = [k for k in value if k in _MARKERS]
            if clash:
                raise TypeError(f"checkpoint keys {clash} are reserved")
            return {k: _pack(v, f"{name}/{k}", tensors) for k, v in value.items()}
        if all(isinstance(k, int) and not isinstance(k, bool) for k in value):
            return {"$int_keys": {str(k): _pack(v, f"{name}/{k}", tensors) for k, v in value.items()}}
        raise TypeError(f"checkpoint entry {name}: dict keys must be all str or all int")
    if isinstance(value, tuple):
        return {"$tuple": [_pack(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_pack(v, f"{name}/{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return {"$float": repr(value)}
        return value
    raise TypeError(f"checkpoint entry {name}: cannot store a {type(value).__name__} without pickle")


def _unpack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$tensor"}:
            return tensors[value["$tensor"]]
        if set(value) == {"$tuple"}:
            return tuple(_unpack(v, tensors) for v in value["$tuple"])
        if set(value) == {"$int_keys"}:
            return {int(k): _unpack(v, tensors) for k, v in value["$int_keys"].items()}
        if set(value) == {"$float"}:
            return float(value["$float"])
        return {k: _unpack(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_unpack(v, tensors) for v in value]
    return value


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (str-keyed; tensors, tuples, int-keyed dicts, JSON values) atomically."""
    tensors: dict[str, torch.Tensor] = {}
    body = _pack(state, "state", tensors)
    header = json.dumps({"format_version": FORMAT_VERSION, "state": body}, allow_nan=False)
    save_safetensors(path, tensors, metadata={_HEADER: header})


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The state written by :func:`save_checkpoint`; a ValueError naming the file (and saying
    how to start over) for a legacy pickle, a truncated or garbage file, or another file."""
    p = Path(path)
    if p.name.endswith(".pt") or p.suffix == ".pth":
        raise ValueError(legacy_message(p))
    tensors, metadata = read_safetensors(p, "mwork checkpoint", _start_over(p))
    try:
        header = json.loads(metadata[_HEADER])
        if header.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format version {header.get('format_version')!r}, expected {FORMAT_VERSION}")
        state = _unpack(header["state"], tensors)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{p} is a safetensors file but not a checkpoint this mwork can read ({err!r}); "
                         f"{_start_over(p)}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{p} does not hold a checkpoint state; {_start_over(p)}")
    return state


def legacy_message(path: Path) -> str:
    return (f"{path} is a checkpoint of an older mwork, saved with pickle, which mwork does not load (loading a "
            f"pickle can run any code); delete it to start the run over, or choose another output folder")
