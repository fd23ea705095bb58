"""One section of the page, as a results kind fills it, and the page-wide context it writes into
(unique ids, embedded data, warnings, links to raw files)."""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import mwork.report.html as H
from mwork.report.html import Markup, el
from mwork.report.read import BadResultFile, read_csv, read_json, read_jsonl
from mwork.report.registry import FolderView, ResultsKind

MAX_RAW_LINKS = 60


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "results"


@dataclass
class Finding:
    """One sentence of the findings section (Markup) and the id of the element holding its evidence."""

    html: Markup
    anchor: str


@dataclass
class Page:
    """Page-wide state: the results root, where the page is written (links are relative to it),
    ids in use, embedded JSON values and every warning."""

    root: Path
    target: Path
    ids: set[str] = field(default_factory=set)
    data: dict[str, Any] = field(default_factory=dict)
    warnings: list[tuple[str, str, str]] = field(default_factory=list)  # (file, reason, section id)

    def unique_id(self, base: str) -> str:
        base = slug(base)
        sid, n = base, 1
        while sid in self.ids:
            n += 1
            sid = f"{base}-{n}"
        self.ids.add(sid)
        return sid

    def add_data(self, base: str, value: Any) -> str:
        """Embed ``value`` as JSON in the page; returns the id of its ``<script>`` element."""
        sid = self.unique_id(base)
        self.data[sid] = value
        return sid

    def rel(self, path: Path) -> str:
        """``path`` as the page shows it: relative to the results root."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def href(self, path: Path) -> str:
        """A link from the page to ``path`` (relative, so the folder can move): every character
        of a file name but letters, digits and ``_.-~/`` percent-encoded, so no name (one such
        as ``javascript:alert(1)``) can read as a URL scheme."""
        rel = os.path.relpath(path.resolve(), self.target.parent.resolve())
        return H.safe_url(urllib.parse.quote(Path(rel).as_posix(), safe="/"))


class Section:
    """What a :class:`~mwork.report.registry.ResultsKind` renders into: HTML parts, findings
    and warnings. Readers (:meth:`csv`, :meth:`json`) turn an unreadable file into a visible
    warning naming it and return None. What a kind adds is built with
    :func:`mwork.report.html.el` (Markup); a plain str given to :meth:`add`, :meth:`finding`,
    :meth:`paper`, :meth:`image` or :meth:`table` is text, escaped."""

    def __init__(self, page: Page, view: FolderView, kind: ResultsKind, sid: str):
        self.page, self.view, self.kind, self.id = page, view, kind, sid
        self.title = kind.title
        self.parts: list[Markup] = []
        self.findings: list[Finding] = []
        self.warnings: list[Markup] = []

    @property
    def folder(self) -> Path:
        return self.view.path

    # ---- reading -------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.folder / name

    def exists(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def warn(self, path: Path, reason: str) -> None:
        """A visible warning in this section (and in the findings section) naming ``path``."""
        rel = self.page.rel(path)
        self.warnings.append(H.concat(el("code", rel), " ", reason))
        self.page.warnings.append((rel, reason, self.id))

    def csv(self, name: str, required: Iterable[str] = (), numeric: Iterable[str] = ()) -> list[dict[str, str]] | None:
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            return read_csv(path, required, numeric)
        except BadResultFile as err:
            self.warn(err.path, err.reason + "; it is left out of this section")
            return None

    def json(self, name: str, required: Iterable[str] = ()) -> Any:
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            return read_json(path, required)
        except BadResultFile as err:
            self.warn(err.path, err.reason + "; it is left out of this section")
            return None

    def jsonl(self, name: str, required: Iterable[str] = ()) -> list[dict[str, Any]] | None:
        """A JSON-lines file's records (None, and a warning, when it cannot be read)."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            return read_jsonl(path, required)
        except BadResultFile as err:
            self.warn(err.path, err.reason + "; it is left out of this section")
            return None

    def check_json_files(self, names: Iterable[str]) -> None:
        """Parse each JSON file (shown only as a link) so a damaged one is said, not linked silently."""
        for name in names:
            if self.exists(name):
                self.json(name)

    # ---- writing -------------------------------------------------------------------------------
    def add(self, html: object) -> None:
        """Append Markup (text is escaped)."""
        self.parts.append(H.esc(html))

    def finding(self, html: object, anchor: str | None = None) -> None:
        """A sentence of the findings section (Markup, or text, escaped)."""
        self.findings.append(Finding(H.esc(html), anchor or self.id))

    def paper(self, html: object) -> None:
        self.add(H.paper(html))

    def image(self, name: str, alt: str, caption: object = "") -> bool:
        """Embed the PNG ``name`` of this folder, if it is there and is a PNG (else a warning)."""
        path = self.path(name)
        if not path.is_file():
            return False
        if not H.is_png(path):
            self.warn(path, "is not a PNG image; it is left out")
            return False
        self.add(H.figure(path, alt, caption))
        return True

    def table(self, head: Sequence[object], rows: Iterable[Sequence[object]], caption: object = "",
              cls: str = "") -> None:
        self.add(H.table(head, rows, caption, cls))

    def sub_id(self, name: str) -> str:
        """A unique id for an element of this section (a table a finding links to)."""
        return self.page.unique_id(f"{self.id}-{name}")

    def raw_files(self) -> Markup:
        """Links to every file of the folder (and, for a kind that claims them, its sub-folders)."""
        files = sorted(self.folder / n for n in self.view.names)
        if self.kind.claims_subfolders:
            files += sorted(p for p in self.folder.rglob("*") if p.is_file() and p.parent != self.folder
                            and not any(part.startswith(".") for part in p.relative_to(self.folder).parts)
                            and p.name not in ("stage.json",) and not p.name.endswith(".tmp"))
        if not files:
            return Markup()
        items = []
        for p in files[:MAX_RAW_LINKS]:
            size = p.stat().st_size
            items.append(el("li", el("a", p.relative_to(self.folder).as_posix(), href=self.page.href(p)), " ",
                            el("span", _size(size), class_="sub")))
        more = len(files) - MAX_RAW_LINKS
        if more > 0:
            items.append(el("li", f"… and {more} more in ", el("code", self.page.rel(self.folder))))
        return H.details(H.concat(f"Raw files ({len(files)}) in ", el("code", self.view.rel)),
                         el("ul", items, class_="files"))

    def render(self) -> Markup:
        return el("section", el("h2", self.title), [H.warning(w) for w in self.warnings], self.parts,
                  self.raw_files(), id=self.id)


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n} B"


def dump_data(data: dict[str, Any]) -> Markup:
    """The embedded JSON values as ``<script type='application/json'>`` elements (their text
    escaped so that no value can end the element: :func:`mwork.report.html.script_json`)."""
    return H.concat(el("script", H.script_json(value), type="application/json", id=sid) for sid, value in data.items())
