"""Detection methods by name: ``register_detection_method`` (a decorator on the method's class,
where it is defined), ``get_detection_method``, ``detection_methods``.

mwork's own methods (``plnd.py``, ``lape.py``, ``ap.py``) register themselves with the decorator;
the package imports them in that order, so they come first. Packages add methods through the
entry point group ``mwork.detection_methods`` (a ``DetectionMethod`` subclass, or a module that
registers its own). This module imports only the interface (``base``), so the methods and the
runner (``run.py``) use it without importing the package back.
"""

from __future__ import annotations

import functools
from typing import Any

from mwork.neurons.methods.base import DetectionMethod
from mwork.registry import Registry

ENTRY_POINT_GROUP = "mwork.detection_methods"


def _register_plugin(obj: Any) -> None:
    """An entry point's object: a DetectionMethod subclass is registered under its name (unless
    the name is taken); a module registers its methods when it is imported."""
    if isinstance(obj, type) and issubclass(obj, DetectionMethod) and METHODS.peek(obj.name) is None:
        register_detection_method(obj)


METHODS: Registry[type[DetectionMethod]] = Registry(
    "detection method", ENTRY_POINT_GROUP, on_entry_point=_register_plugin,
    unknown="unknown {what} {name!r}; methods: {known}",
    duplicate="a {what} named {name!r} is registered already ({old}); pass replace=True")


def register_detection_method(cls: type[DetectionMethod] | None = None, *, replace: bool = False) -> Any:
    """Register a :class:`DetectionMethod` subclass under its ``name``; usable as a decorator."""

    def add(klass: type[DetectionMethod]) -> type[DetectionMethod]:
        if not (isinstance(klass, type) and issubclass(klass, DetectionMethod)):
            raise TypeError(f"{klass!r} is not a DetectionMethod subclass")
        if not klass.name or not klass.name.isidentifier():
            raise ValueError(f"{klass.__name__}.name must be a short identifier (e.g. 'lape'), got {klass.name!r}")
        return METHODS.register(klass.name, klass, replace=replace)

    return add if cls is None else add(cls)


def detection_methods() -> list[str]:
    """The registered method names (built-ins first)."""
    return METHODS.names()


def get_detection_method(name: str) -> DetectionMethod:
    """The registered method ``name`` (one instance per class); a clear error listing the known ones."""
    return _instance(METHODS.get(name))


@functools.cache
def _instance(cls: type[DetectionMethod]) -> DetectionMethod:
    return cls()
