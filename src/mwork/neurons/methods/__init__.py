"""Detection methods behind one interface: ``plnd`` (the paper; the default), ``lape`` (Tang et
al. 2024), ``ap`` (activation average precision, Kojima et al. 2024) and ``monolinguality``
(Deng et al. 2025, dictionary features only); LAPE and AP score dictionary features too
(``units=``, ``mwork detect --units sae:DIR``).

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
``mwork.detection_methods``; the registry is ``mwork.neurons.methods.registry``).
"""

from __future__ import annotations

from mwork.neurons.methods.base import DetectionMethod, LanguageScores
from mwork.neurons.methods.registry import METHODS as _METHODS  # noqa: F401 - the registry itself
from mwork.neurons.methods.registry import (
    ENTRY_POINT_GROUP, detection_methods, get_detection_method, register_detection_method,
)

# the built-in methods register themselves where they are defined; imported in this order, they
# are listed in it (PLND, the default, first)
from mwork.neurons.methods.plnd import Plnd, PlndCounts
from mwork.neurons.methods.lape import Lape, LapeConfig
from mwork.neurons.methods.ap import ActivationAP, ApConfig
from mwork.neurons.methods.monolinguality import Monolinguality, MonolingualityConfig
from mwork.neurons.methods.run import LanguageSets, detect_languages, language_scores, language_sets, read_corpora

__all__ = ["ENTRY_POINT_GROUP", "ActivationAP", "ApConfig", "DetectionMethod", "LanguageScores", "LanguageSets", "Lape",
           "LapeConfig", "Monolinguality", "MonolingualityConfig", "Plnd", "PlndCounts",
           "detect_languages", "detection_methods", "get_detection_method", "language_scores", "language_sets",
           "read_corpora", "register_detection_method"]
