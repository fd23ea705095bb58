"""Results kind ``confusion`` (``mwork confusion run`` / ``score``): the Language Confusion
Benchmark -- per language, the line-level pass rate with and without each lever (the bars of
``lcb.png`` and a table with WPR and fluency beside), the overall rates per lever and task, and
sample completions with the lines the identifier puts in another language highlighted (every
text escaped: a completion is a model's output, never markup)."""

from __future__ import annotations

from typing import Any

import mwork.report.html as H
from mwork.confusion.tables import (LCB_CSV, LCB_JSON, LCB_NUMERIC, LCB_PNG, LCB_REQUIRED, SAMPLE_KEYS,
                                    SAMPLES_JSONL)
from mwork.report.format import as_float, count, language_name, pct, sig
from mwork.report.html import Markup, el
from mwork.report.registry import FolderView, ResultsKind, register_results_kind
from mwork.report.section import Section

ALL = "all"
NONE = "none"
MAX_LINE_CHARS = 200  # of a completion line shown on the page (the whole text is in completions.csv)
MAX_LINES = 8


def _recognise(folder: FolderView) -> bool:
    return folder.has(LCB_CSV) and folder.any(LCB_JSON, SAMPLES_JSONL)


def _lever(row: dict[str, Any]) -> str:
    return row.get("lever") or NONE  # a scored file (mwork confusion score) has no lever: the model as it is


def render_confusion(sec: Section) -> None:
    rows = sec.csv(LCB_CSV, required=LCB_REQUIRED, numeric=LCB_NUMERIC) or []
    meta = sec.json(LCB_JSON)
    info = meta if isinstance(meta, dict) else {}
    _intro(sec, info, rows)
    sec.image(LCB_PNG, "line-level pass rate per language and lever", Markup(
        "Line-level pass rate (LPR: the share of completions whose every scored line is in the expected language) per "
        "language, averaged over its test sets, for each lever."))
    if rows:
        _overall(sec, rows)
        _languages(sec, rows)
    samples = sec.jsonl(SAMPLES_JSONL, required=SAMPLE_KEYS)
    if samples:
        _samples(sec, samples)


def _intro(sec: Section, info: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    settings = info.get("settings") if isinstance(info.get("settings"), dict) else {}
    levers = list(dict.fromkeys(_lever(r) for r in rows))
    model = info.get("model") or next((r.get("model") for r in rows if r.get("model")), None) or "–"
    if "shots" in settings:
        how = Markup("{} ({}), {}").format(
            "chat template" if settings.get("chat") else f"{settings.get('shots')}-shot Q:/A: format",
            "greedy" if settings.get("greedy") else
            f"nucleus p {settings.get('top_p')}, temperature {settings.get('temperature')}",
            f"at most {settings.get('max_new_tokens')} new tokens")
    else:
        how = Markup("completions read from {}").format(el("code", str(info.get("input", "a file"))))
    sec.add(el("p", Markup(
        "Model {}, {}; levers {}. Each completion is scored as the benchmark scores it: cut at the first "
        "{}, lines of at least 5 tokens identified with fastText lid.176 (threshold 0.3); WPR (no English word in a "
        "line-passing completion) only for ar, hi, ja, ko, ru, zh; LCPR their harmonic mean.").format(
        el("code", str(model)), how, ", ".join(levers) or "–", el("code", "\\nQ:"))))


def _tops(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(_lever(r), r["task"]): r for r in rows if r["source"] == ALL and r["language"] == ALL}


def _overall(sec: Section, rows: list[dict[str, Any]]) -> None:
    tops = _tops(rows)
    if not tops:
        return
    anchor = sec.sub_id("overall")
    body = [[H.Cell(lever, header=True), task, H.Cell(count(r.get("n")), num=True),
             H.Cell(pct(r.get("lpr")), num=True, style=H.shade(as_float(r.get("lpr")))),
             H.Cell(pct(r.get("wpr")), num=True), H.Cell(pct(r.get("lcpr")), num=True),
             H.Cell(sig(r.get("distinct2")), num=True), H.Cell(sig(r.get("ppl")), num=True)]
            for (lever, task), r in tops.items()]
    sec.add(el("div", H.table(
        ["lever", "task", H.Cell("n", num=True), H.Cell("LPR", num=True), H.Cell("WPR", num=True),
         H.Cell("LCPR", num=True), H.Cell("distinct-2", num=True), H.Cell("perplexity", num=True)], body,
        caption=Markup("Overall rates per lever and task (the mean over languages of each language's mean over its "
                       "test sets); fluency beside: distinct token bigrams of the completions and the unmodified "
                       "model's perplexity of them (empty where not measured).")), id=anchor))
    _findings(sec, tops, anchor)


def _findings(sec: Section, tops: dict[tuple[str, str], dict[str, Any]], anchor: str) -> None:
    for task in dict.fromkeys(t for _, t in tops):
        base = tops.get((NONE, task))
        if base is None or as_float(base.get("lpr")) is None:
            continue
        text = Markup("{}: LPR {} for the model as it is").format(task or "the completions", pct(base.get("lpr")))
        others = [(lever, r) for (lever, t), r in tops.items() if t == task and lever != NONE
                  and as_float(r.get("lpr")) is not None]
        if others:
            best_lever, best = max(others, key=lambda x: as_float(x[1]["lpr"]) or 0.0)
            text += Markup("; the best lever is {} at {} (distinct-2 {} against {}, perplexity {} against {})").format(
                best_lever, pct(best["lpr"]), sig(best.get("distinct2")), sig(base.get("distinct2")),
                sig(best.get("ppl")), sig(base.get("ppl")))
        sec.finding(text + ".", anchor=anchor)
    sec.paper(Markup("Marchisio et al. (2024) report LPR 98.6–99.3 % for Command R and OpenAI models and 48.3–73.0 % "
                     "for Llama-2/3-Instruct and Mistral; few-shot prompting lifts a base model from 1.1 % to 95 %."))


def _languages(sec: Section, rows: list[dict[str, Any]]) -> None:
    per = [r for r in rows if r["source"] == ALL and r["language"] != ALL and r["task"] != ALL]
    if not per:
        return
    levers = list(dict.fromkeys(_lever(r) for r in per))
    table = {(r["task"], r["language"], _lever(r)): r for r in per}
    keys = list(dict.fromkeys((r["task"], r["language"]) for r in per))
    head = ["task", "language", *(H.Cell(f"LPR {lever}", num=True) for lever in levers),
            *(H.Cell(f"WPR {lever}", num=True) for lever in levers)]
    body = []
    for task, lang in keys:
        cells = [table.get((task, lang, lever)) or {} for lever in levers]
        body.append([task, H.Cell(f"{language_name(lang)} ({lang})", header=True),
                     *(H.Cell(pct(c.get("lpr")), num=True, style=H.shade(as_float(c.get("lpr")))) for c in cells),
                     *(H.Cell(pct(c.get("wpr")), num=True) for c in cells)])
    sec.table(head, body, caption="Per language (the mean over its test sets): LPR and WPR with each lever "
                                  "(– where no completion had a line to score, or WPR does not apply).")


def _line(text: Any, label: Any, expected: str) -> Markup:
    shown = str(text)
    shown = shown if len(shown) <= MAX_LINE_CHARS else shown[:MAX_LINE_CHARS - 1] + "…"
    if label is None:
        return el("span", shown, class_="sub")
    if label != expected:
        return el("mark", shown, " ", el("span", f"[{label}]", class_="sub"), title=f"identified as {label}")
    return el("span", shown)


def _samples(sec: Section, samples: list[dict[str, Any]]) -> None:
    body = []
    for s in samples:
        lines = s.get("lines") if isinstance(s.get("lines"), list) else []
        expected = str(s.get("language"))
        shown = [x for x in lines if isinstance(x, list) and len(x) == 2][:MAX_LINES]
        parts = [_line(text, label, expected) for text, label in shown] or [el("span", "(empty)", class_="sub")]
        text = H.concat(*[H.concat(p, el("br")) if i < len(parts) - 1 else p for i, p in enumerate(parts)])
        body.append([H.Cell(str(s.get("lever")), header=True), str(s.get("task")), f"{s.get('source')} #"
                     f"{s.get('prompt_number')}", str(s.get("language")),
                     H.Cell(raw=text, style="overflow-wrap:anywhere")])
    sec.add(H.details("sample completions, the confused lines highlighted", H.table(
        ["lever", "task", "test set", "expected", "completion (cut at \\nQ:)"], body, caption=Markup(
            "Up to two completions per lever, task and language, those with a line in another language first; a "
            "highlighted line is identified as the language in brackets, a grey one is too short to be scored; "
            "lines shortened to {} characters (every completion is in {}).").format(
            MAX_LINE_CHARS, el("code", "completions.csv")))))


register_results_kind(ResultsKind("confusion", "Language confusion (LCB)", _recognise, render_confusion, order=47))
