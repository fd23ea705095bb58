"""Results kind ``lens`` (``mwork lens``, the demo's lens stage): the share plot, a per-language
table, the region estimate, the layer explorer and the headline sentence."""

from __future__ import annotations

import math
from typing import Any

import mwork.report.html as H
from mwork.report.explorer import explorer_html, explorer_value
from mwork.report.format import as_float, language_name, sig
from mwork.report.html import Markup, el
from mwork.report.registry import FolderView, ResultsKind, register_results_kind
from mwork.report.section import Section

LENS_COLUMNS = ("input_lang", "layer", "english_share", "non_english_share", "unknown_share", "n_tokens")
MIN_RISE = 0.1  # as mwork.lens.regions: a peak less than this above both ends is no English phase


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def lens_facts(rows: list[dict[str, str]]) -> dict[str, Any]:
    """From ``lens.csv`` rows: the English share per layer averaged over the non-English input
    languages (all of them when there are none), its value at layer 0, its peak and the last
    layer. The README's headline (``scripts/readme_figures.py``) uses the same facts."""
    langs = list(dict.fromkeys(r["input_lang"] for r in rows))
    layers = sorted({int(r["layer"]) for r in rows})
    share = {(r["input_lang"], int(r["layer"])): (as_float(r["english_share"]) if as_float(r["english_share"])
                                                   is not None else math.nan) for r in rows}
    non_en = [lang for lang in langs if lang != "en"] or langs
    curve = [_mean([share.get((lang, layer), math.nan) for lang in non_en]) for layer in layers]
    finite = [i for i, x in enumerate(curve) if not math.isnan(x)]
    peak = max(finite, key=curve.__getitem__) if finite else 0
    return {"langs": non_en, "all_langs": langs, "layers": layers, "share": share, "curve": curve,
            "first": curve[0], "peak": curve[peak], "peak_layer": layers[peak], "peak_index": peak,
            "last": curve[-1], "last_layer": layers[-1]}


def english_phase(facts: dict[str, Any]) -> bool:
    """Whether the curve has the paper's shape: a peak inside, clearly above both ends."""
    first, peak, last = facts["first"], facts["peak"], facts["last"]
    inside = 0 < facts["peak_index"] < len(facts["curve"]) - 1
    return inside and not math.isnan(peak) and peak - max(first, last) >= MIN_RISE


def _regions_text(reg: dict[str, Any] | None) -> str:
    if not isinstance(reg, dict):
        return ""
    if not reg.get("found"):
        return f"No layer regions were estimated from this curve ({reg.get('reason') or 'no estimate'})."
    n, u, g = int(reg["num_layers"]), int(reg["understanding"]), int(reg["generation"])
    return (f"From this curve: understanding = the first U = {u} decoder layers (0–{u - 1}), task-solving = "
            f"{n - u - g} layers ({u}–{n - g - 1}), generation = the last G = {g} ({n - g}–{n - 1}) of {n}.")


def _recognise(folder: FolderView) -> bool:
    return folder.any("lens.csv", "lens_explorer.json") or (folder.has("lens.json") and folder.has("lens.png"))


def render_lens(sec: Section) -> None:
    rows = sec.csv("lens.csv", required=LENS_COLUMNS, numeric=("layer", "english_share", "unknown_share"))
    info = sec.json("lens.json", required=("shares",)) if sec.exists("lens.json") else None
    info = info if isinstance(info, dict) else None
    model = Markup(" of {}").format(el("code", info["model"])) if info and info.get("model") else ""
    top_k = info.get("top_k") if info else None
    sec.image("lens.png", "English, non-English and unknown share of the decoded tokens per layer, one panel per "
              "input language", Markup("Language of the top-{} decoded tokens per layer{}, one panel per input "
                                       "language (the paper's Figure 1).").format(top_k or "k", model))
    reg = info.get("regions") if info else None
    facts = lens_facts(rows) if rows else None
    if facts:
        shares = (info or {}).get("shares") or {}
        body = []
        for lang in facts["all_langs"]:
            curve = [facts["share"].get((lang, layer), math.nan) for layer in facts["layers"]]
            finite = [i for i, x in enumerate(curve) if not math.isnan(x)]
            peak = max(finite, key=curve.__getitem__) if finite else None
            last_rows = shares.get(lang) or []
            own = (last_rows[-1].get("per_language") or {}).get(lang) if last_rows and lang != "en" else None
            n_prompts = ((info or {}).get("n_prompts") or {}).get(lang)
            body.append([f"{lang} ({language_name(lang)})", H.Cell(n_prompts if n_prompts is not None else "–"),
                         H.Cell(sig(curve[0])),
                         H.Cell(f"{sig(curve[peak])} (layer {facts['layers'][peak]})" if peak is not None else "–"),
                         H.Cell(sig(curve[-1])), H.Cell(sig(own) if own is not None else "–")])
        sec.table(["input language", H.Cell("prompts", num=True), H.Cell("English share, layer 0", num=True),
                   H.Cell("peak English share", num=True), H.Cell("English share, last layer", num=True),
                   H.Cell("own-language share, last layer", num=True)], body,
                  caption="Share of English among the decoded tokens whose language is known (0–1), per input "
                          "language")
        if reg:
            sec.add(el("p", _regions_text(reg)))
        shape = english_phase(facts)
        langs = ", ".join(facts["langs"])
        here = ("Here the mean English share over {langs} peaks at {peak} at layer {layer}, above {first} at layer 0 "
                "and {last} at the last layer: the same shape." if shape else
                "Here the mean English share over {langs} peaks at {peak} at layer {layer} ({first} at layer 0, "
                "{last} at the last layer): no clear English phase in the middle layers.")
        sec.paper(Markup("Figure 1 shows, for non-English input, English tokens dominating the middle layers and the "
                         "input language the first and last ones. " + here).format(
            langs=langs, peak=sig(facts["peak"]), layer=facts["peak_layer"], first=sig(facts["first"]),
            last=sig(facts["last"])))
        sec.finding(_lens_sentence(facts, reg, shape), anchor=sec.id)
        per_layer = [[str(layer), *(H.Cell(sig(facts["share"].get((lang, layer), math.nan))) for lang in facts["all_langs"])]
                     for layer in facts["layers"]]
        sec.add(H.details("English share per layer and input language", H.table(
            ["layer", *(H.Cell(lang, num=True) for lang in facts["all_langs"])], per_layer)))
    for warning in (info or {}).get("warnings") or []:
        sec.add(H.note(H.concat("The lens run warned: ", warning)))
    _explorer(sec, info, rows)


def _lens_sentence(facts: dict[str, Any], reg: Any, shape: bool) -> Markup:
    values = dict(langs=", ".join(facts["langs"]), first=sig(facts["first"]), peak=sig(facts["peak"]),
                  layer=facts["peak_layer"], last=sig(facts["last"]), last_layer=facts["last_layer"])
    if shape:
        text = Markup("For prompts in {langs}, the share of English among the decoded tokens rises from {first} at "
                      "layer 0 to {peak} at layer {layer} and falls to {last} at the last layer ({last_layer}): the "
                      "middle layers lean to English, as the paper reports.").format(**values)
    else:
        text = Markup("For prompts in {langs}, the English share of the decoded tokens is {first} at layer 0, {peak} "
                      "at its peak (layer {layer}) and {last} at the last layer: no clear English phase in the middle "
                      "layers.").format(**values)
    if isinstance(reg, dict) and reg.get("found"):
        n, u, g = int(reg["num_layers"]), int(reg["understanding"]), int(reg["generation"])
        text += (f" The estimated regions: understanding in the first {u} of {n} decoder layers, generation in the "
                 f"last {g}.")
    return text


def _explorer(sec: Section, info: dict[str, Any] | None, rows: list[dict[str, str]] | None) -> None:
    from mwork.lens.explorer import read_explorer

    path = sec.path("lens_explorer.json")
    if not path.is_file():
        sec.add(H.note(Markup("No layer explorer: this lens folder has no {} (written by {} since the report shows "
                              "the explorer); run the lens again to get it.").format(
            el("code", "lens_explorer.json"), el("code", "mwork lens"))))
        return
    try:
        data = read_explorer(path)
    except ValueError as err:
        sec.warn(path, str(err).replace(str(path), "").strip(" :") + "; the layer explorer is left out")
        return
    shares_csv: dict[str, list[dict[str, Any]]] = {}
    for r in rows or []:
        shares_csv.setdefault(r["input_lang"], []).append(
            {"english_share": as_float(r["english_share"]), "unknown_share": as_float(r["unknown_share"])})
    value = explorer_value(data, info, shares_csv)
    if not value["prompts"]:
        sec.add(H.note("The layer explorer has no prompts to show."))
        return
    lens = data.get("lens") if isinstance(data.get("lens"), dict) else {}
    sec.add(el("p", f"The layer explorer below decodes every layer with the {lens.get('lens', 'logit')} lens "
                    "(mwork lens --lens logit|tuned|patchscope; see docs/latent.md)."))
    data_id = sec.page.add_data(f"{sec.id}-explorer-data", value)
    sec.add(explorer_html(sec.page.unique_id("layer-explorer"), data_id, value))


register_results_kind(ResultsKind("lens", "Layer-wise decoding (logit lens)", _recognise, render_lens, order=10))
