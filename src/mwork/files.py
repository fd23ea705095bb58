"""Result files written atomically and read back with a sentence, not a traceback.

Every file an enhancement run or a comparison writes goes through :func:`atomic_write`: the
bytes go to a temporary file in the same folder, which then replaces the target in one rename,
so a killed run leaves the old file or the new one, never half of one. Safetensors files are
read through :func:`read_safetensors`, which turns a truncated or foreign file into a
ValueError that names the file and says what to do. Nothing here unpickles.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename,
    on an error it is removed (and ``path`` is left as it was)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def make_folder(path: str | Path) -> Path:
    """Create an output folder (and its parents), or say in a sentence why it cannot be one."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"the output folder {folder} is a file; choose a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the output folder {folder}: {err.strerror or err}") from None
    return folder


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value: Any, **dump: Any) -> None:
    """``json.dumps(value, **dump)`` plus a newline, atomically (UTF-8)."""
    write_text(path, json.dumps(value, **dump) + "\n")


def save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_safetensors(path: str | Path, what: str, remedy: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the header metadata of a safetensors file. A file that is truncated,
    garbage or not safetensors at all (a pickle, say) is a ValueError:
    ``"<path> is not a readable <what> (<reason>): <remedy>"``."""
    from safetensors import safe_open

    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError for short files)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{p} is not a readable {what} (it is truncated or not a safetensors file: {reason}); "
                         f"{remedy}") from None
    return tensors, metadata


def read_json(path: str | Path, what: str, remedy: str) -> Any:
    """A JSON file, or a ValueError naming it when it is truncated or not JSON."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{p} is not a readable {what} (it is truncated or not JSON: {err}); {remedy}") from None


# ---- output paths ----------------------------------------------------------------------------


def check_output_path(path: str | Path, what: str = "output") -> Path:
    """Refuse, before any computation, an output under a file (``--out afile/fr``)."""
    p = Path(path)
    for parent in [p, *p.parents]:
        if parent != p and parent.exists() and not parent.is_dir():
            raise ValueError(f"cannot write the {what} {p}: {parent} is a file, not a folder; choose another path")
    return p


def check_output_kind(path: str | Path, kind: str, flag: str = "--out") -> Path:
    """Refuse, before any computation, an output folder that is an existing file, or an output
    file (``kind="file"``) that is an existing folder: both would fail only when the results are
    written, after the whole run."""
    p = check_output_path(path)
    if kind == "folder" and p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {p} is a file, but this output is a folder; choose a folder")
    if kind == "file" and p.is_dir():
        raise ValueError(f"{flag} {p} is a folder, but this output is a file; give a file name")
    return p


@contextlib.contextmanager
def output_lock(path: str | Path) -> Iterator[Path]:
    """Hold a lock on an output path (a folder or a file) for the whole run, so that a second
    run into the same output fails at once, saying which process holds it, instead of both
    writing and one silently winning. The lock is an ``flock`` on ``.<name>.mwork-lock`` beside
    the output: the system releases it when the process ends, even after ``kill -9``."""
    import fcntl
    import socket
    import sys
    import time

    target = check_output_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.mwork-lock"
    handle = open(lock, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ValueError(f"{target} is being written by {holder}; wait for it to finish or choose another "
                             "output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv)[:200]}) since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        yield target
    finally:
        handle.close()  # releases the lock
