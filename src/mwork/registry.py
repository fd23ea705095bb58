"""Things found by name: one registry behind adapters, training and detection methods, tasks and
results kinds, so each refuses duplicates, names the known entries and loads plugins the same way.

::

    METHODS: Registry[type[Method]] = Registry("training method", "mwork.training_methods",
                                               on_entry_point=_register_plugin)
    METHODS.register("neurons", NeuronsMethod)
    METHODS.get("nope")   # UnknownName: unknown training method 'nope'; known: neurons

A name is registered once: registering another object under a taken name is refused unless
``replace=True`` (the same object again is fine: a decorator run twice, a module imported again).
Packages add entries through the registry's entry point group (``[project.entry-points."GROUP"]``):
the group is read once, the first time a name is asked for that is not registered or the names
are listed, so ``import mwork`` never imports plugins. A name registered in code wins over an
entry point's; an entry point that fails to load is reported with its name, every time, until it
is fixed or uninstalled.

A registry's own entries (mwork's built-in tasks, results kinds ...) come from ``builtins``: a
function run once, before the registry is first read or written, so that they are registered
first and a plugin or a user that takes one of their names is refused. They register themselves
where they are defined (a ``register_*`` call or decorator at module level);
:func:`import_modules` imports every module of a package to run those registrations, so no list
of built-ins is kept by hand.
"""

from __future__ import annotations

import importlib
import importlib.metadata as _metadata
import pkgutil
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")
_MISSING: Any = object()


class UnknownName(ValueError, KeyError):
    """A name nothing is registered under: a ValueError (bad input) and a KeyError (a lookup)."""

    def __str__(self) -> str:  # KeyError would quote the sentence
        return str(self.args[0]) if self.args else ""


class BrokenEntryPoint(ImportError):
    """An installed package's entry point that cannot be loaded or registered."""


def _describe(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__qualname__


class Registry(Generic[T]):
    """Objects by name. ``what`` names the entries in messages ("training method");
    ``group`` is the entry point group read for plugins; ``on_entry_point(obj)`` registers what an
    entry point loads (default: ``obj`` under the entry point's name, unless that name is taken);
    ``unknown`` / ``duplicate`` are the messages, formatted with ``what``, ``name``, ``known``
    (the names, comma-separated) and ``old`` (what holds the name); ``builtins()`` registers the
    registry's own entries, once, before anything else reads or registers."""

    UNKNOWN = "unknown {what} {name!r}; known: {known}"
    DUPLICATE = "a {what} named {name!r} is already registered ({old}); pass replace=True to override it"

    def __init__(self, what: str, group: str | None = None, *, on_entry_point: Callable[[Any], None] | None = None,
                 unknown: str | None = None, duplicate: str | None = None,
                 builtins: Callable[[], None] | None = None) -> None:
        self.what = what
        self.group = group
        self._on_entry_point = on_entry_point
        self._unknown = unknown or self.UNKNOWN
        self._duplicate = duplicate or self.DUPLICATE
        self._items: dict[str, T] = {}
        self._loaded = group is None
        self._loading = False
        self._builtins = builtins
        self._builtins_state = "loaded" if builtins is None else "no"

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {self.group!r}, names={list(self._items)})"

    # ---- registering ----------------------------------------------------------------------
    def register(self, name: str, obj: T, replace: bool = False) -> T:
        """Put ``obj`` under ``name``; returns ``obj``. Another object under a taken name is a
        ValueError unless ``replace=True``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} needs a non-empty name, got {name!r}")
        self.load_builtins()
        old = self._items.get(name, _MISSING)
        if old is not _MISSING and old is not obj and not replace:
            raise ValueError(self._duplicate.format(what=self.what, name=name, old=_describe(old),
                                                    known=", ".join(self._items)))
        self._items[name] = obj
        return obj

    def pop(self, name: str, default: Any = _MISSING) -> Any:
        """Remove ``name`` and return what it held (``default`` if nothing, else UnknownName):
        for tests and plugins that undo a registration."""
        self.load_builtins()
        if name in self._items:
            return self._items.pop(name)
        if default is _MISSING:
            raise self._unknown_name(name)
        return default

    def peek(self, name: str) -> T | None:
        """What ``name`` holds now, or None, without reading entry points (for registration code,
        which may run while mwork is being imported)."""
        return self._items.get(name)

    def copy(self, *, reread_entry_points: bool = False) -> "Registry[T]":
        """An independent registry with the same entries (a test's registrations end with it);
        with ``reread_entry_points`` it reads the entry point group again (a test that installs
        a plugin)."""
        self.load_builtins()
        new: Registry[T] = Registry(self.what, self.group, on_entry_point=self._on_entry_point,
                                    unknown=self._unknown, duplicate=self._duplicate)
        new._items = dict(self._items)
        new._loaded = self._loaded and not (reread_entry_points and self.group is not None)
        return new

    # ---- looking up -------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """What ``name`` holds; entry points are read if it is not registered. UnknownName (a
        ValueError) names the known entries."""
        self.load_builtins()
        if name not in self._items:
            self.load_entry_points()
        if name not in self._items:
            raise self._unknown_name(name)
        return self._items[name]

    __getitem__ = get

    def names(self) -> list[str]:
        """Every registered name (entry points included), in registration order."""
        self.load_entry_points()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        self.load_builtins()
        if name not in self._items:
            self.load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def values(self) -> list[T]:
        self.load_entry_points()
        return list(self._items.values())

    def items(self) -> list[tuple[str, T]]:
        self.load_entry_points()
        return list(self._items.items())

    def _unknown_name(self, name: Any) -> UnknownName:
        return UnknownName(self._unknown.format(what=self.what, name=name, known=", ".join(self._items) or "none"))

    # ---- built-ins and plugins ----------------------------------------------------------------
    def load_builtins(self) -> None:
        """Run ``builtins`` (once: again only after a failure; a registration it makes meanwhile
        does not run it again)."""
        if self._builtins_state != "no":
            return
        self._builtins_state = "loading"
        try:
            self._builtins()  # type: ignore[misc]
        except BaseException:
            self._builtins_state = "no"
            raise
        self._builtins_state = "loaded"

    def load_entry_points(self) -> None:
        """Read the entry point group (once: again only after a failure). Every entry point that
        fails to load or register is reported by name in one BrokenEntryPoint."""
        self.load_builtins()
        if self._loaded or self._loading:
            return
        self._loading = True
        broken = []
        try:
            for ep in _metadata.entry_points(group=self.group):
                try:
                    obj = ep.load()
                    if self._on_entry_point is not None:
                        self._on_entry_point(obj)
                    elif ep.name not in self._items:
                        self.register(ep.name, obj)
                except Exception as err:  # noqa: BLE001 - reported below, with the entry point's name
                    dist = getattr(getattr(ep, "dist", None), "name", None)
                    where = f"from the package {dist!r}, " if dist else ""
                    broken.append((f"{ep.name!r} = {ep.value!r} ({where}group {self.group!r}): "
                                   f"{type(err).__name__}: {err}", err))
        finally:
            self._loading = False
        if broken:
            lines = "; ".join(text for text, _ in broken)
            raise BrokenEntryPoint(f"cannot load the {self.what} entry point {lines}. Fix or uninstall the package "
                                   "that declares it") from broken[0][1]
        self._loaded = True


def import_modules(package: str) -> list[str]:
    """Import every module of ``package`` (not its sub-packages' modules), in name order, so that
    the registrations they make where their entries are defined run; returns their names. A
    registry's ``builtins`` for a package of one module per entry (``mwork.report.kinds``)."""
    pkg = importlib.import_module(package)
    names = sorted(info.name for info in pkgutil.iter_modules(pkg.__path__) if not info.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names
