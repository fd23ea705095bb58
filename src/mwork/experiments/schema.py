"""The shape of a results folder's files, shared by the writer and the report's section.

Each results folder has one schema module (``mwork.experiments.<experiment>.schema``) naming
its files: for a CSV file the columns the writer writes (in order), the columns the report
section requires (fewer where older folders stay readable) and those it reads as numbers; for
a JSON or JSON-lines file the keys the section requires. The writer and the section import the
same objects, so the two cannot drift apart. Nothing here imports the rest of mwork."""

from __future__ import annotations

from typing import NamedTuple


class CsvFile(NamedTuple):
    """A CSV file of a results folder."""

    name: str
    columns: tuple[str, ...]  # written, in this order
    required: tuple[str, ...]  # what the report section needs to read the file
    numeric: tuple[str, ...]  # what the report section reads as numbers


class JsonFile(NamedTuple):
    """A JSON (or JSON-lines) file of a results folder: the keys the report section needs (of
    the object, or of every record)."""

    name: str
    required: tuple[str, ...]
