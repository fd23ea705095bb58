"""One section of the page, as a results kind fills it, and the page-wide context it writes into
(unique ids, embedded data, warnings, links to raw files)."""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from mwork.report import html as H
from mwork.report.read import BadResultFile, read_csv, read_json, read_jsonl
from mwork.report.registry import FolderView, ResultsKind

MAX_RAW_LINKS = 60


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "results"


@dataclass
class Finding:
    """One sentence of the findings section (HTML) and the id of the element holding its evidence."""

    html: str
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
        """A link from the page to ``path`` (relative, so the folder can move)."""
        rel = os.path.relpath(path.resolve(), self.target.parent.resolve())
        return urllib.parse.quote(Path(rel).as_posix())


class Section:
    """What a :class:`~mwork.report.registry.ResultsKind` renders into: HTML parts, findings
    and warnings. Readers (:meth:`csv`, :meth:`json`) turn an unreadable file into a visible
    warning naming it and return None."""

    def __init__(self, page: Page, view: FolderView, kind: ResultsKind, sid: str):
        self.page, self.view, self.kind, self.id = page, view, kind, sid
        self.title = kind.title
        self.parts: list[str] = []
        self.findings: list[Finding] = []
        self.warnings: list[str] = []

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
        self.warnings.append(f"<code>{H.esc(rel)}</code> {H.esc(reason)}")
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
    def add(self, html: str) -> None:
        self.parts.append(html)

    def finding(self, html: str, anchor: str | None = None) -> None:
        self.findings.append(Finding(html, anchor or self.id))

    def paper(self, html: str) -> None:
        self.add(H.paper(html))

    def image(self, name: str, alt: str, caption: str = "") -> bool:
        """Embed the PNG ``name`` of this folder, if it is there and is a PNG (else a warning)."""
        path = self.path(name)
        if not path.is_file():
            return False
        if not H.is_png(path):
            self.warn(path, "is not a PNG image; it is left out")
            return False
        self.add(H.figure(path, alt, caption))
        return True

    def table(self, head: Sequence[object], rows: Iterable[Sequence[object]], caption: str = "",
              cls: str = "") -> None:
        self.add(H.table(head, rows, caption, cls))

    def sub_id(self, name: str) -> str:
        """A unique id for an element of this section (a table a finding links to)."""
        return self.page.unique_id(f"{self.id}-{name}")

    def raw_files(self) -> str:
        """Links to every file of the folder (and, for a kind that claims them, its sub-folders)."""
        files = sorted(self.folder / n for n in self.view.names)
        if self.kind.claims_subfolders:
            files += sorted(p for p in self.folder.rglob("*") if p.is_file() and p.parent != self.folder
                            and not any(part.startswith(".") for part in p.relative_to(self.folder).parts)
                            and p.name not in ("stage.json",) and not p.name.endswith(".tmp"))
        if not files:
            return ""
        items = []
        for p in files[:MAX_RAW_LINKS]:
            size = p.stat().st_size
            items.append(f"<li><a href='{H.esc(self.page.href(p))}'>{H.esc(p.relative_to(self.folder).as_posix())}"
                         f"</a> <span class='sub'>{_size(size)}</span></li>")
        more = len(files) - MAX_RAW_LINKS
        if more > 0:
            items.append(f"<li>… and {more} more in <code>{H.esc(self.page.rel(self.folder))}</code></li>")
        return H.details(f"Raw files ({len(files)}) in <code>{H.esc(self.view.rel)}</code>",
                         f"<ul class='files'>{''.join(items)}</ul>")

    def render(self) -> str:
        warn = "".join(H.warning(w) for w in self.warnings)
        return (f"<section id='{self.id}'><h2>{H.esc(self.title)}</h2>"
                f"{warn}{''.join(self.parts)}{self.raw_files()}</section>")


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n} B"


def dump_data(data: dict[str, Any]) -> str:
    """The embedded JSON values as ``<script type='application/json'>`` elements."""
    out = []
    for sid, value in data.items():
        # "<" only occurs inside JSON strings: as \u003c no token text ("</script>", "<!--") can end or
        # confuse the script element
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
        out.append(f"<script type='application/json' id='{sid}'>{text}</script>")
    return "".join(out)
