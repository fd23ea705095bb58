"""Results kind ``neurons`` (``mwork stats``, the demo's neurons stage): language-specific neurons
per language and kind, the per-layer plot, the overlap heatmap and the neuron explorer (per
language, neurons per layer and kind; for a chosen layer, the set's neurons with the number of
detection documents each was important in, read from the NeuronSet files' ``doc_count``
tensors)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mwork.report.html as H
from mwork.report.format import as_float, count, language_name, pct, sig
from mwork.report.html import Markup, el
from mwork.report.read import BadResultFile, read_json, read_neuron_masks
from mwork.report.registry import FolderView, ResultsKind, register_results_kind
from mwork.report.section import Section

SUMMARY_COLUMNS = ("set", "kind", "count", "total", "fraction_of_model")
LAYER_COLUMNS = ("set", "kind", "layer", "count", "neurons_in_layer")
PAPER_SHARE_TEXT = "0.13 %"  # the paper: about 0.13 % of all neurons per language
MAX_LISTED = 400  # neurons listed per language, layer and kind in the explorer (the file holds all)


def neuron_facts(rows: list[dict[str, str]]) -> dict[str, Any]:
    """From ``summary.csv`` rows: each set's share of all the model's neurons, their mean and the
    model's neuron count (the README's headline uses the same facts)."""
    shares = {r["set"]: as_float(r["fraction_of_model"]) for r in rows if r["kind"] == "all"}
    values = [v for v in shares.values() if v is not None]
    total = next((int(float(r["total"])) for r in rows if r["kind"] == "all"), None)
    return {"shares": shares, "mean_share": sum(values) / len(values) if values else math.nan, "total": total}


def _recognise(folder: FolderView) -> bool:
    return folder.any("summary.csv", "counts_per_layer.csv") and folder.any("jaccard.csv", "per_layer.png",
                                                                           "counts_per_layer.csv")


def _set_file(folder: Path, name: str) -> Path | None:
    """The NeuronSet file of set ``name`` in this results folder; None where there is none, or
    where the name would lead outside the folder (a results file written by someone else)."""
    for sub in ("specific", "."):
        candidate = folder / sub / f"{name}.safetensors"
        if "\x00" not in name and candidate.parent.resolve() == (folder / sub).resolve() and candidate.is_file():
            return candidate
    return None


def _how(sec: Section, names: list[str]) -> str:
    """The detection settings, as recorded in the first set's JSON beside it (text)."""
    for name in names:
        path = _set_file(sec.folder, name)
        if path is None or not path.with_suffix(".json").is_file():
            continue
        try:
            meta = read_json(path.with_suffix(".json"))
        except BadResultFile as err:
            sec.warn(err.path, err.reason)
            return ""
        if not isinstance(meta, dict):
            return ""
        rule = meta.get("document_rule") or {}
        across = meta.get("across_documents") or {}
        parts = [f"Detected on {meta.get('n_docs', '?')} documents per language"]
        if meta.get("max_length"):
            parts[0] += f" (windows of at most {meta['max_length']} tokens)"
        if rule.get("top_fraction") is not None:
            parts.append(f"per document the top {pct(rule['top_fraction'])} of each layer and kind by importance")
        if across.get("min_doc_fraction") is not None:
            parts.append(f"kept if important in at least {pct(across['min_doc_fraction'])} of the documents")
        desc = (meta.get("specific") or {}).get("description")
        return "; ".join(parts) + (f"; then each language's set {desc}" if desc else "") + "."
    return ""


def render_neurons(sec: Section) -> None:
    rows = sec.csv("summary.csv", required=SUMMARY_COLUMNS, numeric=("count", "total", "fraction_of_model"))
    layer_rows = sec.csv("counts_per_layer.csv", required=LAYER_COLUMNS, numeric=("layer", "count", "neurons_in_layer"))
    jaccard = sec.csv("jaccard.csv", required=("set",))
    names = list(dict.fromkeys(r["set"] for r in rows or layer_rows or []))
    how = _how(sec, names)
    if how:
        sec.add(el("p", how))
    sec.image("per_layer.png", "language-specific neurons per layer, one panel per kind, one line per language",
              "Language-specific neurons per layer, one panel per kind (FFN, Q, K, V), one line per language.")
    if rows:
        facts = neuron_facts(rows)
        kinds = list(dict.fromkeys(r["kind"] for r in rows if r["kind"] != "all"))
        cell = {(r["set"], r["kind"]): r for r in rows}
        body = []
        for name in names:
            body.append([f"{name} ({language_name(name)})" if language_name(name) != name else name,
                         *(count(cell[(name, k)]["count"]) if (name, k) in cell else "–" for k in kinds),
                         count(cell[(name, "all")]["count"]) if (name, "all") in cell else "–",
                         pct(facts["shares"].get(name))])
        body.append([H.Cell("mean", header=True), *([""] * len(kinds)), "", pct(facts["mean_share"])])
        total = f" of {count(facts['total'])}" if facts["total"] else ""
        sec.table(["language", *(H.Cell(k.upper(), num=True) for k in kinds), H.Cell("all", num=True),
                   H.Cell("share of all neurons", num=True)], body,
                  caption=f"Language-specific neurons per language and kind (counts; share of all{total} FFN + Q + K + "
                          "V neurons of every layer)")
        shares = [v for v in facts["shares"].values() if v is not None]
        if shares:
            sec.paper(f"§2.2 finds about {PAPER_SHARE_TEXT} of all neurons specific to each language; here "
                      f"{pct(min(shares))}–{pct(max(shares))}, {pct(facts['mean_share'])} on average.")
            overlap = _overlap_range(jaccard)
            sec.finding(Markup("Language-specific neurons are {} of all neurons per language on average ({}–{}; the "
                               "paper: about {}){}.").format(
                pct(facts["mean_share"]), pct(min(shares)), pct(max(shares)), PAPER_SHARE_TEXT,
                Markup("; two languages' sets overlap by a Jaccard index of {}–{}").format(sig(overlap[0]),
                                                                                            sig(overlap[1]))
                if overlap else ""))
    if jaccard:
        _overlap_heatmap(sec, jaccard)
    if layer_rows:
        _explorer(sec, names, layer_rows)


def _overlap_range(jaccard: list[dict[str, str]] | None) -> tuple[float, float] | None:
    if not jaccard:
        return None
    values = [as_float(r.get(other)) for r in jaccard for other in r if other not in ("set", r["set"])]
    values = [v for v in values if v is not None]
    return (min(values), max(values)) if values else None


def _overlap_heatmap(sec: Section, jaccard: list[dict[str, str]]) -> None:
    names = [r["set"] for r in jaccard]
    body = []
    for r in jaccard:
        cells = []
        for other in names:
            x = as_float(r.get(other))
            cells.append(H.Cell(sig(x) if x is not None else "–", num=True, style=H.shade(x),
                                title=f"{r['set']} vs {other}"))
        body.append([H.Cell(r["set"], header=True), *cells])
    sec.table(["", *(H.Cell(n, num=True) for n in names)], body, cls="heat",
              caption="Overlap of the language-specific sets: Jaccard index |A ∩ B| / |A ∪ B| (0 = disjoint, "
                      "1 = equal; darker = more overlap)")


def _explorer(sec: Section, names: list[str], layer_rows: list[dict[str, str]]) -> None:
    kinds = list(dict.fromkeys(r["kind"] for r in layer_rows))
    n_layers = max(int(float(r["layer"])) for r in layer_rows) + 1
    size = {r["kind"]: int(float(r["neurons_in_layer"])) for r in layer_rows}
    counts: dict[str, dict[str, list[int]]] = {n: {k: [0] * n_layers for k in kinds} for n in names}
    for r in layer_rows:
        counts.setdefault(r["set"], {k: [0] * n_layers for k in kinds})[r["kind"]][int(float(r["layer"]))] = \
            int(float(r["count"]))
    neurons: dict[str, Any] = {}
    n_docs: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for name in names:
        path = _set_file(sec.folder, name)
        if path is None:
            missing[name] = "its NeuronSet file (specific/" + name + ".safetensors) is not in this folder"
            continue
        try:
            meta, masks, extra = read_neuron_masks(path)
        except BadResultFile as err:
            sec.warn(err.path, err.reason + "; its neurons are not listed")
            missing[name] = "its NeuronSet file could not be read"
            continue
        per_kind_docs = (meta.get("across_documents") or {}).get("n_docs_per_kind") or {}
        n_docs[name] = {k: per_kind_docs.get(k, meta.get("n_docs")) for k in masks}
        listing: dict[str, dict[str, list[list[int]]]] = {}
        for kind, mask in masks.items():
            docs = extra.get(f"doc_count.{kind}")
            by_layer = {}
            for layer in range(mask.shape[0]):
                idx = mask[layer].nonzero()[0].tolist()
                if not idx:
                    continue
                entries = [[int(i), int(docs[layer, i]) if docs is not None else -1] for i in idx]
                entries.sort(key=lambda e: (-e[1], e[0]))
                by_layer[str(layer)] = entries[:MAX_LISTED]
            listing[kind] = by_layer
        neurons[name] = listing
    value = {"langs": names, "names": {n: language_name(n) for n in names}, "kinds": kinds, "layers": n_layers,
             "size": size, "counts": counts, "neurons": neurons, "n_docs": n_docs, "missing": missing,
             "max_listed": MAX_LISTED}
    add_explorer(sec, "neuron", value, "Neuron explorer", Markup(
        "Choose a language to see its language-specific neurons per layer and kind (darker = more); choose a layer "
        "(its button) to list that layer's neurons, each with the number of detection documents in which it was "
        "important."))


def add_explorer(sec: Section, unit: str, value: dict[str, Any], title: str, intro: Markup) -> None:
    """The explorer of a section's units (``unit``: ``neuron`` or ``feature``): ``value`` embedded
    in the page, drawn by the page's script (``NeuronExplorer`` in report.js) with textContent and
    setAttribute only: no value is parsed as HTML."""
    data_id = sec.page.add_data(f"{sec.id}-{unit}-data", dict(value, unit=unit))
    sid = sec.page.unique_id(f"{unit}-explorer")
    sec.add(el("section", el("h3", title), el("p", intro),
               el("div", el("label", "Language", for_=f"{sid}-lang"), " ",
                  el("select", id=f"{sid}-lang", class_="nx-lang"), class_="nx-controls"),
               el("div", el("div", class_="tbl nx-table"), el("div", class_="nx-detail", aria_live="polite"),
                  class_="nx-body"),
               el("noscript", el("p", Markup("The {} explorer is drawn by the page's script.").format(unit),
                                 class_="note")),
               id=sid, class_="nx", data_source=data_id))


register_results_kind(ResultsKind("neurons", "Language-specific neurons", _recognise, render_neurons, order=20,
                                  claims_subfolders=True))
