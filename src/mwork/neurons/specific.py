"""Language-specific neurons: each language's set minus what it shares with the others.

Rules (recorded in each result's ``meta["specific"]``):

* ``shared`` (default, the reference code): a language's set minus the neurons in the sets
  of *all* analysed languages (:func:`minus_shared`, the one place this rule is written; PLND's
  native sets, ``mwork.neurons.methods.plnd``, use it too).
* ``english``: a language's set minus English's set. English is the reference here, so its
  own result is empty by definition.
* ``others``: a language's set minus the union of all the other languages' sets (strictest).
"""

from __future__ import annotations

from functools import reduce
from pathlib import Path
from typing import Sequence

from mwork.neurons.neuronset import NeuronSet, set_path

RULES = ("shared", "english", "others")
DESCRIPTIONS = {
    "shared": "minus the neurons shared by all analysed languages (the reference code's rule)",
    "english": "minus the English set (English itself: empty by definition)",
    "others": "minus the union of the other languages' sets",
}


def minus_shared(sets: Sequence[NeuronSet]) -> list[NeuronSet]:
    """Each of ``sets`` minus the neurons that are in every one of them (the reference code's
    rule), masks only (a kind missing from a set holds no neuron). Checks that the shapes agree."""
    shared = reduce(lambda a, b: a & b, sets)
    return [ns - shared for ns in sets]


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
    minus = minus_shared(sets)  # also checks that every shape agrees
    if rule == "english":
        english_sets = [i for i, lab in enumerate(labels) if lab == english]
        if len(english_sets) != 1:
            raise ValueError(f"rule 'english' needs exactly one set with language {english!r}; languages: "
                             f"{', '.join(labels)} (use --english CODE to name it)")
        reference = sets[english_sets[0]]

    results = []
    for i, ns in enumerate(sets):
        if rule == "shared":
            spec = minus[i]
        elif rule == "english":
            spec = ns - reference
        else:
            spec = ns - reduce(lambda a, b: a | b, [s for j, s in enumerate(sets) if j != i])
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


def save_language_specific(
    sets: Sequence[NeuronSet | str | Path], out_dir: str | Path, rule: str = "shared", english: str = "en",
) -> list[Path]:
    """Compute the language-specific sets of ``sets`` (NeuronSets or their files) and save each
    under ``out_dir``: a file's result under the file's name, a NeuronSet's under its language
    (``fr.safetensors``). Refuses, before writing anything, names that collide and an
    ``out_dir`` that would overwrite the inputs. Returns the written paths, in input order."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; use one of {', '.join(RULES)}")
    paths = [None if isinstance(s, NeuronSet) else set_path(s) for s in sets]
    for p in paths:
        if p is not None and not p.exists():
            raise FileNotFoundError(f"no NeuronSet at {p} (expected a .safetensors file written by mwork)")
    loaded = [s if isinstance(s, NeuronSet) else NeuronSet.load(p) for s, p in zip(sets, paths)]
    from mwork.files import child_path

    names = [p.name if p is not None else child_path(".", _label(ns, i), ".safetensors", "set name").name
             for i, (ns, p) in enumerate(zip(loaded, paths))]
    if len(set(names)) != len(names):
        raise ValueError(f"input file names must differ (outputs are written under the same names): {names}")
    out = Path(out_dir)
    if any(p is not None and out.resolve() == p.parent.resolve() for p in paths):
        raise ValueError("the output folder is the inputs' folder: the results would overwrite the inputs; "
                         "choose another (--out-dir)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output folder {out} is a file; choose another (--out-dir)")
    return [ns.save(out / name) for name, ns in zip(names, language_specific(loaded, rule=rule, english=english))]
