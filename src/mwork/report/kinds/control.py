"""Results kind ``control`` (``mwork experiment control``): language control that keeps the
meaning -- per lever the test numbers at the setting chosen on dev (forcing, meaning, fluency and
their score), the heat map of the score per source and target, forcing against meaning with each
lever's Pareto front, and a few outputs side by side (escaped, shortened)."""

from __future__ import annotations

import statistics
from typing import Any

import mwork.report.html as H
from mwork.experiments.control.schema import CHOSEN, CONTROL, GENERATIONS, HEATMAP, PARETO, SETTING, SUMMARY
from mwork.report.format import as_float, count, language_name, sig
from mwork.report.html import Markup, el
from mwork.report.registry import FolderView, ResultsKind, register_results_kind
from mwork.report.section import Section

UNSTEERED = "unsteered"
BASELINES = ("random", "prompt")
MAX_CHARS = 200  # of an output shown on the page (the whole text is in generations.jsonl)
MAX_PROMPT_CHARS = 240
SHOWN_ITEMS = 2


def _recognise(folder: FolderView) -> bool:
    return folder.has(CONTROL.name) and folder.any(CHOSEN.name, GENERATIONS.name, SUMMARY.name)


def _mean(rows: list[dict[str, Any]], column: str) -> float | None:
    values = [v for v in (as_float(r.get(column)) for r in rows) if v is not None]
    return statistics.fmean(values) if values else None


def lever_means(chosen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per lever (in file order): the mean over its pairs of the chosen settings' test numbers."""
    out = []
    for name in dict.fromkeys(r["lever"] for r in chosen):
        mine = [r for r in chosen if r["lever"] == name]
        out.append({"lever": name, "pairs": len(mine), **{c: _mean(mine, c) for c in
                                                          ("score", "forcing", "meaning", "fluency", "perplexity",
                                                           "dev_score")}})
    return out


def _setting(row: dict[str, Any]) -> str:
    parts = [str(row.get(k) or "") for k in SETTING]
    text = " ".join(p for p in (parts[0], f"layers {parts[1]}" if parts[1] else "",
                                f"positions {parts[2]}" if parts[2] and parts[2] != "all" else "",
                                f"strength {parts[3]}" if parts[3] else "") if p)
    return text or "–"


def render_control(sec: Section) -> None:
    summary = sec.json(SUMMARY.name, required=SUMMARY.required)
    rows = sec.csv(CONTROL.name, required=CONTROL.required, numeric=CONTROL.numeric) or []
    chosen = sec.csv(CHOSEN.name, required=CHOSEN.required, numeric=CHOSEN.numeric) or []
    generations = sec.jsonl(GENERATIONS.name, required=GENERATIONS.required)
    info = summary if isinstance(summary, dict) else {}
    _intro(sec, info, rows)
    sec.image(HEATMAP, "test score per lever, source and target", Markup(
        "The score (harmonic mean of forcing and meaning) on the test items, at the setting each lever had chosen "
        "on the dev items, per source (rows) and target (columns)."))
    sec.image(PARETO, "forcing against meaning per lever", Markup(
        "Forcing (the share of outputs the sentence-level identifier labels as the target) against meaning (kept "
        "relative to the unsteered model): every setting on dev (mean over the pairs), each lever's Pareto front, "
        "and the chosen settings on test (stars)."))
    if chosen:
        _chosen(sec, chosen)
    if generations and chosen:
        _generations(sec, generations, chosen)


def _intro(sec: Section, info: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    pairs = info.get("pairs") if isinstance(info.get("pairs"), list) else []
    levers = info.get("levers") if isinstance(info.get("levers"), list) else []
    per = info.get("choose_per") if isinstance(info.get("choose_per"), list) else []
    shown = ", ".join(f"{p[0]}→{p[1]}" for p in pairs if isinstance(p, list) and len(p) == 2)
    settings = len({tuple(str(r.get(k)) for k in ("lever", *SETTING)) for r in rows})
    sec.add(el("p", Markup(
        "Levers {} over the pairs {} on the items {} ({} settings in all). Each setting is scored on forcing and "
        "meaning (each measure of the steered outputs relative to the unsteered model's on the same items, capped at "
        "1), with fluency (distinct bigrams) and the unsteered model's perplexity of the outputs beside; the setting "
        "is chosen {} on the dev items and reported on the disjoint test items.").format(
        ", ".join(str(x) for x in levers) or "–", shown or "–", el("code", str(info.get("item_set", "–"))),
        count(settings), "per lever and pair" if "source" in per else "per lever over every pair")))


def _chosen(sec: Section, chosen: list[dict[str, Any]]) -> None:
    means = lever_means(chosen)
    head = ["lever", H.Cell("pairs", num=True), H.Cell("score", num=True), H.Cell("forcing", num=True),
            H.Cell("meaning", num=True), H.Cell("fluency (distinct-2)", num=True), H.Cell("perplexity", num=True),
            H.Cell("dev score", num=True)]
    body = [[H.Cell(m["lever"], header=True), H.Cell(count(m["pairs"]), num=True),
             *(H.Cell(sig(m[c]), num=True) for c in ("score", "forcing", "meaning", "fluency", "perplexity",
                                                     "dev_score"))] for m in means]
    anchor = sec.sub_id("chosen")
    sec.add(el("div", H.table(head, body, caption=Markup(
        "Per lever, the mean over the pairs of the test numbers at the setting chosen on dev ({}: one row per lever "
        "and pair, with the setting).").format(el("code", CHOSEN.name))), id=anchor))
    detail = [[H.Cell(r["lever"], header=True), H.Cell(f"{r['source']}→{r['target']}"), H.Cell(_setting(r)),
               *(H.Cell(sig(r.get(c)), num=True) for c in ("score", "forcing", "meaning", "fluency", "dev_score"))]
              for r in chosen]
    sec.add(H.details("every lever and pair", H.table(
        ["lever", "pair", "chosen setting", H.Cell("score", num=True), H.Cell("forcing", num=True),
         H.Cell("meaning", num=True), H.Cell("fluency", num=True), H.Cell("dev score", num=True)], detail)))
    _findings(sec, means, anchor)


def _findings(sec: Section, means: list[dict[str, Any]], anchor: str) -> None:
    levers = [m for m in means if m["lever"] != UNSTEERED and m["score"] is not None]
    if not levers:
        return
    best = max(levers, key=lambda m: m["score"])
    if best["score"] <= 0:
        sec.finding(Markup("No lever scores above 0 on test: none makes the outputs the target language's while "
                           "keeping any of the meaning here."), anchor=anchor)
        return
    others = {m["lever"]: m for m in levers}
    against = [f"{name} {sig(others[name]['score'])}" for name in BASELINES if name in others and name != best["lever"]]
    text = Markup("The best lever on test is {} (score {}: forcing {}, meaning {}, fluency {})").format(
        best["lever"], sig(best["score"]), sig(best["forcing"]), sig(best["meaning"]), sig(best["fluency"]))
    text += (Markup(", against {}.").format("; ".join(against)) if against else ".")
    if (best["forcing"] or 0.0) < 0.5 or (best["meaning"] or 0.0) < 0.5:
        text += Markup(" No lever reaches both half of the outputs in the target language and half of the meaning "
                       "kept here." if (best["forcing"] or 0.0) < 0.5 and (best["meaning"] or 0.0) < 0.5 else
                       " It falls short on {}.").format("forcing" if (best["forcing"] or 0.0) < 0.5 else "meaning")
    sec.finding(text, anchor=anchor)
    sec.paper(Markup("CLaS-Bench (Gurgurov et al., 2026) scores language steering by the harmonic mean of "
                     "language-forcing success and relevance and finds DiffMean residual vectors the strongest "
                     "lever; here the meaning axis is measured against parallel references of either language (whether "
                     "a restatement singles out its own sentence by chrF, QA F1) relative to the unsteered model."))


def _text(text: Any, language: Any) -> H.Cell:
    return H.generation_cell(text, language, MAX_CHARS)


def _same_setting(g: dict[str, Any], r: dict[str, Any]) -> bool:
    for k in SETTING:
        a, b = g.get(k), r.get(k)
        if k == "strength":
            if as_float(a) != as_float(b):
                return False
        elif str(a or "") != str(b or ""):
            return False
    return True


def _generations(sec: Section, generations: list[dict[str, Any]], chosen: list[dict[str, Any]]) -> None:
    """The first test items of the first pair: the unsteered output and each lever's at its chosen setting."""
    first = chosen[0]
    pair = (first["source"], first["target"])
    picks = {r["lever"]: r for r in chosen if (r["source"], r["target"]) == pair}
    items: dict[str, dict[str, Any]] = {}
    for g in generations:
        if (g.get("source"), g.get("target")) != pair or g.get("split") != "test":
            continue
        pick = picks.get(g.get("lever"))
        if pick is None or not _same_setting(g, pick):
            continue
        entry = items.setdefault(str(g["id"]), {"prompt": g["prompt"], "outputs": {}})
        entry["outputs"][g["lever"]] = (g["output"], g["language"])
    shown = list(items.values())[:SHOWN_ITEMS]
    if not shown:
        return
    levers = list(picks)
    body = [[H.Cell(H.short_text(e["prompt"], MAX_PROMPT_CHARS), style="overflow-wrap:anywhere"),
             *(_text(*(e["outputs"].get(name) or ("", "–"))) for name in levers)] for e in shown]
    sec.table(["prompt", *levers], body, caption=Markup(
        "Test outputs of {} → {} ({}, {}) of each lever at its chosen setting, greedy, with the detected language "
        "in brackets, shortened to {} characters; every output is in {}.").format(
        pair[0], pair[1], language_name(str(pair[0])), language_name(str(pair[1])), MAX_CHARS,
        el("code", GENERATIONS.name)))


register_results_kind(ResultsKind("control", "Language control that keeps the meaning", _recognise, render_control,
                                  order=46, claims_subfolders=True))
