"""Language-specific neurons: each language's set minus what it shares with the others.

Rules (recorded in each result's ``meta["specific"]``):

* ``shared`` (default, the reference code): a language's set minus the neurons in the sets
  of *all* analysed languages.
* ``english``: a language's set minus English's set. English is the reference here, so its
  own result is empty by definition.
* ``others``: a language's set minus the union of all the other languages' sets (strictest).
"""

from __future__ import annotations

from functools import reduce
from typing import Sequence

from mwork.neurons.neuronset import NeuronSet

RULES = ("shared", "english", "others")
DESCRIPTIONS = {
    "shared": "minus the neurons shared by all analysed languages (the reference code's rule)",
    "english": "minus the English set (English itself: empty by definition)",
    "others": "minus the union of the other languages' sets",
}


def _label(ns: NeuronSet, i: int) -> str:
    return str(ns.meta.get("language") or ns.meta.get("name") or f"set {i}")


def language_specific(sets: Sequence[NeuronSet], rule: str = "shared", english: str = "en") -> list[NeuronSet]:
    """The language-specific set of each of ``sets`` (same order), by ``rule`` (see RULES).

    All sets must come from the same model (same shape and, where recorded, model id).
    ``english``: the language code that marks the English set for ``rule="english"``.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; use one of {', '.join(RULES)}")
    if len(sets) < 2:
        raise ValueError("language-specific sets need at least two languages' NeuronSets")
    labels = [_label(ns, i) for i, ns in enumerate(sets)]
    ids = {str(ns.meta["model_id"]) for ns in sets if ns.meta.get("model_id")}
    if len(ids) > 1:
        raise ValueError(f"the NeuronSets were detected on different models ({', '.join(sorted(ids))}); "
                         "compare sets of one model")
    shared = reduce(lambda a, b: a & b, sets)  # also checks that every shape agrees
    if rule == "english":
        english_sets = [i for i, lab in enumerate(labels) if lab == english]
        if len(english_sets) != 1:
            raise ValueError(f"rule 'english' needs exactly one set with language {english!r}; languages: "
                             f"{', '.join(labels)} (use --english CODE to name it)")
        reference = sets[english_sets[0]]

    results = []
    for i, ns in enumerate(sets):
        if rule == "shared":
            removed = shared
        elif rule == "english":
            removed = reference
        else:
            removed = reduce(lambda a, b: a | b, [s for j, s in enumerate(sets) if j != i])
        spec = ns - removed
        meta = dict(ns.meta)
        meta["name"] = f"{labels[i]}-specific"
        meta["specific"] = {
            "rule": rule,
            "description": DESCRIPTIONS[rule],
            "languages": labels,
            "base_count": ns.count(),
            "removed": ns.count() - spec.count(),
            **({"english": english} if rule == "english" else {}),
        }
        results.append(NeuronSet(spec.masks, meta, ns.extra))
    return results
