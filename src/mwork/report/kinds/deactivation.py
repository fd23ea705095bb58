"""Results kind ``deactivation`` (``mwork experiment``, the demo's deactivation stage): each
language with its own neurons off against random ones, the layer-region grid, the matrix as a
heatmap (``matrix.csv`` when measured, else each language on itself) and the plot."""

from __future__ import annotations

import math
from typing import Any

import mwork.report.html as H
from mwork.experiments.deactivation.schema import GRID, HEADLINE, MATRIX, PLOT, RESULTS
from mwork.report.format import as_float, count, language_name, pct, sig, times
from mwork.report.html import Markup, el
from mwork.report.registry import FolderView, ResultsKind, register_results_kind
from mwork.report.section import Section

# what this section reads: the folder's schema, shared with the writer (mwork.experiments.deactivation.report)
HEADLINE_COLUMNS = HEADLINE.required
GRID_COLUMNS = GRID.required
MATRIX_COLUMNS = MATRIX.required


def _recognise(folder: FolderView) -> bool:
    return folder.any(HEADLINE.name, GRID.name, MATRIX.name)


class _Metric:
    """How a score reads: a perplexity changes by a factor, an accuracy by a difference."""

    def __init__(self, info: dict[str, Any] | None):
        info = info or {}
        self.name = str(info.get("metric") or "perplexity")
        self.lower_better = not info.get("higher_is_better", False)
        # the darkest heatmap colour at least at a 10x factor (log10 = 1), or a drop of 0.1 in the metric
        self.full_scale = 1.0 if self.lower_better else 0.1

    def effect(self, before: Any, after: Any) -> float | None:
        b, a = as_float(before), as_float(after)
        if b is None or a is None:
            return None
        if self.lower_better:
            return a / b if b else None
        return a - b

    def effect_text(self, x: float | None) -> str:
        if x is None:
            return "–"
        return times(x) if self.lower_better else (("+" if x > 0 else "") + sig(x))

    def harm(self, x: float | None) -> float | None:
        """How much worse, for the colour scale: log10 of a factor, or minus a difference."""
        if x is None:
            return None
        if self.lower_better:
            return math.log10(x) if x > 0 else None
        return -x


def render_deactivation(sec: Section) -> None:
    results = sec.json(RESULTS.name, required=RESULTS.required)
    info = results.get("info") if isinstance(results, dict) else None
    metric = _Metric(info if isinstance(info, dict) else None)
    head = sec.csv(HEADLINE.name, required=HEADLINE.required, numeric=HEADLINE.numeric)
    grid = _grid_rows(sec)
    matrix = sec.csv(MATRIX.name, required=MATRIX.required, numeric=MATRIX.numeric)
    if isinstance(info, dict):
        seeds = info.get("seeds") or []
        sec.add(el("p", Markup("Metric: {} ({} is better) on held-out texts; English = {}; U = {}, G = {}; random "
                               "neurons: the same count per layer and kind, {} seed{}{}.").format(
            metric.name, "lower" if metric.lower_better else "higher", el("code", info.get("english", "en")),
            info.get("understanding", "?"), info.get("generation", "?"), len(seeds), "s" if len(seeds) != 1 else "",
            " (mean)" if len(seeds) > 1 else "")))
    sec.image(PLOT, "left: each language's perplexity with no neurons, random neurons and its own "
              "neurons off; right: the change by layer region", "Left: each language with its own neurons off "
              "against as many random ones. Right: Δ = ΔEng − Δn-Eng by layer region (larger: non-English hit harder).")
    if head:
        _headline(sec, head, metric)
    if head or matrix:
        _heatmap(sec, head, matrix, metric)
    if grid:
        _grid(sec, grid, metric)


def _grid_rows(sec: Section) -> list[dict[str, str]] | None:
    """``table.csv`` as the grid; a table of another layout is shown as it is, with a warning."""
    from mwork.report.kinds.generic import compact_table
    from mwork.report.read import BadResultFile, read_csv

    path = sec.path(GRID.name)
    if not path.is_file():
        return None
    try:
        return read_csv(path, GRID.required, numeric=GRID.numeric)
    except BadResultFile as err:
        if "lacks the column" not in err.reason:
            sec.warn(path, err.reason + "; it is left out of this section")
            return None
        sec.warn(path, err.reason + ": not the grid `mwork experiment` writes, so it is shown as it is")
        compact_table(sec, GRID.name)
        return None


def _headline(sec: Section, head: list[dict[str, str]], metric: _Metric) -> None:
    anchor = sec.sub_id("headline")
    body = []
    for r in head:
        rand, spec = metric.effect(r["original"], r["random_mean"]), metric.effect(r["original"], r["specific"])
        body.append([f"{r['lang']} ({language_name(r['lang'])})",
                     H.Cell(f"{count(r['neurons_off'])} ({pct(r['share_off'])})", num=True),
                     H.Cell(sig(r["original"]), num=True),
                     H.Cell(f"{sig(r['random_mean'])} ({metric.effect_text(rand)})", num=True),
                     H.Cell(f"{sig(r['specific'])} ({metric.effect_text(spec)})", num=True)])
    unit = metric.name
    sec.add(el("div", H.table(
        ["language", H.Cell("neurons off (share of all)", num=True), H.Cell(f"original {unit}", num=True),
         H.Cell("as many random neurons off", num=True), H.Cell("its own neurons off", num=True)], body,
        caption=f"Each language with its own language-specific neurons off, all layers ({unit}; in brackets: "
                + ("the factor against the original)" if metric.lower_better else "the change against the original)")),
        id=anchor))
    own = [(r["lang"], metric.effect(r["original"], r["specific"])) for r in head]
    rand = [metric.effect(r["original"], r["random_mean"]) for r in head]
    shares = [as_float(r["share_off"]) for r in head if as_float(r["share_off"]) is not None]
    verb = f"multiplies its {metric.name} by" if metric.lower_better else f"changes its {metric.name} by"
    span = f" ({pct(min(shares))}–{pct(max(shares))} of all neurons)" if shares else ""
    sec.finding(Markup("Switching off a language's own neurons{} {} {}; as many random neurons: {}.").format(
        span, verb, _series([f"{metric.effect_text(x)} ({lang})" for lang, x in own]),
        _series([metric.effect_text(x) for x in rand])), anchor=anchor)
    hurts = [(lang, x, y) for (lang, x), y in zip(own, rand) if x is not None and y is not None]
    if hurts:
        worse = [lang for lang, x, y in hurts if (metric.harm(x) or 0) > 2 * max(metric.harm(y) or 0, 0) + 1e-12]
        sec.paper(Markup("Tables 1–2 find that deactivating a language's specific neurons harms that language far "
                         "more than deactivating as many random neurons. Here its own neurons hurt more than random "
                         "ones for {} ({} of {}).").format(_series(worse) if worse else "none of the languages", len(worse),
                                                      len(hurts)))


def _series(items: list[str]) -> Markup:
    """``a``, ``a and b``, ``a, b and c`` (text escaped)."""
    if len(items) <= 2:
        return Markup(" and ").join(items)
    return Markup(", ").join(items[:-1]) + Markup(" and ") + items[-1]


def _heatmap(sec: Section, head: list[dict[str, str]] | None, matrix: list[dict[str, str]] | None,
             metric: _Metric) -> None:
    label = "factor" if metric.lower_better else "change"
    if matrix:
        langs = list(dict.fromkeys(r["eval_lang"] for r in matrix))
        cell = {(r["neurons_of"], r["eval_lang"]): r for r in matrix}
        effects = {key: metric.effect(r["original"], r["specific"]) for key, r in cell.items()}
        top = max([metric.harm(x) or 0 for x in effects.values()] + [metric.full_scale])
        body = []
        for t in dict.fromkeys(r["neurons_of"] for r in matrix):
            row = [H.Cell(f"{t}'s neurons off", header=True)]
            for ev in langs:
                x = effects.get((t, ev))
                r = cell.get((t, ev))
                rnd = metric.effect(r["original"], r["random_mean"]) if r else None
                row.append(H.Cell(raw=H.concat(metric.effect_text(x), el("br"),
                                               el("span", f"random {metric.effect_text(rnd)}", class_="sub")), num=True,
                                  style=H.shade(max(metric.harm(x) or 0, 0) / top, H.ORANGES),
                                  title=f"{t}'s neurons off, evaluated on {ev}"))
            body.append(row)
        sec.table(["", *(H.Cell(f"on {ev}", num=True) for ev in langs)], body, cls="heat",
                  caption=Markup("Every language with each language's neurons off (all layers): the {} {} against the "
                                 "unmodified model (darker = more harm; below it, the same for as many random "
                                 "neurons)").format(metric.name, label))
        return
    if not head:
        return
    effects = [(r["lang"], metric.effect(r["original"], r["random_mean"]), metric.effect(r["original"], r["specific"]))
               for r in head]
    top = max([metric.harm(x) or 0 for _, a, b in effects for x in (a, b)] + [metric.full_scale])
    body = [[H.Cell(f"{lang} ({language_name(lang)})", header=True),
             *(H.Cell(metric.effect_text(x), num=True, style=H.shade(max(metric.harm(x) or 0, 0) / top, H.ORANGES))
               for x in (a, b))] for lang, a, b in effects]
    sec.table(["evaluated on", H.Cell("as many random neurons off", num=True), H.Cell("its own neurons off", num=True)],
              body, cls="heat", caption=Markup("Deactivation heatmap: the {} {} of each language against the "
                                               "unmodified model (darker = more harm). Every language against every "
                                               "other's neurons needs {}.").format(
                  metric.name, label, el("code", "mwork experiment --matrix")))


def _grid(sec: Section, grid: list[dict[str, str]], metric: _Metric) -> None:
    anchor = sec.sub_id("regions")
    by = {(r["region"], r["neurons_off"]): r for r in grid}
    original = next((r for r in grid if r["neurons_off"] == "none"), None)
    regions = [r["region"] for r in grid if r["neurons_off"] == "specific"]
    body = []
    for region in regions:
        s, rnd = by[(region, "specific")], by.get((region, "random"))
        body.append([region, s["layers"], s["kinds"],
                     H.Cell(sig(s.get("mean_neurons")) if s.get("mean_neurons") else "–", num=True),
                     H.Cell(_pair(s["n-Eng"], rnd and rnd["n-Eng"]), num=True),
                     H.Cell(_pair(s["Eng"], rnd and rnd["Eng"]), num=True),
                     H.Cell(_pair(s["Δ"], rnd and rnd["Δ"]), num=True)])
    note = ""
    if original:
        note = (f" Unmodified model: English {sig(original['Eng'])}, non-English {sig(original['n-Eng'])} "
                f"({'geometric mean' if metric.lower_better else 'mean'} over the languages).")
    delta = "−ln of the perplexity ratio" if metric.lower_better and metric.name == "perplexity" else "metric units"
    sec.add(el("div", H.table(
        ["region", "layers", "kinds", H.Cell("neurons off (mean)", num=True), H.Cell(f"non-English {metric.name}",
                                                                                     num=True),
         H.Cell(f"English {metric.name}", num=True), H.Cell("Δ = ΔEng − Δn-Eng", num=True)], body,
        caption=f"Language-specific neurons off by layer region (in brackets: as many random neurons); Δ in {delta}, "
                "larger when non-English suffers more than English." + note), id=anchor))
    parts = [(region, as_float(by[(region, "specific")]["Δ"])) for region in regions if region != "all layers"]
    parts = [(r, d) for r, d in parts if d is not None]
    if parts and original:
        region, d = max(parts, key=lambda rd: rd[1])
        s, rnd = by[(region, "specific")], by.get((region, "random"))
        rnd_delta = as_float(rnd["Δ"]) if rnd else None
        rnd_d = f" (random neurons: {sig(rnd_delta)})" if rnd_delta is not None else ""
        if rnd_delta is not None and d <= 2 * max(rnd_delta, 0.0):
            rnd_d += ", not clearly more than random neurons"
        sec.finding(Markup("Of the layer regions, switching off the {} layers' ({}) language-specific neurons hurts "
                           "non-English most against English: non-English {} {} → {}, English {} → {}, Δ = {}{}.").format(
            region, s["layers"], metric.name, sig(original["n-Eng"]), sig(s["n-Eng"]), sig(original["Eng"]),
            sig(s["Eng"]), sig(d), rnd_d), anchor=anchor)


def _pair(specific: Any, random: Any) -> str:
    return f"{sig(specific)} ({sig(random)})" if random is not None else sig(specific)


register_results_kind(ResultsKind("deactivation", "Deactivation experiment: switching neurons off", _recognise,
                                  render_deactivation, order=30))
