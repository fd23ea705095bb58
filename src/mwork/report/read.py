"""Reading result files for the page: a file that cannot be read is a :class:`BadResultFile`
that names it and says why, which the page shows as a warning (never a silent gap).

Nothing here unpickles: tables are CSV, records JSON, tensors safetensors.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable

from mwork.report.format import as_float


class BadResultFile(ValueError):
    """A result file the page cannot use; ``reason`` is a sentence for the reader."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadResultFile(path, "is not UTF-8 text") from None
    except OSError as err:
        raise BadResultFile(path, f"cannot be read ({err.strerror or err})") from None


def read_csv(path: Path, required: Iterable[str] = (), numeric: Iterable[str] = ()) -> list[dict[str, str]]:
    """The rows of a CSV written by mwork, checked: a header with the ``required`` columns, every
    row as long as the header, a line end after the last row (mwork's writers end every file
    with one, so a missing one means the file was cut off), and ``numeric`` columns that parse
    as numbers (empty and ``nan`` allowed)."""
    text = read_text(path)
    if not text.strip():
        raise BadResultFile(path, "is empty")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    head, body = rows[0], rows[1:]
    missing = [c for c in required if c not in head]
    if missing:
        raise BadResultFile(path, f"lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                                  f"(header: {','.join(head)})")
    for n, row in enumerate(body, start=2):
        if len(row) != len(head):
            raise BadResultFile(path, f"line {n} has {len(row)} fields where the header has {len(head)}: "
                                      "the file looks truncated or damaged")
    if not text.endswith(("\n", "\r")):
        raise BadResultFile(path, "ends in the middle of a line: the file looks truncated")
    out = [dict(zip(head, row)) for row in body]
    for column in numeric:
        for n, row in enumerate(out, start=2):
            value = row.get(column, "")
            if value.strip() and as_float(value) is None and value.strip().lower() != "nan":
                raise BadResultFile(path, f"line {n}: {column} = {value!r} is not a number")
    return out


def read_json(path: Path, required: Iterable[str] = ()) -> Any:
    """A JSON file's value; with ``required``, it must be an object holding those keys."""
    text = read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadResultFile(path, f"is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None
    required = list(required)
    if required:
        if not isinstance(value, dict):
            raise BadResultFile(path, f"holds a JSON {type(value).__name__}, not the object mwork writes")
        missing = [k for k in required if k not in value]
        if missing:
            raise BadResultFile(path, f"lacks the key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return value


def read_jsonl(path: Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The records of a JSON-lines file written by mwork: one JSON object a line, each holding the
    ``required`` keys, and a line end after the last one (mwork's writers end every line with
    one, so a missing one means the file was cut off)."""
    text = read_text(path)
    if not text.strip():
        raise BadResultFile(path, "is empty")
    required = list(required)
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise BadResultFile(path, f"line {n} is not valid JSON ({err.msg} at column {err.colno}): the file looks "
                                      "truncated or damaged") from None
        if not isinstance(value, dict):
            raise BadResultFile(path, f"line {n} holds a JSON {type(value).__name__}, not the object mwork writes")
        missing = [k for k in required if k not in value]
        if missing:
            raise BadResultFile(path, f"line {n} lacks the key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        out.append(value)
    if not text.endswith(("\n", "\r")):
        raise BadResultFile(path, "ends in the middle of a line: the file looks truncated")
    return out


def read_neuron_masks(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A NeuronSet file's metadata, masks (kind -> bool array (layers, neurons)) and extra
    tensors (``doc_count.<kind>`` ...), as numpy arrays (safetensors; nothing unpickled)."""
    try:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        with safe_open(str(path), framework="np") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - a damaged file of any sort is a sentence on the page
        raise BadResultFile(path, f"is not a readable safetensors file ({type(err).__name__}: {err})") from None
    if "mwork" not in header:
        raise BadResultFile(path, "is a safetensors file but not a NeuronSet written by mwork")
    try:
        meta = json.loads(header["mwork"])
    except json.JSONDecodeError:
        raise BadResultFile(path, "has a damaged NeuronSet header") from None
    masks = {k[len("mask."):]: v.astype(bool) for k, v in tensors.items() if k.startswith("mask.")}
    extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    return meta, masks, extra
