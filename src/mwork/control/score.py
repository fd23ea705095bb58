"""The two-axis score of a language-control setting (CLaS-Bench's: forcing and meaning, weighed
by their harmonic mean), and the choice of a setting on dev. docs/control.md has the rules and
the reasons; in short, for one row (lever, source, target, split, setting) over its items:

* **forcing** f = the share of the steered outputs whose sentence-level language
  (``mwork.sentence_langid.default_identifier``, labels compared as they are, as ``mwork steer``'s
  ``target_rate`` does) is the target; an output with no letter is ``unknown``, never the target.
* **meaning** m = ``relative_meaning(S, U)``, where S and U are the means over the row's items of
  the meaning measure (``mwork.control.meaning.PRIMARY_MEASURE``: QA F1 against the gold answer
  of either language, ``f1_any``; for text, whether the output singles out its own item's
  sentence of either language among the item set's, ``match``) of the steered outputs and of the
  unsteered model's outputs on the same items: m = min(1, S / U) when U > 0; when U = 0 (the unsteered model had nothing
  to keep) m = 1 if S > 0, else 0. So m = 0 whenever nothing is kept (S = 0), m is defined for
  every U, and m lies in [0, 1] as f does. The uncapped ratio S / U is kept beside it
  (``meaning_ratio``; None when U = 0).
* **score** = 2 f m / (f + m), 0 when f or m is 0.

Rows of several item sets for one setting are combined by :func:`combine_rows`: forcing pooled
over every output, meaning the mean of the item sets' meanings (each item set weighs the same,
their measures being on different scales), score the harmonic mean of those two.

Settings are chosen on dev (:func:`choose_settings`): per group of rows (default: per lever,
source and target), the setting with the best dev score; a tie goes to the smaller absolute
strength, then the smaller strength, then the other setting fields in text order; then the test
rows of the chosen settings (:func:`chosen_test_rows`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from mwork.control.items import ParallelItem
from mwork.control.meaning import MEASURES, PRIMARY_MEASURE, ReferencePool, corpus_chrf, item_measures
from mwork.sentence_langid import default_identifier
from mwork.tasks.metrics import DEFAULT_SCORING

#: the per-row grouping of :func:`choose_settings` and the fields that make a setting
DEFAULT_PER: tuple[str, ...] = ("lever", "source", "target")
DEFAULT_SETTING: tuple[str, ...] = ("layers", "positions", "strength")


def detect_languages(outputs: Iterable[str], identifier: Any = None) -> list[str]:
    """The sentence-level language of each output (``identifier.label``; default mwork's,
    ``mwork.sentence_langid.default_identifier``)."""
    identifier = identifier if identifier is not None else default_identifier()
    return [identifier.label(text) for text in outputs]


def forcing(languages: Sequence[str], target: str) -> float:
    """The share of ``languages`` (one detected label per output) equal to ``target``."""
    if not languages:
        raise ValueError("no outputs: forcing is not defined")
    return sum(label == target for label in languages) / len(languages)


def _check_measure(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value}")
    return value


def meaning_ratio(steered: float, unsteered: float) -> float | None:
    """S / U uncapped (module docstring); None when U = 0."""
    steered, unsteered = _check_measure(steered, "the steered measure"), _check_measure(unsteered, "the unsteered measure")
    return steered / unsteered if unsteered > 0 else None


def relative_meaning(steered: float, unsteered: float) -> float:
    """Meaning kept, in [0, 1], from the mean measure of the steered outputs (S) and of the
    unsteered model's outputs on the same items (U): 0 when S = 0; min(1, S / U) when U > 0;
    1 when U = 0 < S."""
    ratio = meaning_ratio(steered, unsteered)
    if steered == 0:
        return 0.0
    return 1.0 if ratio is None else min(1.0, ratio)


def harmonic_score(forcing: float, meaning: float) -> float:
    """2 f m / (f + m); 0 when either is 0. Both must be in [0, 1]."""
    for name, value in (("forcing", forcing), ("meaning", meaning)):
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    if forcing == 0 or meaning == 0:
        return 0.0
    return 2.0 * forcing * meaning / (forcing + meaning)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def measure_items(items: Sequence[ParallelItem], outputs: Sequence[str], *, scoring: str = DEFAULT_SCORING,
                  pool: ReferencePool | None = None) -> list[dict[str, float]]:
    """:func:`mwork.control.meaning.item_measures` of each output (aligned with ``items``); text
    items compete in ``pool`` (None: a pool of ``items`` themselves)."""
    if len(items) != len(outputs):
        raise ValueError(f"{len(items)} items but {len(outputs)} outputs")
    if pool is None and items and items[0].kind == "text":
        pool = ReferencePool.of(items)
    return [item_measures(item, out, scoring=scoring, pool=pool) for item, out in zip(items, outputs)]


@dataclass(frozen=True)
class Fluency:
    """A row's fluency, measured with the model elsewhere: ``distinct_2`` per steered output (None
    where an output has under two tokens) and the unsteered model's ``perplexity`` of the steered
    outputs (one number)."""

    distinct_2: Sequence[float | None] | None = None
    perplexity: float | None = None


@dataclass(frozen=True)
class Judged:
    """A judge model's relevance of each steered and each unsteered output, in [0, 1]
    (``mwork.experiments.control.judge``); ``primary``: the judge is the meaning measure."""

    steered: Sequence[float]
    unsteered: Sequence[float]
    primary: bool = False


def score_row(items: Sequence[ParallelItem], steered: Sequence[str], unsteered: Sequence[str],
              languages: Sequence[str] | None = None, *, scoring: str = DEFAULT_SCORING,
              fluency: Fluency | None = None, pool: ReferencePool | None = None,
              judged: Judged | None = None) -> dict[str, Any]:
    """The measures of one row: ``items`` (one item set, one source and target), the steered
    outputs, the unsteered model's outputs and the steered outputs' detected languages, each
    aligned with ``items`` (``languages`` None: detected here, :func:`detect_languages`); text
    items' ``match`` among ``pool`` (None: among ``items``).

    Returns ``n``, ``item_set``, ``kind``, ``measure`` (the meaning measure's name), ``forcing``,
    ``meaning``, ``score``, ``meaning_ratio``, ``steered`` / ``unsteered`` (the two means of the
    meaning measure), every measure's mean as ``<measure>`` and ``<measure>_unsteered`` (QA:
    ``f1_any``, ``f1``, ``exact``, ``f1_source``, ``exact_source``, with ``meaning_source``, the
    relative rule applied to ``f1_source``; text: ``match``, ``match_target``, ``match_source``,
    ``chrf``, ``chrf_source`` and the corpus chrF ``corpus_chrf``); with ``judged``, ``judge``
    and ``judge_unsteered`` (the mean relevances) and ``meaning_judge`` (the relative rule on
    them), which is the meaning when ``judged.primary`` (``measure`` is then ``judge``); and
    the fluency numbers (``fluency``): ``distinct_2`` (the mean of the per-output values given,
    None ones left out), ``perplexity`` (as given) and ``fluency`` (= ``distinct_2``)."""
    n = len(items)
    if n == 0:
        raise ValueError("no items: a row needs at least one")
    fluency = fluency or Fluency()
    for what, seq in (("steered outputs", steered), ("unsteered outputs", unsteered),
                      ("languages", languages), ("distinct_2 values", fluency.distinct_2),
                      ("judged steered outputs", judged and judged.steered),
                      ("judged unsteered outputs", judged and judged.unsteered)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{n} items but {len(seq)} {what}")
    first = items[0]
    for item in items:
        if (item.item_set, item.source, item.target) != (first.item_set, first.source, first.target):
            raise ValueError(f"a row has one item set, source and target: {item.id!r} is "
                             f"{item.item_set} {item.source}->{item.target}, {first.id!r} is "
                             f"{first.item_set} {first.source}->{first.target}")
    if languages is None:
        languages = detect_languages(steered)
    kind, measure = first.kind, PRIMARY_MEASURE[first.kind]
    if pool is None and kind == "text":
        pool = ReferencePool.of(items)
    on = measure_items(items, steered, scoring=scoring, pool=pool)
    off = measure_items(items, unsteered, scoring=scoring, pool=pool)
    means = {m: _mean([r[m] for r in on]) for m in MEASURES[kind]}
    base = {m: _mean([r[m] for r in off]) for m in MEASURES[kind]}
    if judged is not None:
        for values in (judged.steered, judged.unsteered):
            for v in values:
                if not 0.0 <= float(v) <= 1.0:
                    raise ValueError(f"a judge's relevance must be in [0, 1], got {v!r}")
        means["judge"], base["judge"] = _mean([float(v) for v in judged.steered]), _mean(
            [float(v) for v in judged.unsteered])
        if judged.primary:
            measure = "judge"
    f = forcing(languages, first.target)
    m = relative_meaning(means[measure], base[measure])
    row: dict[str, Any] = {
        "n": n, "item_set": first.item_set, "kind": kind, "measure": measure,
        "forcing": f, "meaning": m, "score": harmonic_score(f, m),
        "meaning_ratio": meaning_ratio(means[measure], base[measure]),
        "steered": means[measure], "unsteered": base[measure],
    }
    for name in (*MEASURES[kind], *(("judge",) if judged is not None else ())):
        row[name], row[f"{name}_unsteered"] = means[name], base[name]
    if judged is not None:
        row["meaning_judge"] = relative_meaning(means["judge"], base["judge"])
    if kind == "qa":
        row["meaning_source"] = relative_meaning(means["f1_source"], base["f1_source"])
    else:
        refs = [item.references[0] for item in items]
        row["corpus_chrf"], row["corpus_chrf_unsteered"] = corpus_chrf(steered, refs), corpus_chrf(unsteered, refs)
    given = [float(d) for d in (fluency.distinct_2 or ()) if d is not None]
    row["distinct_2"] = _mean(given) if given else None
    row["perplexity"] = fluency.perplexity
    row["fluency"] = row["distinct_2"]
    return row


def combine_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One setting's rows of several item sets as one (module docstring): ``n`` summed,
    ``forcing`` pooled over the outputs (weighted by ``n``), ``meaning`` the unweighted mean of
    the rows' meanings, ``score`` their harmonic mean, ``fluency`` / ``distinct_2`` the
    ``n``-weighted mean of the rows that have one, ``item_set`` the sets joined by ``+``."""
    if not rows:
        raise ValueError("no rows to combine")
    n = sum(int(r["n"]) for r in rows)
    f = sum(float(r["forcing"]) * int(r["n"]) for r in rows) / n
    m = _mean([float(r["meaning"]) for r in rows])
    fluent = [(float(r["distinct_2"]), int(r["n"])) for r in rows if r.get("distinct_2") is not None]
    d2 = sum(v * k for v, k in fluent) / sum(k for _, k in fluent) if fluent else None
    return {"n": n, "item_set": "+".join(str(r["item_set"]) for r in rows), "forcing": f, "meaning": m,
            "score": harmonic_score(f, m), "distinct_2": d2, "fluency": d2}


# ---- choosing a setting on dev --------------------------------------------------------------


def _canon(value: Any) -> Any:
    """A setting field's value, the same whether it came from Python or from a CSV cell:
    None for None / "", a float for a number, else its text."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _score(row: Mapping[str, Any]) -> float | None:
    try:
        value = float(row["score"])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _order(setting: tuple[Any, ...], names: Sequence[str], strength: str) -> tuple[Any, ...]:
    values = dict(zip(names, setting))
    s = values.get(strength)
    s = 0.0 if not isinstance(s, float) else s  # no strength (a prompt): no intervention
    rest = tuple("" if values[k] is None else str(values[k]) for k in names if k != strength)
    return (abs(s), s, rest)


def choose_settings(rows: Iterable[Mapping[str, Any]], *, per: Sequence[str] = DEFAULT_PER,
                    setting: Sequence[str] = DEFAULT_SETTING, strength: str = "strength") -> list[dict[str, Any]]:
    """The setting chosen on dev for each group of rows (``per``: the fields that make a group;
    ``("lever",)`` chooses one setting per lever over every source and target).

    Only rows with ``split == "dev"`` and a finite ``score`` count. A setting's dev score is the
    mean ``score`` of its dev rows in the group (one row when ``per`` names the pair); the best
    wins, a tie goes to the smaller ``|strength|``, then the smaller strength (a missing strength
    counts as 0), then the other ``setting`` fields in text order. Returns one dict per group, in
    the order groups first appear: the ``per`` fields, the ``setting`` fields (as in the rows),
    ``dev_score`` and ``dev_rows`` (how many dev rows it is the mean of)."""
    groups: dict[tuple[Any, ...], dict[tuple[Any, ...], list[tuple[float, Mapping[str, Any]]]]] = {}
    for row in rows:
        value = _score(row)
        if row.get("split") != "dev" or value is None:
            continue
        group = tuple(_canon(row.get(k)) for k in per)
        key = tuple(_canon(row.get(k)) for k in setting)
        groups.setdefault(group, {}).setdefault(key, []).append((value, row))
    choices = []
    for group, settings in groups.items():
        scored = {key: _mean([v for v, _ in found]) for key, found in settings.items()}
        best = min(scored, key=lambda k: (-scored[k], _order(k, setting, strength)))
        example = settings[best][0][1]
        choices.append({**{k: example.get(k) for k in per}, **{k: example.get(k) for k in setting},
                        "dev_score": scored[best], "dev_rows": len(settings[best])})
    return choices


def chosen_test_rows(rows: Iterable[Mapping[str, Any]], choices: Sequence[Mapping[str, Any]] | None = None, *,
                     per: Sequence[str] = DEFAULT_PER, setting: Sequence[str] = DEFAULT_SETTING,
                     strength: str = "strength", strict: bool = True) -> list[dict[str, Any]]:
    """The ``test`` rows of the settings chosen on dev (``choices``: from :func:`choose_settings`
    with the same ``per`` and ``setting``; None: chosen here), each with the choice's ``dev_score``
    added, in the order of ``choices``. ``strict``: a choice without a test row is an error (else
    left out)."""
    rows = list(rows)
    if choices is None:
        choices = choose_settings(rows, per=per, setting=setting, strength=strength)
    test: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("split") == "test":
            test.setdefault(tuple(_canon(row.get(k)) for k in (*per, *setting)), []).append(row)
    out = []
    for choice in choices:
        found = test.get(tuple(_canon(choice.get(k)) for k in (*per, *setting)), [])
        if not found and strict:
            raise ValueError("no test row for the setting chosen on dev: "
                             + ", ".join(f"{k}={choice.get(k)!r}" for k in (*per, *setting)))
        out.extend({**row, "dev_score": choice["dev_score"]} for row in found)
    return out
