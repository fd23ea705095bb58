"""Results kind ``feature-sets``: a folder of dictionary-feature sets, what ``mwork detect --units
sae:DIR`` writes (per language ``LANG.safetensors`` + ``.json``, a Dictionary holding that
language's features, and ``top_tokens.json``). Shown like neurons: per language the features per
layer of the dictionary, and the feature explorer (the neuron explorer of the page's script) in
which choosing a language and a layer lists that language's features there, each with its top
activating tokens in every language's detection texts, the token marked inside its context.

Only the sets' ``layers`` / ``features`` / ``stat.*`` tensors and the shapes of the encoders are
read (safetensors; nothing unpickled, the weights never loaded). Set files are found by listing the
folder, so no name read from a file becomes a path; a folder without ``top_tokens.json`` (written
before it existed) still renders, with a note.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import mwork.report.html as H
from mwork.neurons.methods.top_tokens import COLUMNS, FILE as TOP_TOKENS, FORMAT, VERSION
from mwork.report.format import count, language_name, pct
from mwork.report.html import Markup, el
from mwork.report.kinds.neurons import add_explorer
from mwork.report.read import BadResultFile
from mwork.report.registry import FolderView, ResultsKind, register_results_kind
from mwork.report.section import Section

MAX_LISTED = 100  # features listed per language and layer in the explorer (the files hold all)
#: per method, the statistic a language's features are listed by, and in which order
LISTED_BY = {"monolinguality": ("monolinguality", "descending"), "ap": ("ap", "descending"),
             "lape": ("entropy", "ascending")}


def _finite(x: Any) -> float | None:
    """A number the page's JSON can hold (NaN and infinities are not JSON): else None."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _stems(folder: FolderView) -> list[str]:
    """The sets of the folder: ``X.safetensors`` with ``X.json`` beside it."""
    return [n[:-len(".safetensors")] for n in folder.with_suffix(".safetensors")
            if f"{n[:-len('.safetensors')]}.json" in folder.names]


def _is_feature_set(path: Path) -> bool:
    """A set's JSON says it holds a detection's dictionary features (a damaged one: no)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("unit_kind") == "dictionary" and "method" in meta


def _recognise(folder: FolderView) -> bool:
    stems = _stems(folder)
    if not stems:
        return False
    return folder.has(TOP_TOKENS) or any(_is_feature_set(folder.path / f"{stem}.json") for stem in stems)


def read_feature_set(path: Path) -> dict[str, Any]:
    """What the page shows of a set file: ``layers`` and ``features`` (lists), ``stats`` (name ->
    list, one value per feature) and ``widths`` (layer -> the dictionary's features there), read
    without the weights; a damaged or foreign file is a :class:`BadResultFile`."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            names = set(f.keys())
            layers, features = (f.get_tensor(n).tolist() for n in ("layers", "features"))
            stats = {n[len("stat."):]: f.get_tensor(n).tolist() for n in sorted(names) if n.startswith("stat.")}
            widths = {int(n.split(".")[0]): int(f.get_slice(n).get_shape()[-1]) for n in names
                      if n.endswith(".W_enc") and n.split(".")[0].isdigit()}
    except Exception as err:  # noqa: BLE001 - a damaged file of any sort is a sentence on the page
        raise BadResultFile(path, f"is not a readable feature set ({type(err).__name__}: {err})") from None
    if len(layers) != len(features) or any(not (isinstance(x, int) and 0 <= x < widths.get(layer, 0))
                                           for layer, x in zip(layers, features)):
        raise BadResultFile(path, "names features that its dictionary does not have")
    stats = {k: [_finite(x) for x in v] for k, v in stats.items() if isinstance(v, list) and len(v) == len(layers)}
    return {"layers": layers, "features": features, "stats": stats, "widths": widths}


def _top_tokens(sec: Section) -> tuple[dict[str, Any] | None, str]:
    """``top_tokens.json``'s features (None where there is none or it is unusable) and a note."""
    if not sec.exists(TOP_TOKENS):
        return None, (f"This folder has no {TOP_TOKENS} (mwork detect --units sae:DIR writes it): the features are "
                      "listed without their top activating tokens.")
    value = sec.json(TOP_TOKENS, required=("format", "version", "features"))
    if value is None:
        return None, f"{TOP_TOKENS} could not be read: the features are listed without their top activating tokens."
    if value.get("format") != FORMAT or value.get("version") != VERSION or not isinstance(value["features"], dict):
        sec.warn(sec.path(TOP_TOKENS), f"is not version {VERSION} of the {FORMAT} format; it is left out")
        return None, f"{TOP_TOKENS} is in another format: the features are listed without their top activating tokens."
    return value, ""


def _entries(rows: Any) -> list[list[Any]]:
    """A language's entries as the page keeps them: [token, before, after, value] (well-formed rows only)."""
    if not isinstance(rows, list):
        return []
    value = COLUMNS.index("value")
    return [[str(r[0]), str(r[1]), str(r[2]), _finite(r[value])] for r in rows
            if isinstance(r, list) and len(r) == len(COLUMNS)]


def render_features(sec: Section) -> None:
    sets: dict[str, dict[str, Any]] = {}
    metas: dict[str, dict[str, Any]] = {}
    missing: dict[str, str] = {}
    for stem in _stems(sec.view):
        meta = sec.json(f"{stem}.json", required=("unit_kind",))
        if not isinstance(meta, dict) or meta.get("unit_kind") != "dictionary":
            continue
        metas[stem] = meta
        path = sec.folder / f"{stem}.safetensors"
        if path.parent.resolve() != sec.folder.resolve():  # never outside the folder
            continue
        try:
            sets[stem] = read_feature_set(path)
        except BadResultFile as err:
            sec.warn(err.path, err.reason + "; its features are not listed")
            missing[stem] = "its set file could not be read"
    names = list(metas)
    if not names:
        return
    first = metas[names[0]]
    widths: dict[int, int] = {}
    for s in sets.values():
        widths.update(s["widths"])
    layers = first.get("activations") if isinstance(first.get("activations"), dict) else {}  # the dictionary's layers
    rows = sorted(widths) or sorted({int(k) for k in layers if str(k).isdigit()})
    total = sum(widths.values())
    method = str(first.get("method", "?"))
    sec.add(el("p", Markup("Features of a sparse dictionary ({} features at {}, layer{} {}) chosen per language by "
                           "{} on {}{}.").format(
        count(total) if total else "?", first.get("site", "?"), "s" if len(rows) != 1 else "",
        ", ".join(map(str, rows)) or "?", method, first.get("model_id", "the model"),
        Markup(": {}").format(first["score_rule"]) if first.get("score_rule") else "")))
    counts = {name: [sum(1 for layer in s["layers"] if layer == r) for r in rows] for name, s in sets.items()}
    body = []
    for n in names:
        size = metas[n].get("count")
        per_layer = [count(c) for c in counts[n]] if n in counts else ["–"] * len(rows)
        body.append([f"{n} ({language_name(n)})" if language_name(n) != n else n,
                     *(H.Cell(c, num=True) for c in per_layer), H.Cell(count(size), num=True),
                     H.Cell(pct(size / total) if total and isinstance(size, int) else "–", num=True)])
    sec.table(["set", *(H.Cell(f"layer {r}", num=True) for r in rows), H.Cell("all", num=True),
               H.Cell("share of the dictionary", num=True)], body,
              caption="Features per language and layer of the dictionary (counts; share of all its features)")
    sizes = [m.get("count") for m in metas.values() if isinstance(m.get("count"), int)]
    if sizes:
        chosen = count(min(sizes)) if min(sizes) == max(sizes) else f"{count(min(sizes))}–{count(max(sizes))}"
        sec.finding(Markup("{} on the features of a {}-feature dictionary chose {} features per language.").format(
            method, count(total) if total else "?", chosen))
    top, note = _top_tokens(sec)
    if note:
        sec.add(el("p", note, class_="note"))
    _explorer(sec, names, rows, widths, sets, missing, method, top, note)


def _explorer(sec: Section, names: list[str], rows: list[int], widths: dict[int, int],
              sets: dict[str, dict[str, Any]], missing: dict[str, str], method: str, top: dict[str, Any] | None,
              note: str) -> None:
    stat, order = LISTED_BY.get(method, ("mean", "descending"))
    listed: dict[str, dict[str, list[list[Any]]]] = {}
    shown: set[str] = set()
    for name, s in sets.items():
        values = s["stats"].get(stat)
        by_layer: dict[str, list[list[Any]]] = {}
        for r in rows:
            entries = [[f, values[i] if values is not None else None]
                       for i, (layer, f) in enumerate(zip(s["layers"], s["features"])) if layer == r]
            if values is not None:  # by the statistic, those without one last
                entries.sort(key=lambda e: (e[1] is None, (e[1] or 0.0) * (1 if order == "ascending" else -1), e[0]))
            by_layer[str(r)] = entries[:MAX_LISTED]
            shown.update(f"{r}:{e[0]}" for e in by_layer[str(r)])
        listed[name] = by_layer
    value: dict[str, Any] = {
        "langs": names, "names": {n: language_name(n) for n in names}, "kinds": ["features"], "rows": rows,
        "layers": len(rows), "size": {"features": widths.get(rows[0]) if len(set(widths.values())) == 1 and rows
                                      else "?"},
        "counts": {n: {"features": [sum(1 for layer in s["layers"] if layer == r) for r in rows]}
                   for n, s in sets.items()},
        "features": listed, "missing": missing, "max_listed": MAX_LISTED,
        "stat": stat if any(stat in s["stats"] for s in sets.values()) else None, "stat_order": order,
        "top": None, "top_langs": [], "no_top": note}
    if top is not None:
        langs = [str(x) for x in top["languages"]] if isinstance(top.get("languages"), list) else []
        value["top_langs"] = langs
        value["top"] = {key: {lang: _entries(per.get(lang)) for lang in langs}
                        for key, per in top["features"].items() if key in shown and isinstance(per, dict)}
    add_explorer(sec, "feature", value, "Feature explorer", Markup(
        "Choose a language to see its features per layer of the dictionary (darker = more); choose a layer (its "
        "button) to list that language's features there, each with its top activating tokens in every language's "
        "detection texts: the token marked inside the text before and after it, then its activation."))


# asked before the neuron-sets kind (order 70), which would take the folder for a folder of NeuronSets
register_results_kind(ResultsKind("feature-sets", "Dictionary features", _recognise, render_features, order=65))
