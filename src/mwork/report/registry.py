"""Kinds of results folders: each one recognises its folder and renders its section.

A kind is one :class:`ResultsKind` registered with :func:`register_results_kind`::

    register_results_kind(ResultsKind(
        name="probe", title="Language probe", order=50,
        recognise=lambda folder: folder.has("probe.csv"),
        render=render_probe,             # (section: Section) -> None, see mwork.report.section
    ))

The page walks the results folder (the root first, then every sub-folder in name order); the
first kind, by ``order``, whose ``recognise`` accepts a folder renders it, and with
``claims_subfolders`` also owns what lies below it (the neurons stage's ``specific/``). A
folder no kind recognises still gets a section from the generic kind (its tables, plots and
links), so nothing a run wrote is left off the page.

mwork's own kinds are the modules of :mod:`mwork.report.kinds`, each registering its kinds where
they are defined; the registry imports them (all of them, no list kept) the first time it is
read or written. A package adds kinds through the entry point group ``mwork.report_kinds``: an
entry point naming a ``ResultsKind`` registers it, one naming a module imports it (it registers
its kinds itself). A name is registered once: another kind under a taken name is refused unless
``replace=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Callable

from mwork.registry import Registry, import_modules

if TYPE_CHECKING:
    from mwork.report.section import Section

# never shown or linked: the page itself, the stage markers, temporary and hidden files
HIDDEN_NAMES = frozenset({"index.html", "stage.json"})


@dataclass(frozen=True)
class FolderView:
    """What a kind sees of a folder: its path, its file names (at the root, without the copies
    of files shown below it) and its sub-folder names."""

    path: Path
    rel: str  # relative to the results root, "." for the root
    names: frozenset[str]
    dirs: frozenset[str]

    def has(self, *names: str) -> bool:
        """Whether every one of ``names`` is a file here."""
        return all(n in self.names for n in names)

    def any(self, *names: str) -> bool:
        return any(n in self.names for n in names)

    def with_suffix(self, suffix: str) -> list[str]:
        return sorted(n for n in self.names if n.endswith(suffix))


@dataclass(frozen=True)
class ResultsKind:
    """One kind of results folder.

    ``name``: short id (the section's id when the folder is the results root); ``title``: the
    section's heading; ``recognise(folder)``: does this folder hold this kind's results (look at
    file names, not contents, so a damaged file is still recognised and then reported);
    ``render(section)``: fill the section (figures, tables, findings, warnings); ``order``: where
    on the page (and which kind is asked first); ``claims_subfolders``: its sub-folders are part
    of it."""

    name: str
    title: str
    recognise: Callable[[FolderView], bool]
    render: Callable[["Section"], None]
    order: int = 50
    claims_subfolders: bool = False


ENTRY_POINT_GROUP = "mwork.report_kinds"
BUILT_IN_PACKAGE = "mwork.report.kinds"


def _register_plugin(obj: object) -> None:
    """An entry point's object: a ResultsKind is registered under its name (refused if taken); a
    module registered its kinds when it was imported."""
    if isinstance(obj, ResultsKind):
        register_results_kind(obj)
    elif not isinstance(obj, ModuleType):
        raise TypeError(f"a {ENTRY_POINT_GROUP} entry point names a ResultsKind or a module, got "
                        f"{type(obj).__name__}")


_KINDS: Registry[ResultsKind] = Registry("results kind", ENTRY_POINT_GROUP, on_entry_point=_register_plugin,
                                         builtins=lambda: import_modules(BUILT_IN_PACKAGE))


def register_results_kind(kind: ResultsKind, replace: bool = False) -> ResultsKind:
    """Add a kind of results folder; returns it. A kind under a taken name (mwork's own included)
    is refused unless ``replace=True``."""
    if not isinstance(kind, ResultsKind):
        raise TypeError("register_results_kind needs a ResultsKind")
    return _KINDS.register(kind.name, kind, replace=replace)


def results_kinds() -> list[ResultsKind]:
    """Every registered kind (mwork's own and the entry points'), in page order."""
    return sorted(_KINDS.values(), key=lambda k: (k.order, k.name))


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and not path.name.endswith(".tmp") and path.name not in HIDDEN_NAMES


def folder_views(root: Path) -> list[FolderView]:
    """The root and every sub-folder holding a file, as the kinds see them. Files at the root that
    are byte-for-byte copies of files below it (the demo copies its headline files up) and
    ``run.json`` (the run section) are left out of the root's view."""
    folders = [root, *sorted((p for p in root.rglob("*") if p.is_dir() and _visible(p)), key=lambda p: p.as_posix())]
    below: dict[str, list[Path]] = {}
    for p in root.rglob("*"):
        if p.is_file() and p.parent != root:
            below.setdefault(p.name, []).append(p)
    views = []
    for folder in folders:
        if any(not _visible(parent) for parent in folder.relative_to(root).parents if parent != Path(".")):
            continue
        files = [p for p in folder.iterdir() if p.is_file() and _visible(p)]
        if folder == root:
            files = [p for p in files if p.name != "run.json" and not _is_copy(p, below.get(p.name, []))]
        dirs = frozenset(p.name for p in folder.iterdir() if p.is_dir() and _visible(p))
        rel = "." if folder == root else folder.relative_to(root).as_posix()
        views.append(FolderView(folder, rel, frozenset(p.name for p in files), dirs))
    return views


def _is_copy(path: Path, candidates: list[Path]) -> bool:
    if not candidates:
        return False
    data = path.read_bytes()
    return any(c.stat().st_size == len(data) and c.read_bytes() == data for c in candidates)


def assign(root: Path) -> list[tuple[FolderView, ResultsKind]]:
    """Each results folder under ``root`` with the kind that renders it, in page order."""
    kinds = results_kinds()
    claimed: list[Path] = []
    out = []
    for view in folder_views(root):
        if any(view.path.is_relative_to(c) for c in claimed):
            continue
        if not view.names:
            continue
        kind = next((k for k in kinds if k.recognise(view)), None)
        if kind is None:
            continue
        out.append((view, kind))
        if kind.claims_subfolders:
            claimed.append(view.path)
    order = {k.name: k.order for k in kinds}
    return sorted(out, key=lambda vk: (order[vk[1].name], vk[0].rel))
