"""Cached pipeline stages, keyed by content: a stage's folder is reused only when what it was
computed from is the same.

A stage's *key* is a JSON value naming everything it reads: its settings (a config fingerprint),
the model (:func:`mwork.fingerprints.model_digest`), the texts (``texts_digest``) and the files
of earlier stages it reads (``file_digest``), never their paths. ``<folder>/stage.json`` records
the key of the run that wrote the folder and whether it finished:

* finished with the same key: the stage is cached;
* finished, or started, with another key: the folder's results (and any checkpoints inside it)
  came from other inputs, so the folder is emptied and the stage reruns; :func:`key_changes`
  says which inputs differ;
* started with the same key but not finished (killed): it reruns in the same folder, so the
  checkpoints of the work inside resume.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mwork.config import digest
from mwork.files import write_json

MARKER = "stage.json"


def key_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the entries that differ between two keys (``texts.zh``, ``model.digest``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                out.append(path)
            else:
                out.extend(key_changes(old[k], new[k], path))
        return out
    return [] if _plain(old) == _plain(new) else [prefix or "key"]


def _plain(value: Any) -> Any:
    """JSON round trip, so a tuple and the list it was stored as compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


@dataclass
class StageStatus:
    cached: bool
    reason: str  # why the stage (re)runs; empty when cached or when it never ran
    stale: bool  # the folder holds results of other inputs (to be cleared before running)
    seconds: float = 0.0  # of the cached run


def stage_status(folder: str | Path, key: Any) -> StageStatus:
    """Whether ``folder`` holds this key's finished results, and if not, why."""
    marker = Path(folder) / MARKER
    if not marker.exists():
        return StageStatus(False, "", False)
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as err:
        return StageStatus(False, f"its {marker} is unreadable ({err})", True)
    if "key_sha256" not in record:
        return StageStatus(False, "its cache was written by an older mwork (keyed by settings, not by content)", True)
    if record["key_sha256"] != digest(key):
        changed = key_changes(record.get("key", {}), key) or ["key"]
        return StageStatus(False, "changed since the cached run: " + ", ".join(changed), True)
    if record.get("status") != "done":
        return StageStatus(False, "the last run did not finish; resuming", False)
    return StageStatus(True, "", False, float(record.get("seconds", 0.0)))


def _write(marker: Path, record: dict[str, Any]) -> None:
    write_json(marker, record, indent=2, sort_keys=True, default=str)


def run_stage(folder: str | Path, key: Any, fn: Callable[[Path], None], status: StageStatus | None = None) -> float:
    """Run ``fn(folder)`` under ``key`` (clearing a stale folder first) and record it; returns
    its seconds. ``status``: the :func:`stage_status` already asked for, if any."""
    folder = Path(folder)
    status = status or stage_status(folder, key)
    if status.stale and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"key_sha256": digest(key), "key": key, "status": "running"}
    _write(folder / MARKER, record)
    start = time.time()
    fn(folder)
    seconds = time.time() - start
    _write(folder / MARKER, {**record, "status": "done", "seconds": seconds})
    return seconds
