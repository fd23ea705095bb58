"""Result files written atomically and read back with a sentence, not a traceback.

Every file an enhancement run or a comparison writes goes through :func:`atomic_write`: the
bytes go to a temporary file in the same folder, which then replaces the target in one rename,
so a killed run leaves the old file or the new one, never half of one. Safetensors files are
read through :func:`read_safetensors`, which turns a truncated or foreign file into a
ValueError that names the file and says what to do. Nothing here unpickles.

The shared rules of every output, checked before any work:

* a name that becomes a file name (a language code, a set's name) obeys one rule,
  :func:`check_name` (letters, digits, ``_`` and ``-``: never a path), and an output file built
  from a name is made by :func:`child_path`, which keeps it inside its folder;
* an explicit output file never replaces an input of the same command, a file of another kind
  or the ``.json`` sidecar of a set (:func:`check_output_file`);
* an output folder must be writable (:func:`check_writable`); a write that fails anyway (a full
  disk) is an :class:`OutputError`, one sentence naming the file, and leaves the old file whole;
* files get the usual permissions (0o666 less the umask), whatever library wrote them, and a
  run's lock file (:func:`output_lock`) is removed when it ends.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch


class OutputError(OSError):
    """An output that cannot be written (a read-only folder, a full disk ...): its message is one
    sentence naming the file, which ``mwork`` prints as ``mwork COMMAND: error: ...``."""


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)
WRITE_ERRNOS = _FULL + _DENIED  # errors of a write that the user, not the code, can fix


def cannot_write(path: str | Path, err: BaseException) -> OutputError:
    """``err`` (an OSError, or safetensors' error around one) raised while writing ``path``, as
    an :class:`OutputError` that names the file and says what to do."""
    if isinstance(err, OutputError):
        return err
    code = getattr(err, "errno", None)
    reason = getattr(err, "strerror", None) if isinstance(err, OSError) else None
    if not reason:
        text = str(err).strip()
        reason = text.splitlines()[0] if text else type(err).__name__
        found = re.search(r"os error (\d+)", text)
        if code is None and found:
            code = int(found.group(1))
            reason = os.strerror(code)
    hint = ""
    if code in _FULL:
        hint = "; free some space (the files written before are kept) and run again"
    elif code in _DENIED:
        hint = "; the folder is not writable: choose another output or make it writable"
    out = OutputError(f"cannot write {path}: {reason}{hint}")
    out.errno = code
    return out


def os_error_message(err: OSError) -> str:
    """One sentence for an OSError raised outside this module's writers (``open(path, "w")``, a
    plot's ``savefig``): the file when the error names it, the reason, and what to do."""
    if isinstance(err, OutputError):
        return str(err)
    name = err.filename
    if err.errno in _FULL:
        return str(cannot_write(name or "an output file", err))
    where = f"{name}: " if name else ""
    return (f"{where}{err.strerror or err}; check that the files and folders given can be read and the output "
            "folder written")


def _is_write_error(err: BaseException) -> bool:
    """An OSError, or safetensors' SafetensorError around an I/O error."""
    return isinstance(err, OSError) or (type(err).__name__ == "SafetensorError" and "I/O error" in str(err))


def _file_mode() -> int:
    """The mode a new file gets from ``open``: 0o666 less the process's umask."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename,
    on an error it is removed (and ``path`` is left as it was). The file gets the usual
    permissions (0o666 less the umask), whatever wrote it (safetensors writes 0o600). A write
    that fails for want of space or permission is an :class:`OutputError` naming ``path``."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            if tmp.exists():
                os.chmod(tmp, _file_mode())
            os.replace(tmp, target)
        except Exception as err:
            if _is_write_error(err):
                raise cannot_write(target, err) from None
            raise
    finally:
        tmp.unlink(missing_ok=True)


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path`` (UTF-8); when the write fails (a full disk) the file is cut
    back to what it was, so its earlier lines stay readable, and the error names it."""
    target = Path(path)
    data = memoryview(text.encode("utf-8"))
    try:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                while data:
                    data = data[os.write(fd, data):]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
    except OSError as err:
        raise cannot_write(target, err) from None


def make_folder(path: str | Path) -> Path:
    """Create an output folder (and its parents), or say in a sentence why it cannot be one."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"the output folder {folder} is a file; choose a folder")
    check_writable(folder, "output folder")
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


def csv_text(rows: Sequence[Any], columns: Sequence[str] | None = None,
             cell: Callable[[Any], Any] | None = None) -> str:
    """Rows (mappings) as CSV text with a header: ``columns`` in that order (default: every key in
    the order first seen), each value through ``cell`` (default: None as an empty cell)."""
    import csv
    import io

    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    fmt = cell or (lambda v: "" if v is None else v)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([fmt(row.get(c)) for c in columns])
    return buf.getvalue()


def float_cell(spec: str) -> Callable[[Any], str]:
    """A :func:`csv_text` cell: None empty, a float by the format ``spec`` (".6f"), else ``str``."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        return format(value, spec) if isinstance(value, float) else str(value)

    return cell


def number_cell(value: Any) -> Any:
    """A :func:`csv_text` cell for result tables: None and NaN empty, a float to 6 significant
    digits, anything else as it is."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def write_csv(path: str | Path, rows: Sequence[Any], columns: Sequence[str] | None = None,
              cell: Callable[[Any], Any] | None = None) -> Path:
    """:func:`csv_text` written atomically (UTF-8); returns ``path``."""
    write_text(path, csv_text(rows, columns, cell))
    return Path(path)


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


def read_set_file(path: Path, what: str, remedy: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the JSON metadata (the header's ``mwork`` entry) of a set file mwork wrote
    (a NeuronSet, a unit set): a missing file, a folder, garbage, another safetensors file or bad
    metadata is an error that names ``what`` and says ``remedy`` (what to do)."""
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {path} (expected a .safetensors file written by mwork)")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a {what} file")
    tensors, header = read_safetensors(path, what, remedy)
    if "mwork" not in header:
        raise ValueError(f"{path} is a safetensors file but not a {what} written by mwork")
    try:
        meta = json.loads(header["mwork"])
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its {what} metadata is not a valid JSON object; {remedy}")
    return tensors, meta


def read_json(path: str | Path, what: str, remedy: str) -> Any:
    """A JSON file, or a ValueError naming it when it is truncated or not JSON."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{p} is not a readable {what} (it is truncated or not JSON: {err}); {remedy}") from None


# ---- output paths ----------------------------------------------------------------------------


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Refuse, before any computation, an output in a folder this process cannot write: the
    output itself when it is an existing folder, else the nearest existing folder above it (where
    it and its temporary files are created). (``os.access``: root passes it everywhere.)"""
    p = Path(path)
    folder = p if p.is_dir() else next((a for a in p.parents if a.exists()), None)
    if folder is not None and folder.is_dir():
        if not os.access(folder, os.W_OK | os.X_OK):
            err = OutputError(f"cannot write the {what} {p}: the folder {folder} is not writable (read-only); "
                              "choose another output or make it writable")
            err.errno = errno.EACCES
            raise err
    return p


def check_output_path(path: str | Path, what: str = "output") -> Path:
    """Refuse, before any computation, an output under a file (``--out afile/fr``) or in a
    folder that cannot be written (:func:`check_writable`)."""
    p = Path(path)
    for parent in [p, *p.parents]:
        if parent != p and parent.exists() and not parent.is_dir():
            raise ValueError(f"cannot write the {what} {p}: {parent} is a file, not a folder; choose another path")
    return check_writable(p, what)


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


# ---- names that become file names --------------------------------------------------------------

NAME_MAX = 100
NAME_RULE = "letters, digits, '_' and '-' (as in BCP-47: en, zh-Hans)"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:196] + "...'"


def check_name(name: Any, what: str = "language code", flag: str | None = None) -> str:
    """The one rule for a name that becomes part of a file name (a language code, a set's name):
    ASCII letters, digits, ``_`` and ``-``, so it can never be a path: not empty, not ``.`` or
    ``..``, no ``/`` or ``\\``, no NUL, not absolute. Returns ``name``; otherwise a ValueError that
    names the bad value (and ``flag``, the option it came from)."""
    if not isinstance(name, str):
        problem = f"it is a {type(name).__name__}, not text"
    elif not name:
        problem = "it is empty"
    elif "\x00" in name:
        problem = "it contains a NUL character"
    elif name in (".", ".."):
        problem = "it names a folder, not a file"
    elif name.startswith(("/", "\\")) or os.path.isabs(name) or re.match(r"[A-Za-z]:", name):
        problem = "it is an absolute path"
    elif "/" in name or "\\" in name:
        problem = f"it contains {'/' if '/' in name else chr(92)!r}, so its file would land outside the output folder"
    elif len(name) > NAME_MAX:
        problem = f"it is longer than {NAME_MAX} characters"
    elif not _NAME.fullmatch(name):
        bad = "".join(dict.fromkeys(c for c in name if not (c.isascii() and (c.isalnum() or c in "_-"))))
        problem = f"it contains {bad[:10]!r}" if bad else "it starts with '_' or '-'"
    else:
        return name
    where = f"{flag}: " if flag else ""
    raise ValueError(f"{where}{what} {_shown(name)} is not valid: {problem}; a {what} is {NAME_RULE}, as it names "
                     "files")


def parse_names(text: str | Iterable[str], what: str = "language code",
                flag: str | None = "--langs") -> tuple[str, ...]:
    """Comma-separated names (or a sequence of them), each checked by :func:`check_name`; the
    empty parts of a comma-separated text (``en,,zh``) are skipped. Repeats are kept: refusing
    them is the caller's rule."""
    if isinstance(text, str):
        parts: Sequence[Any] = [x.strip() for x in text.split(",") if x.strip()]
    else:
        parts = [x.strip() if isinstance(x, str) else x for x in text]
    return tuple(check_name(x, what, flag) for x in parts)


def child_path(folder: str | Path, name: str, suffix: str = "", what: str = "language code",
               flag: str | None = None) -> Path:
    """``folder/<name><suffix>``, the one way to build an output file name from a name: the
    name is checked (:func:`check_name`) and the path must lie directly in ``folder``."""
    check_name(name, what, flag)
    base = Path(folder)
    path = base / f"{name}{suffix}"
    if os.path.dirname(os.path.abspath(path)) != os.path.abspath(base):
        raise ValueError(f"{what} {_shown(name)} with {suffix!r} would be written outside {base}")
    return path


# ---- explicit output files: never replace an input, a file of another kind or a set's sidecar ----


def file_kind(path: str | Path) -> str:
    """What an existing file holds, from its first bytes (binary formats, HTML) or else its
    suffix: safetensors, torch (``torch.save``), png, html, json, jsonl, csv, text or empty."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            head = f.read(64)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return "unreadable"
    if not head:
        return "empty"
    if len(head) >= 9 and 0 < int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "html"
    return {".json": "json", ".jsonl": "jsonl", ".csv": "csv"}.get(p.suffix.lower(), "text")


_KIND_NAMES = {"torch": "torch.save (.pth)", "html": "HTML", "json": "JSON", "jsonl": "JSON Lines", "csv": "CSV",
               "png": "PNG", "text": "text"}


def _set_files(path: str | Path) -> list[Path]:
    """The files an input path stands for: itself and, for a NeuronSet-like pair, both its
    ``.safetensors`` and its ``.json``."""
    p = Path(path)
    st = p.with_suffix(".safetensors") if p.suffix == ".json" else \
        p if p.suffix == ".safetensors" else p.with_name(p.name + ".safetensors")
    return [p, st, st.with_suffix(".json")]


def _same(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_file(path: str | Path, kind: str | Sequence[str], *, inputs: Iterable[Any] = (),
                      also: dict[Path, str | Sequence[str]] | None = None, suffixes: Sequence[str] | None = None,
                      or_else: str = "", flag: str = "--out", what: str = "output") -> Path:
    """Refuse, before any computation, an explicit output file ``path`` (of ``kind``: what
    :func:`file_kind` would call it; a tuple for several) that would replace

    * an input of the same command (``inputs``: paths; a NeuronSet path stands for its
      ``.safetensors`` and its ``.json``; other objects are skipped),
    * the ``.json`` sidecar of a unit set (``x.json`` beside ``x.safetensors``: a NeuronSet, a delta),
    * an existing file of another kind (a NeuronSet by a ``.pth``, a CSV by a page),

    and the same for the files written beside it (``also``: path -> kind). ``suffixes``: the
    only suffixes ``path`` may have (a page: ``.html``; ``or_else`` says what else the command
    accepts). Returns ``path``."""
    p = check_output_path(path, what)
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {p}: the {what} is written only to a {' or '.join(suffixes)} name{or_else}, not to "
                         f"{'a ' + p.suffix + ' file' if p.suffix else 'a name without one'}; e.g. {flag} "
                         f"{p.with_suffix(suffixes[0]) if p.suffix else p.with_name(p.name + suffixes[0])}")
    given = [Path(x) for x in inputs if isinstance(x, (str, Path))]
    for f, want in [(p, kind), *((Path(k), v) for k, v in (also or {}).items())]:
        wants = (want,) if isinstance(want, str) else tuple(want)
        beside = "" if f == p else " (written beside it)"
        for source in given:
            hit = next((x for x in _set_files(source) if _same(f, x)), None)
            if hit is not None:
                part = f"the input {source}" if hit == source else f"{hit}, part of the input {source}"
                raise ValueError(f"{flag} {p}: writing {f}{beside} would replace {part}; choose another output name")
        if not f.exists():
            continue
        if f.is_dir():
            raise ValueError(f"{flag} {p}: {f}{beside} is a folder; choose another output name")
        unit = f.with_suffix(".safetensors")
        if f.suffix == ".json" and unit != f and unit.is_file():
            raise ValueError(f"{flag} {p}: writing {f}{beside} would replace the metadata of the set {unit} (its .json "
                             "sidecar), leaving that set unreadable; choose another output name")
        have = file_kind(f)
        if have not in (*wants, "empty"):
            want_name = _KIND_NAMES.get(wants[0], wants[0])
            raise ValueError(f"{flag} {p}: {f}{beside} is an existing {_KIND_NAMES.get(have, have)} file, not "
                             f"{'an' if want_name[0] in 'AEHIOU' else 'a'} {want_name} file like this {what}: writing "
                             "it would replace a file of another kind; choose another output name")
    return p


@contextlib.contextmanager
def output_lock(path: str | Path) -> Iterator[Path]:
    """Hold a lock on an output path (a folder or a file) for the whole run, so that a second
    run into the same output fails at once, saying which process holds it, instead of both
    writing and one silently winning. The lock is an ``flock`` on ``.<name>.mwork-lock`` beside
    the output: the system releases it when the process ends, even after ``kill -9``; a clean
    exit also removes the file (a process that opened it meanwhile sees it gone and opens anew)."""
    import fcntl
    import socket
    import sys
    import time

    target = check_output_path(path)
    lock = target.parent / f".{target.name}.mwork-lock"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(lock, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise ValueError(f"{target} is being written by {holder}; wait for it to finish or choose another "
                                 "output") from None
            try:
                current = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            handle.close()  # its holder removed it on release: lock the file there now
    except OSError as err:
        raise cannot_write(lock, err) from None
    try:
        with contextlib.suppress(OSError):  # who holds it, for the message of a second run; not needed to lock
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv)[:200]}) since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
            handle.flush()
        yield target
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # still locked: nobody else can hold this file now
        handle.close()  # releases the lock
