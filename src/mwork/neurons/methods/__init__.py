"""Detection methods behind one interface: ``plnd`` (the paper; the default), ``lape`` (Tang et
al. 2024) and ``ap`` (activation average precision, Kojima et al. 2024).

Each method turns the documents of several languages into a score per neuron and language
(:class:`LanguageScores`), from which sets of any size are drawn (``scores.top(lang, n)``), and
has its own rule for its native sets. ``mwork detect --method`` and the comparison experiment
(``mwork experiment methods``) find methods here::

    from mwork.neurons.methods import detect_languages, language_scores
    sets = detect_languages(model, tok, {"en": en_docs, "fr": fr_docs}, method="lape")
    scores = language_scores(model, tok, {"en": en_docs, "fr": fr_docs}, method="ap")
    fr_500 = scores.top("fr", 500)

New methods: subclass :class:`DetectionMethod` and register it with
:func:`register_detection_method` (from your code, or a package's entry point in the group
``mwork.detection_methods``).
"""

from __future__ import annotations

import functools
from typing import Any

from mwork.neurons.methods.base import DetectionMethod, LanguageScores
from mwork.registry import Registry

ENTRY_POINT_GROUP = "mwork.detection_methods"


def _register_plugin(obj: Any) -> None:
    """An entry point's object: a DetectionMethod subclass is registered under its name (unless
    the name is taken); a module registers its methods when it is imported."""
    if isinstance(obj, type) and issubclass(obj, DetectionMethod) and _METHODS.peek(obj.name) is None:
        register_detection_method(obj)


_METHODS: Registry[type[DetectionMethod]] = Registry(
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
        return _METHODS.register(klass.name, klass, replace=replace)

    return add if cls is None else add(cls)


def detection_methods() -> list[str]:
    """The registered method names (built-ins first)."""
    return _METHODS.names()


def get_detection_method(name: str) -> DetectionMethod:
    """The registered method ``name`` (one instance per class); a clear error listing the known ones."""
    return _instance(_METHODS.get(name))


@functools.cache
def _instance(cls: type[DetectionMethod]) -> DetectionMethod:
    return cls()


from mwork.neurons.methods.ap import ActivationAP, ApConfig  # noqa: E402
from mwork.neurons.methods.lape import Lape, LapeConfig  # noqa: E402
from mwork.neurons.methods.plnd import Plnd, PlndCounts  # noqa: E402

for _cls in (Plnd, Lape, ActivationAP):
    register_detection_method(_cls)

from mwork.neurons.methods.run import detect_languages, language_scores, read_corpora  # noqa: E402

__all__ = ["ActivationAP", "ApConfig", "DetectionMethod", "LanguageScores", "Lape", "LapeConfig", "Plnd", "PlndCounts",
           "detect_languages", "detection_methods", "get_detection_method", "language_scores", "read_corpora",
           "register_detection_method"]
