"""Results kind ``steer`` (``mwork steer``): steering the output language with a language's
neurons, against random neurons of the same count and the unsteered model -- the trade-off
plot, the measures per strength, a few generations side by side (escaped, shortened), and the
target-language rate and damage at the strongest setting."""

from __future__ import annotations

import statistics
from typing import Any

import mwork.report.html as H
from mwork.experiments.steering.schema import GENERATIONS, GENERATIONS_MD, PLOT, STEER, SUMMARY, UNSTEERED
from mwork.report.format import as_float, count, language_name, pct, sig
from mwork.report.html import Markup, el
from mwork.report.registry import FolderView, ResultsKind, register_results_kind
from mwork.report.section import Section

# what this section reads: the folder's schema, shared with the writer (mwork.experiments.steering.report)
ROW_COLUMNS = STEER.required
UNSTEERED_COLUMNS = UNSTEERED.required
NUMERIC = STEER.numeric
GENERATION_KEYS = GENERATIONS.required
SHOWN_PROMPTS = 3
MAX_CHARS = 240  # of a generation shown on the page (the whole text is in generations.jsonl)
MAX_PROMPT_CHARS = 160


def _recognise(folder: FolderView) -> bool:
    return folder.has(STEER.name) and folder.any(UNSTEERED.name, SUMMARY.name, GENERATIONS.name)


def identity(mode: str) -> float:
    """The strength at which ``mode`` leaves the model unchanged (``mwork.steering.is_identity``)."""
    return 1.0 if mode == "scale" else 0.0


def strongest(strengths: list[float], mode: str) -> float:
    """The strength farthest from the identity (the larger one on a tie)."""
    return max(strengths, key=lambda s: (abs(s - identity(mode)), s))


def _mean(rows: list[dict[str, str]], column: str) -> float | None:
    values = [v for v in (as_float(r.get(column)) for r in rows) if v is not None]
    return statistics.fmean(values) if values else None


def steer_facts(rows: list[dict[str, str]], unsteered: list[dict[str, str]] | None) -> list[dict[str, Any]]:
    """Per (source, target) pair of ``steer.csv``: its mode, strengths, the specific row and the
    random rows (all seeds) per strength, the unsteered row, and the strongest setting."""
    out = []
    pairs = list(dict.fromkeys((r["source"], r["target"]) for r in rows))
    for source, target in pairs:
        mine = [r for r in rows if (r["source"], r["target"]) == (source, target)]
        mode = mine[0].get("mode") or "set"
        strengths = sorted({as_float(r["strength"]) for r in mine if as_float(r["strength"]) is not None})
        specific = {as_float(r["strength"]): r for r in mine if r["method"] == "specific"}
        random: dict[float | None, list[dict[str, str]]] = {}
        for r in mine:
            if r["method"] == "random":
                random.setdefault(as_float(r["strength"]), []).append(r)
        base = next((u for u in unsteered or [] if (u["source"], u["target"]) == (source, target)), None)
        top = strongest([s for s in strengths if s in specific] or strengths, mode) if strengths else None
        out.append({"source": source, "target": target, "mode": mode, "stat": mine[0].get("stat") or "",
                    "strengths": strengths, "specific": specific, "random": random, "unsteered": base,
                    "strongest": top, "neurons": mine[0].get("neurons"),
                    "seeds": sorted({r["seed"] for r in mine if r["method"] == "random"})})
    return out


def _strength(s: float | None) -> str:
    return "–" if s is None else f"{s:g}"


def render_steer(sec: Section) -> None:
    rows = sec.csv(STEER.name, required=STEER.required, numeric=STEER.numeric)
    unsteered = sec.csv(UNSTEERED.name, required=UNSTEERED.required, numeric=UNSTEERED.numeric)
    summary = sec.json(SUMMARY.name, required=SUMMARY.required)
    generations = sec.jsonl(GENERATIONS.name, required=GENERATIONS.required)
    settings = summary.get("settings") if isinstance(summary, dict) and isinstance(summary.get("settings"), dict) \
        else {}
    facts = steer_facts(rows, unsteered) if rows else []
    _settings(sec, facts, settings)
    sec.image(PLOT, "target-language rate against damage over the steering strength, the language's neurons "
              "against random ones", Markup("Target-language rate against damage (the unsteered model's perplexity "
                                            "of the generated text) over the strength: the target language's neurons "
                                            "(red) against random neurons of the same count per layer and kind "
                                            "(grey, mean of the seeds, their range as bars); the unsteered model as "
                                            "a star."))
    for i, fact in enumerate(facts):
        _measures(sec, fact, paper=i == 0)
    if generations:
        _generations(sec, generations, facts)


def _settings(sec: Section, facts: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    if not facts:
        return
    f = facts[0]
    edit = {"set": "x ← (1 − a)·x + a·s", "add": "x ← x + a·s", "scale": "x ← a·x"}.get(f["mode"])
    what = (Markup("mode {}, each neuron's activation {}").format(f["mode"], edit) if edit else f"mode {f['mode']}")
    stat = (Markup(", s = the target language's {} activation").format(f["stat"]) if f["mode"] in ("set", "add")
            else "")
    kinds = settings.get("kinds")
    layers = settings.get("layers")
    sec.add(el("p", Markup(
        "Prompts in {}, steered to {} ({}) with {} neurons{}{} ({}{}, a = the strength); positions: {}; {} random "
        "seed{}{}. Target-language rate: the share of generations the sentence-level identifier labels as the "
        "target; damage: the unsteered model's perplexity of the generated tokens (read it against random neurons "
        "at the same strength).").format(
        el("code", f["source"]), el("code", f["target"]), language_name(f["target"]), count(f["neurons"]),
        f" of the kinds {', '.join(kinds)}" if kinds else "", f" in {len(layers)} layers" if layers else "",
        what, stat, settings.get("positions", "all"), len(f["seeds"]), "s" if len(f["seeds"]) != 1 else "",
        f"; at most {settings['max_new_tokens']} new tokens" if settings.get("max_new_tokens") else "")))


def _row_cells(rows: list[dict[str, str]], with_f1: bool) -> list[H.Cell]:
    """Measures of one row, or the mean over several (the random seeds, with the rate's range)."""
    rate = _mean(rows, "target_rate")
    rates = [v for v in (as_float(r.get("target_rate")) for r in rows) if v is not None]
    spread = f" ({sig(100 * min(rates))}–{pct(max(rates))})" if len(rates) > 1 and min(rates) != max(rates) else ""
    n = sum(int(as_float(r.get("n")) or 0) for r in rows)
    cells = [H.Cell(count(n) if n else "–", num=True), H.Cell(pct(rate) + spread, num=True),
             H.Cell(pct(_mean(rows, "target_prob_mass")), num=True), H.Cell(sig(_mean(rows, "target_rank")), num=True),
             H.Cell(sig(_mean(rows, "damage_ppl")), num=True), H.Cell(sig(_mean(rows, "distinct_2")), num=True)]
    if with_f1:
        cells.append(H.Cell(sig(_mean(rows, "f1")), num=True))
    return cells


def _measures(sec: Section, f: dict[str, Any], paper: bool) -> None:
    anchor = sec.sub_id(f"{f['source']}-{f['target']}")
    all_rows = [*f["specific"].values(), *(r for rs in f["random"].values() for r in rs)]
    with_f1 = any((as_float(r.get("n_f1")) or 0) > 0 for r in all_rows)
    body = []
    if f["unsteered"]:
        body.append([H.Cell("unsteered", header=True), H.Cell("–", num=True), *_row_cells([f["unsteered"]], with_f1)])
    k = len(f["seeds"])
    for s in f["strengths"]:
        if s in f["specific"]:
            body.append([H.Cell("its own neurons", header=True), H.Cell(_strength(s), num=True),
                         *_row_cells([f["specific"][s]], with_f1)])
        if f["random"].get(s):
            body.append([H.Cell(f"random neurons{f' (mean of {k} seeds)' if k > 1 else ''}", header=True),
                         H.Cell(_strength(s), num=True), *_row_cells(f["random"][s], with_f1)])
    head = ["steered with", H.Cell("strength", num=True), H.Cell("generations", num=True),
            H.Cell("target-language rate", num=True), H.Cell("target mass, first token", num=True),
            H.Cell("target rank, first token", num=True), H.Cell("damage (perplexity)", num=True),
            H.Cell("distinct bigrams", num=True)]
    if with_f1:
        head.append(H.Cell("F1 (target answer)", num=True))
    sec.add(el("div", H.table(
        head, body, caption=Markup(
            "{} prompts steered to {}: target-language rate (for random neurons in brackets the seeds' range), the "
            "probability of all target-language tokens at the first generated position and the median rank of the "
            "best of them (1 = top-1), damage = the unsteered model's perplexity of the generation (lower: more "
            "fluent by its measure), distinct token bigrams per generation (low: repetition)").format(
            f["source"], f["target"])), id=anchor))
    _finding(sec, f, anchor, paper)


def _finding(sec: Section, f: dict[str, Any], anchor: str, paper: bool) -> None:
    s = f["strongest"]
    spec = f["specific"].get(s)
    if spec is None:
        return
    rand = f["random"].get(s) or []
    base = f["unsteered"]
    r_rate, r_damage = _mean(rand, "target_rate"), _mean(rand, "damage_ppl")
    rate, damage = as_float(spec["target_rate"]), as_float(spec["damage_ppl"])
    b_rate, b_damage = (as_float(base["target_rate"]), as_float(base["damage_ppl"])) if base else (None, None)
    seeds = f" (mean of {len(f['seeds'])} seeds)" if len(f["seeds"]) > 1 else ""
    text = (Markup("Steering {source} prompts to {target} with {target}'s {n} neurons at the strongest setting "
                   "({mode}, strength {s}): target-language rate {rate}").format(
        source=f["source"], target=f["target"], n=count(f["neurons"]), mode=f["mode"], s=_strength(s), rate=pct(rate))
            + (f" against {pct(r_rate)} with as many random neurons{seeds}" if rand else "")
            + (f" and {pct(b_rate)} unsteered" if base else "")
            + f"; damage (perplexity) {sig(damage)}" + (f" against {sig(r_damage)} (random)" if rand else "")
            + (f" and {sig(b_damage)} (unsteered)" if base else "") + ".")
    verdict = []
    if rate is not None and b_rate is not None and rate <= b_rate:
        verdict.append("no more target-language output than the unsteered model")
    if rate is not None and r_rate is not None and rate <= r_rate:
        verdict.append("no better than random neurons")
    if verdict:
        text += Markup(" The language's own neurons give {} here.").format(" and ".join(verdict))
    best_s = max(f["specific"], key=lambda x: (as_float(f["specific"][x]["target_rate"]) or 0.0, -abs(x or 0.0)))
    best_rate = as_float(f["specific"][best_s]["target_rate"])
    if best_s != s and best_rate is not None and rate is not None and best_rate > rate:
        text += f" The highest rate of its own neurons is {pct(best_rate)}, at strength {_strength(best_s)}."
    sec.finding(text, anchor=anchor)
    if paper and rand and rate is not None and r_rate is not None:
        sec.paper(Markup("The paper switches language-specific neurons off; switching them on to steer the output "
                         "language follows Kojima et al. (2024), Tang et al. (2024, LAPE) and Gurgurov et al. (2025), "
                         "who report that it changes the output language. Here, at strength {}, the target's own "
                         "neurons give a target-language rate of {} against {} for random neurons{}").format(
            _strength(s), pct(rate), pct(r_rate), ": more than random." if rate > r_rate else ": no more than random."))


def _text_cell(text: Any, language: Any) -> H.Cell:
    return H.generation_cell(text, language, MAX_CHARS)


def _generations(sec: Section, generations: list[dict[str, Any]], facts: list[dict[str, Any]]) -> None:
    """The first prompts: unsteered, the own neurons and the first random seed at the strongest setting."""
    s = facts[0]["strongest"] if facts else max((as_float(g["strength"]) or 0.0 for g in generations), default=None)
    first_seed = min((g["seed"] for g in generations if g["method"] == "random" and g["seed"] is not None),
                     default=None)
    by_prompt: dict[str, dict[str, Any]] = {}
    for g in generations:
        if as_float(g["strength"]) != s:
            continue
        pid = str(g.get("prompt_id") or g["prompt"])
        entry = by_prompt.setdefault(pid, {"prompt": g["prompt"], "unsteered": (g["unsteered_text"],
                                                                                g["unsteered_language"])})
        if g["method"] == "specific":
            entry["specific"] = (g["text"], g["detected_language"])
        elif g["method"] == "random" and g["seed"] == first_seed:
            entry["random"] = (g["text"], g["detected_language"])
    shown = list(by_prompt.values())[:SHOWN_PROMPTS]
    if not shown:
        return
    body = []
    for e in shown:
        body.append([H.Cell(H.short_text(e["prompt"], MAX_PROMPT_CHARS), style="overflow-wrap:anywhere"),
                     _text_cell(*e["unsteered"]), _text_cell(*e.get("specific", ("", "–"))),
                     _text_cell(*e.get("random", ("", "–")))])
    n_prompts = len({str(g.get("prompt_id") or g["prompt"]) for g in generations})
    sec.table(["prompt", "unsteered", f"its own neurons, strength {_strength(s)}",
               f"random neurons (seed {first_seed}), strength {_strength(s)}"], body,
              caption=Markup("Generations of the first {} of {} prompts (greedy; detected language in brackets; "
                             "shortened to {} characters). Every generation is in {}, prompt by prompt in {}.").format(
                  len(shown), n_prompts, MAX_CHARS, el("code", GENERATIONS.name), el("code", GENERATIONS_MD)))


register_results_kind(ResultsKind("steer", "Steering the output language", _recognise, render_steer, order=45,
                                  claims_subfolders=True))
