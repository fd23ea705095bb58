"""Results kind ``methods`` (``mwork experiment methods``): detection methods head to head at equal
set sizes -- selectivity (ln ppl ratio on the set's own language minus on the others) against
random sets of the same layers and kinds, stability over the corpus halves, agreement between
methods, cost -- and which method is most selective at each size."""

from __future__ import annotations

import statistics
from typing import Any

import mwork.report.html as H
from mwork.experiments.methods.schema import (AGREEMENT, AGREEMENT_PLOT, COST, LANGID, MATRIX, RESULTS, SELECTIVITY,
                                              SELECTIVITY_PLOT, STABILITY, SUMMARY)
from mwork.report.format import as_float, count, language_name, sig, times
from mwork.report.html import Markup, el
from mwork.report.registry import FolderView, ResultsKind, register_results_kind
from mwork.report.section import Section

# what this section reads: the folder's schema (.required, .numeric), shared with the writer
# the other files of the comparison: with selectivity.csv they tell this folder from a lone table
COMPANIONS = (SUMMARY.name, STABILITY.name, AGREEMENT.name, COST.name, SELECTIVITY_PLOT)
INTERVENTIONS = {"zero": "switched off", "mean": "set to their mean activation"}
METHOD_NAMES = {"plnd": "PLND", "lape": "LAPE", "ap": "activation AP"}


def _recognise(folder: FolderView) -> bool:
    return folder.has(SELECTIVITY.name) and folder.any(*COMPANIONS)


def _num(value: Any) -> float | None:
    return as_float(value)


def _signed(value: Any) -> str:
    x = as_float(value)
    return "–" if x is None else ("+" if x > 0 else "") + sig(x)


def _range(values: list[float]) -> str:
    lo, hi = sig(min(values)), sig(max(values))
    return lo if lo == hi else f"{lo}–{hi}"


def _method(name: str) -> str:
    method, bracket, kind = name.partition(" [")  # "lape [sae:DIR]": a method on a dictionary's features
    return METHOD_NAMES.get(method, method) + (f" [{kind}" if bracket else "")


def summarise(selectivity: list[dict[str, str]]) -> list[dict[str, Any]]:
    """``summary.csv``'s means over the languages, from ``selectivity.csv`` rows (for a folder
    whose ``summary.csv`` is missing or damaged): as ``mwork.experiments.methods.tables``."""
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for r in selectivity:
        groups.setdefault((r.get("intervention") or "zero", r["method"], r["size"]), []).append(r)
    out = []
    for (iv, m, size), rs in groups.items():
        def mean(column: str, rows: list[dict[str, str]] = rs) -> float | None:
            values = [v for v in (_num(r.get(column)) for r in rows) if v is not None]
            return statistics.fmean(values) if values else None

        sel = [v for v in (_num(r["selectivity"]) for r in rs) if v is not None]
        vs_random = [(_num(r["own"]) or 0.0) - (_num(r["random"]) or 0.0) for r in rs]
        above = sum((_num(r["own"]) or 0.0) > (_num(r.get("random_max")) if _num(r.get("random_max")) is not None
                                               else (_num(r["random"]) or 0.0)) for r in rs)
        out.append({"intervention": iv, "method": m, "size": size, "neurons": rs[0].get("neurons", ""),
                    "langs": len(rs), "own": mean("own"), "others": mean("others"), "random": mean("random"),
                    "selectivity": statistics.fmean(sel) if sel else None,
                    "selectivity_std": statistics.stdev(sel) if len(sel) > 1 else None,
                    "own_minus_random": statistics.fmean(vs_random), "langs_above_random": above})
    return out


def method_facts(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per intervention and size (in file order): the methods by selectivity, most selective first.
    Each entry: ``intervention``, ``size``, ``neurons``, ``ranked`` (summary rows)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in summary:
        if _num(r.get("selectivity")) is not None:
            groups.setdefault((r.get("intervention") or "zero", r["size"]), []).append(r)
    return [{"intervention": iv, "size": size, "neurons": rs[0].get("neurons"),
             "ranked": sorted(rs, key=lambda r: -(_num(r["selectivity"]) or 0.0))}
            for (iv, size), rs in groups.items()]


def _size_text(size: str, neurons: Any) -> str:
    n = as_float(neurons)
    return f"{size} ({count(n)} neurons)" if n is not None else str(size)


def _verdict(best: dict[str, Any]) -> str:
    """Whether the most selective set beats random neurons of the same layers and kinds (text)."""
    vs = _num(best.get("own_minus_random"))
    above, langs = best.get("langs_above_random"), best.get("langs")
    per_lang = (f"; its own language worse than with every random seed in {above} of {langs} languages"
                if str(above).strip() not in ("", "None") and str(langs).strip() not in ("", "None") else "")
    if vs is None:
        return ""
    if vs <= 0:
        return (f", but its sets hurt their own language no more than as many random neurons of the same layers and "
                f"kinds do (own − random {_signed(vs)}{per_lang})")
    return (f", and its sets hurt their own language more than as many random neurons do (own − random "
            f"{_signed(vs)}{per_lang})")


def _size_sentence(fact: dict[str, Any]) -> str:
    """One size's result (text)."""
    ranked = fact["ranked"]
    best = ranked[0]
    where = f"at {_size_text(fact['size'], fact['neurons'])}"
    rest = ", ".join(f"{_method(r['method'])} {sig(r['selectivity'])}" for r in ranked[1:])
    rest = f" ({rest})" if rest else ""
    if (_num(best["selectivity"]) or 0.0) <= 0:
        return (f"{where} no method is selective: the best, {_method(best['method'])}, has selectivity "
                f"{sig(best['selectivity'])}{rest}")
    return (f"{where} {_method(best['method'])} is the most selective, {sig(best['selectivity'])}{rest}"
            + _verdict(best))


def with_unit_kind(rows: Any, column: str = "units", names: tuple[str, ...] = ("method",)) -> Any:
    """Rows of a comparison of unit kinds (``--units``) with each method named with its kind when
    that is not neurons (``lape [sae:DIR]``), so every table and sentence tells the kinds apart;
    rows without the column (neurons alone) unchanged."""
    if not rows:
        return rows
    out = []
    for r in rows:
        kind = r.get(column)
        if kind not in (None, "", "neurons"):
            r = {**r, **{n: f"{r[n]} [{kind}]" for n in names if r.get(n)}}
        out.append(r)
    return out


def render_methods(sec: Section) -> None:
    results = sec.json(RESULTS.name, required=RESULTS.required)
    info = results.get("info") if isinstance(results, dict) and isinstance(results.get("info"), dict) else {}
    selectivity = with_unit_kind(sec.csv(SELECTIVITY.name, required=SELECTIVITY.required,
                                         numeric=SELECTIVITY.numeric))
    summary: list[dict[str, Any]] | None = with_unit_kind(sec.csv(SUMMARY.name, required=SUMMARY.required,
                                                                  numeric=SUMMARY.numeric))
    computed = False
    if not summary and selectivity:
        summary, computed = summarise(selectivity), True
    stability = with_unit_kind(sec.csv(STABILITY.name, required=STABILITY.required, numeric=STABILITY.numeric))
    agreement = with_unit_kind(sec.csv(AGREEMENT.name, required=AGREEMENT.required, numeric=AGREEMENT.numeric),
                               names=("method_a", "method_b"))
    cost = sec.csv(COST.name, required=COST.required, numeric=COST.numeric)
    identification = with_unit_kind(sec.csv(LANGID.name, required=LANGID.required, numeric=LANGID.numeric),
                                     column="unit_kind")  # newer folders
    sec.csv(MATRIX.name, required=MATRIX.required, numeric=MATRIX.numeric)  # linked; a damaged one is said
    _settings(sec, info)
    sec.image(SELECTIVITY_PLOT, "selectivity (own minus others) and own minus random per method and size",
              Markup("Per intervention: selectivity = ln ppl ratio on the set's own language − on the other "
                     "languages, and own − random (random sets of the same count per layer and kind), mean over the "
                     "languages; bars: their spread."))
    if summary:
        _summary(sec, summary, computed)
    if selectivity:
        _per_language(sec, selectivity)
    if stability:
        _stability(sec, stability)
    sec.image(AGREEMENT_PLOT, "Jaccard overlap of two methods' sets per layer",
              Markup("Agreement: the Jaccard overlap of two methods' sets of one language and size, per layer (mean "
                     "over the languages)."))
    if agreement:
        _agreement(sec, agreement)
    if identification:
        _langid(sec, identification)
    if cost:
        _cost(sec, cost)


def _settings(sec: Section, info: dict[str, Any]) -> None:
    if not info:
        return
    sizes = info.get("sizes") if isinstance(info.get("sizes"), dict) else {}
    seeds = info.get("seeds") or []
    sec.add(el("p", Markup("Model {}; methods {}; languages {}; sizes {}{}; {} random seed{}. Every number is a ln(ppl "
                           "ratio) on held-out texts (nats per token; 0: no effect).").format(
        el("code", info.get("model", "?")), ", ".join(_method(m) for m in info.get("methods") or []),
        ", ".join(info.get("langs") or []), ", ".join(f"{s} = {count(n)}" for s, n in sizes.items()),
        f" of {count(info['total_neurons'])} neurons" if info.get("total_neurons") else "", len(seeds),
        "s" if len(seeds) != 1 else "")))


def _summary(sec: Section, summary: list[dict[str, Any]], computed: bool) -> None:
    anchor = sec.sub_id("summary")
    facts = method_facts(summary)
    best = {(f["intervention"], f["size"]): f["ranked"][0]["method"] for f in facts}
    body = []
    for r in summary:
        iv = r.get("intervention") or "zero"
        top = best.get((iv, r["size"])) == r["method"]
        name = _method(r["method"])
        std = _num(r.get("selectivity_std"))
        above, langs = r.get("langs_above_random"), r.get("langs")
        body.append([INTERVENTIONS.get(iv, iv), H.Cell(el("strong", name) if top else name),
                     H.Cell(_size_text(r["size"], r.get("neurons")), num=True),
                     H.Cell(sig(r["own"]), num=True), H.Cell(sig(r["others"]), num=True),
                     H.Cell(sig(r["random"]), num=True),
                     H.Cell(sig(r["selectivity"]) + (f" ± {sig(std)}" if std is not None else ""), num=True),
                     H.Cell(_signed(r["own_minus_random"]), num=True),
                     H.Cell(f"{above} of {langs}" if str(above or "").strip() and str(langs or "").strip() else "–",
                            num=True)])
    sec.add(el("div", H.table(
        ["intervention", "method", H.Cell("size", num=True), H.Cell("own", num=True), H.Cell("others", num=True),
         H.Cell("random", num=True), H.Cell("selectivity", num=True), H.Cell("own − random", num=True),
         H.Cell("above every random seed", num=True)], body,
        caption=Markup("Mean over the languages (ln ppl ratio, nats/token): own = on the set's language, others = on "
                       "the other languages, random = random sets of the same count per layer and kind on the own "
                       "language; selectivity = own − others (± its standard deviation over the languages); in bold "
                       "the most selective method at each size")
        + (Markup("; computed from {}, as {} could not be used").format(el("code", "selectivity.csv"),
                                                                         el("code", "summary.csv"))
           if computed else "")), id=anchor))
    by_iv: dict[str, list[dict[str, Any]]] = {}
    for f in facts:
        by_iv.setdefault(f["intervention"], []).append(f)
    for iv, fs in by_iv.items():
        sec.finding(Markup("Detection methods at equal set sizes, sets {} (selectivity = ln ppl ratio on the set's own "
                           "language − on the others, nats/token, mean over the languages): {}.").format(
            INTERVENTIONS.get(iv, iv), "; ".join(_size_sentence(f) for f in fs)), anchor=anchor)
    wins: dict[str, int] = {}
    beats = 0
    for f in facts:
        winner = f["ranked"][0]
        wins[winner["method"]] = wins.get(winner["method"], 0) + 1
        beats += (_num(winner["selectivity"]) or 0) > 0 and (_num(winner.get("own_minus_random")) or 0) > 0
    if facts:
        methods = list(dict.fromkeys(r["method"] for r in summary))
        lead = "plnd" if "plnd" in methods else max(wins, key=wins.get)
        sec.paper(Markup("The paper detects language-specific neurons with PLND and validates them by switching them "
                         "off (Tables 1–2); LAPE (Tang et al., 2024) and activation AP (Kojima et al., 2024) are the "
                         "other common detectors. Here, at equal sizes, {} is the most selective in {} of {} settings "
                         "(intervention × size), and the most selective set hurts its own language more than random "
                         "neurons in {} of {}.").format(_method(lead), wins.get(lead, 0), len(facts), beats,
                                                         len(facts)))


def _per_language(sec: Section, rows: list[dict[str, str]]) -> None:
    langs = list(dict.fromkeys(r["lang"] for r in rows))
    cell = {(r.get("intervention") or "zero", r["method"], r["size"], r["lang"]): r for r in rows}
    keys = list(dict.fromkeys((r.get("intervention") or "zero", r["method"], r["size"]) for r in rows))
    body = []
    for iv, m, size in keys:
        line = [INTERVENTIONS.get(iv, iv), _method(m), H.Cell(size, num=True)]
        for lang in langs:
            r = cell.get((iv, m, size, lang))
            if r is None:
                line.append(H.Cell("–", num=True))
                continue
            vs = (_num(r.get("own_minus_random")) if _num(r.get("own_minus_random")) is not None
                  else (_num(r["own"]) or 0.0) - (_num(r["random"]) or 0.0))
            line.append(H.Cell(raw=H.concat(sig(r["selectivity"]), el("br"),
                                            el("span", f"vs random {_signed(vs)}", class_="sub")), num=True))
        body.append(line)
    sec.add(H.details("Selectivity per language", H.table(
        ["intervention", "method", H.Cell("size", num=True), *(H.Cell(f"{lang} ({language_name(lang)})", num=True)
                                                         for lang in langs)], body,
        caption=Markup("Selectivity (own − others, nats/token) of each language's set; below it own − random"))))


def _stability(sec: Section, rows: list[dict[str, str]]) -> None:
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["size"]), []).append(r)
    body = []
    facts = []
    for (m, size), rs in groups.items():
        jac = [v for v in (_num(r["jaccard"]) for r in rs) if v is not None]
        chance = [v for v in (_num(r["chance"]) for r in rs) if v is not None]
        if not jac:
            continue
        mean, ch = statistics.fmean(jac), statistics.fmean(chance) if chance else None
        facts.append((m, size, mean, ch))
        body.append([_method(m), H.Cell(size, num=True), H.Cell(sig(mean), num=True),
                     H.Cell(_range(jac), num=True), H.Cell(sig(ch), num=True)])
    if not body:
        return
    anchor = sec.sub_id("stability")
    sec.add(el("div", H.table(
        ["method", H.Cell("size", num=True), H.Cell("Jaccard, mean", num=True), H.Cell("range", num=True),
         H.Cell("chance", num=True)], body,
        caption="Stability: Jaccard overlap of the sets detected on the even and on the odd documents of each corpus "
                "(over the languages), beside what random sets of those counts per layer and kind would share"),
        id=anchor))
    last = facts[-1][1]
    at = [(m, mean, ch) for m, size, mean, ch in facts if size == last]
    sec.finding(Markup("Stability at size {}: the sets detected on the two halves of each corpus overlap with Jaccard "
                       "{}.").format(last, ", ".join(f"{sig(mean)} ({_method(m)}; chance {sig(ch)})"
                                                     for m, mean, ch in at)), anchor=anchor)


def _agreement(sec: Section, rows: list[dict[str, str]]) -> None:
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        if r["layer"] == "all" and _num(r["jaccard"]) is not None:
            groups.setdefault((r["size"], r["method_a"], r["method_b"]), []).append(_num(r["jaccard"]) or 0.0)
    body = [[H.Cell(size, num=True), f"{_method(a)} and {_method(b)}", H.Cell(sig(statistics.fmean(v)), num=True),
             H.Cell(_range(v), num=True)] for (size, a, b), v in groups.items()]
    if body:
        sec.table([H.Cell("size", num=True), "methods", H.Cell("Jaccard, mean", num=True),
                   H.Cell("range over the languages", num=True)], body,
                  caption=Markup("Agreement: Jaccard overlap of two methods' sets of the same language and size "
                                 "(all layers)"))


def _langid(sec: Section, rows: list[dict[str, str]]) -> None:
    """Accuracy over all held-out texts: each method and size's own sets, the mean over the random
    seeds, fastText on the same texts."""
    pooled = [r for r in rows if r["lang"] == "all"]
    fasttext = next((_num(r["accuracy"]) for r in pooled if r["method"] == "fasttext"), None)
    groups: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in pooled:
        if r["method"] != "fasttext" and _num(r["accuracy"]) is not None:
            kind = "specific" if r["variant"] == "specific" else "random"
            groups.setdefault((r["method"], r["size"]), {}).setdefault(kind, []).append(_num(r["accuracy"]) or 0.0)
    body = [[_method(m), H.Cell(size, num=True),
             H.Cell(sig(statistics.fmean(g["specific"])) if g.get("specific") else "–", num=True),
             H.Cell(sig(statistics.fmean(g["random"])) if g.get("random") else "–", num=True),
             H.Cell(sig(fasttext) if fasttext is not None else "–", num=True)]
            for (m, size), g in groups.items()]
    if body:
        chance = _num(pooled[0].get("chance")) if pooled else None
        sec.table(["method", H.Cell("size", num=True), H.Cell("its sets", num=True),
                   H.Cell("random sets", num=True), H.Cell("fastText", num=True)], body,
                  caption=Markup("Language identification of the held-out texts from the units that fire (accuracy "
                                 "over all texts): a text's language is the one whose set fires most (mean firing "
                                 "probability of its units){}; random sets: mean over the seeds; fastText on the "
                                 "same texts").format(f"; chance {sig(chance)}" if chance is not None else ""))


def _cost(sec: Section, rows: list[dict[str, str]]) -> None:
    body = [[_method(r["method"]) if r["method"] != "forward" else "plain forward pass",
             H.Cell(count(r.get("tokens")), num=True), H.Cell(f"{sig(r['s_per_1k_tokens'])} s", num=True),
             H.Cell(times(r["relative_to_forward"]), num=True)] for r in rows]
    sec.table(["method", H.Cell("tokens", num=True), H.Cell("per 1,000 tokens", num=True),
               H.Cell("against the forward pass", num=True)], body,
              caption="Cost of each method alone on the same documents (fastest of the repeats)")


register_results_kind(ResultsKind("methods", "Detection methods compared: PLND, LAPE, activation AP", _recognise,
                                  render_methods, order=28, claims_subfolders=True))
