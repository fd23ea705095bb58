#!/usr/bin/env python
"""Cut the small Language Confusion Benchmark subset the tests read (``tests/data/lcb``) from the
benchmark's released completions.

    python scripts/make_lcb_test_data.py LCB_FOLDER tests/data/lcb

``LCB_FOLDER`` holds the benchmark's files as released (for-ai/language-confusion): ``LICENSE``
and ``outputs/<model>.csv`` (``id,model,completion,task,source,language``). For each of the two
released files the tests use (``command-r``, ``llama-2-instruct``) the subset keeps, in file order,
the first ``--per-cell`` (2) rows of every (task, source, language) whose language is one of
``--langs`` (ar fr ja ru zh: a right-to-left script, a Latin one, the two segmented ones, Cyrillic;
the word check's languages and one without it). Rows are written as read (the same columns and
values, CSV with CRLF line ends as released); the same command writes the same bytes. The licence
file is copied beside them; tests/data/README.md describes the subset.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
from collections import Counter
from pathlib import Path

FILES = ("command-r", "llama-2-instruct")
LANGS = ("ar", "fr", "ja", "ru", "zh")
PER_CELL = 2


def cut(text: str, langs: tuple[str, ...], per_cell: int) -> str:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=reader.fieldnames, lineterminator="\r\n")
    writer.writeheader()
    seen: Counter = Counter()
    for row in reader:
        key = (row["task"], row["source"], row["language"])
        if row["language"] in langs and seen[key] < per_cell:
            seen[key] += 1
            writer.writerow(row)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lcb", type=Path, help="the benchmark's folder (LICENSE, outputs/<model>.csv)")
    parser.add_argument("out", type=Path, help="where the subset goes (tests/data/lcb)")
    parser.add_argument("--langs", default=",".join(LANGS), help="languages kept (comma-separated)")
    parser.add_argument("--per-cell", type=int, default=PER_CELL, help="rows kept per (task, source, language)")
    args = parser.parse_args()
    langs = tuple(x for x in args.langs.split(",") if x)
    (args.out / "outputs").mkdir(parents=True, exist_ok=True)
    for name in FILES:
        text = (args.lcb / "outputs" / f"{name}.csv").read_text(encoding="utf-8")
        (args.out / "outputs" / f"{name}.csv").write_bytes(cut(text, langs, args.per_cell).encode("utf-8"))
    shutil.copyfile(args.lcb / "LICENSE", args.out / "LICENSE")


if __name__ == "__main__":
    main()
