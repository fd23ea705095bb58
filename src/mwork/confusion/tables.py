"""The benchmark's CSV files, read and written in one place: completions in the released format
(``id,model,completion,task,source,language``), the test sets' prompt files, and ``lcb.csv`` /
``lcb.json`` (the scores). The rules that score completions are :mod:`mwork.confusion.lcb`'s."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

#: the columns a completions file must have (the released files also have id, model and task)
REQUIRED_COLUMNS: tuple[str, ...] = ("completion", "source", "language")
#: the released completions' columns, in order (``mwork confusion run`` adds ``lever`` after them)
RELEASED_COLUMNS: tuple[str, ...] = ("id", "model", "completion", "task", "source", "language")
#: the columns of lcb.csv, in order
COLUMNS: tuple[str, ...] = ("model", "task", "source", "language", "cells", "n", "scored", "line_pass",
                            "word_pass", "lpr", "wpr", "lcpr")

# ---- the files of a results folder (``mwork confusion score`` / ``run``), for the writers and the
# report's section (``mwork.report.kinds.confusion``)

LCB_CSV, LCB_JSON = "lcb.csv", "lcb.json"
#: a run's completions (the released format, then EXTRA_COLUMNS), sample lines and per-language bars
COMPLETIONS_CSV, SAMPLES_JSONL, LCB_PNG = "completions.csv", "samples.jsonl", "lcb.png"
#: the fluency measures a run adds to lcb.csv (``mwork.confusion.results``)
FLUENCY: tuple[str, ...] = ("distinct2", "ppl")
#: the columns of a run's lcb.csv: the scorer's, ``lever`` after ``language``, fluency last
RUN_COLUMNS: tuple[str, ...] = (*COLUMNS[:4], "lever", *COLUMNS[4:], *FLUENCY)
#: completions.csv's columns after the released ones
EXTRA_COLUMNS: tuple[str, ...] = ("lever", "prompt_number", "new_tokens", "distinct2", "nll")
#: what the report's section needs of lcb.csv, and reads as numbers
LCB_REQUIRED: tuple[str, ...] = ("task", "source", "language", "n", "lpr", "wpr")
LCB_NUMERIC: tuple[str, ...] = ("n", "scored", "lpr", "wpr", "lcpr", *FLUENCY)
#: the keys of a samples.jsonl record
SAMPLE_KEYS: tuple[str, ...] = ("lever", "task", "source", "language", "prompt_number", "lines", "confused")


def read_csv_rows(path: str | Path, required: Sequence[str], what: str, remedy: str) -> list[dict[str, str]]:
    """The rows of a UTF-8 CSV with a header holding ``required`` (header names stripped; a
    missing value reads as the empty string). Errors name the file and say ``remedy``; ``what``:
    what the file is, in words (``the completions file``)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise FileNotFoundError(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; {what} must be a UTF-8 CSV") from None
    limit = csv.field_size_limit()
    csv.field_size_limit(1 << 30)  # completions and prompts may be long; the default 128 KiB would fail them
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            found = ", ".join(header) if header else "no header"
            raise ValueError(f"{path} has no {', '.join(missing)} column{'s' if len(missing) > 1 else ''} (found: "
                             f"{found}); {remedy}")
        reader.fieldnames = header
        rows = [{k: ("" if v is None else v) for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as err:
        raise ValueError(f"{path} is not a readable CSV (line {reader.line_num}: {err})") from None
    finally:
        csv.field_size_limit(limit)
    return rows


def read_completions(path: str | Path) -> list[dict]:
    """The rows of a completions CSV in the released format (``id,model,completion,task,source,
    language``; ``completion``, ``source`` and ``language`` are required). A missing completion
    value reads as the empty string."""
    rows = read_csv_rows(path, REQUIRED_COLUMNS, "the completions file",
                         "a completions file is a CSV with the columns completion, source and language (the released "
                         "files: id,model,completion,task,source,language)")
    if not rows:
        raise ValueError(f"{path} has a header but no completions")
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def table_csv(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    """Rows as CSV text (``\\n`` line ends; None empty, floats in full: ``repr``)."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buf.getvalue()


def lcb_csv(rows: Sequence[Mapping], columns: Sequence[str] = COLUMNS) -> str:
    """The text of lcb.csv."""
    return table_csv(rows, columns)


def write_result(result: Any, out: str | Path, columns: Sequence[str] = COLUMNS) -> tuple[Path, Path]:
    """``OUT/lcb.csv`` (``result.rows``) and ``OUT/lcb.json`` (``result.metadata`` and
    ``result.overall()``: settings, model file, word list, overall rates), each written atomically."""
    from mwork.files import make_folder, write_json, write_text

    folder = make_folder(out)
    csv_path, json_path = folder / "lcb.csv", folder / "lcb.json"
    write_text(csv_path, lcb_csv(result.rows, columns))
    write_json(json_path, {**result.metadata, "overall": result.overall()}, indent=2, ensure_ascii=False)
    return csv_path, json_path


def completions_csv(rows: Sequence[Mapping], extra: Sequence[str] = ()) -> str:
    """Completions in the released format (``id,model,completion,task,source,language``, then the
    ``extra`` columns), with CRLF line ends as released, so that the benchmark's own
    ``compute_metrics.py`` reads it as it reads the released files."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\r\n")
    columns = [*RELEASED_COLUMNS, *extra]
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buf.getvalue()
