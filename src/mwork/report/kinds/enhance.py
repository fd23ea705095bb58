"""Results kinds ``enhance`` (``mwork enhance compare``, the demo's enhance stage: before/after per
method) and ``enhance-run`` (one ``mwork enhance`` run: its ``delta.json``)."""

from __future__ import annotations

import re
from typing import Any

import mwork.report.html as H
from mwork.report.format import as_float, change_pct, count, seconds, sig
from mwork.report.html import Markup, el
from mwork.report.registry import FolderView, ResultsKind, register_results_kind
from mwork.report.section import Section

PPL = re.compile(r"^ppl_(.+)_before$")
METHOD_NAMES = {"neurons": "only the language's neurons", "random": "as many random neurons", "lora": "LoRA",
                "full": "every parameter"}


def ppl_languages(row: dict[str, Any]) -> list[str]:
    """The evaluation sets of a ``compare.csv`` row (``ppl_<lang>_before`` columns), in order."""
    return [m.group(1) for c in row if (m := PPL.match(c))]


def task_columns(row: dict[str, Any]) -> list[str]:
    """Task score columns (``<task>_<lang>_before`` with ``_after`` and ``_change``), not perplexity."""
    return [c[:-len("_before")] for c in row if c.endswith("_before") and not c.startswith("ppl_")
            and f"{c[:-len('_before')]}_after" in row]


def _recognise(folder: FolderView) -> bool:
    return folder.any("compare.csv", "compare.json")


def render_compare(sec: Section) -> None:
    rows = sec.csv("compare.csv", required=("method", "trainable_parameters", "steps"))
    info = sec.json("compare.json", required=("rows",))
    info = info if isinstance(info, dict) else {}
    lang = ((info.get("neurons") or {}).get("meta") or {}).get("language")
    n_neurons = (info.get("neurons") or {}).get("count")
    lr = (info.get("settings") or {}).get("lr")
    if info:
        sec.add(el("p", Markup("Trained on {} {} documents{}; held-out perplexity (lower is better) before and after, "
                               "per evaluation set.").format(
            info.get("n_docs", "?"), el("code", lang or "?"),
            f" at learning rate {lr:g}" if isinstance(lr, (int, float)) else "")))
    if not rows:
        return
    for r in rows:
        if not ppl_languages(r):
            sec.warn(sec.path("compare.csv"), "has no ppl_<lang>_before columns; nothing to compare")
            return
    langs = ppl_languages(rows[0])
    tasks = task_columns(rows[0])
    body = []
    for r in rows:
        line = [METHOD_NAMES.get(r["method"], r["method"]) + f" ({r['method']})",
                H.Cell(count(r["trainable_parameters"]), num=True), H.Cell(r["steps"], num=True)]
        for ev in langs:
            line.append(H.Cell(f"{sig(r[f'ppl_{ev}_before'])} → {sig(r[f'ppl_{ev}_after'])} "
                               f"({change_pct(r.get(f'ppl_{ev}_change_pct'))})", num=True))
        for t in tasks:
            delta = as_float(r.get(f"{t}_change"))
            line.append(H.Cell(f"{sig(r[f'{t}_before'])} → {sig(r[f'{t}_after'])} "
                               f"({'+' if delta and delta > 0 else ''}{sig(delta)})", num=True))
        body.append(line)
    anchor = sec.sub_id("table")
    sec.add(el("div", H.table(
        ["trained", H.Cell("trainable parameters", num=True), H.Cell("steps", num=True),
         *(H.Cell(f"{ev} perplexity", num=True) for ev in langs), *(H.Cell(t, num=True) for t in tasks)], body,
        caption="Held-out perplexity before → after fine-tuning (change in %)"
                + ("; task scores before → after (change)" if tasks else "")), id=anchor))
    by = {r["method"]: r for r in rows}
    target = lang if lang in langs else langs[0]
    others = [ev for ev in langs if ev != target]

    def changes(r: dict[str, str]) -> str:
        return " and ".join(f"{change_pct(r.get(f'ppl_{ev}_change_pct'))} on {ev}" for ev in [target, *others])

    if "neurons" in by:
        r = by["neurons"]
        who = (Markup("{}'s {} language-specific neurons").format(lang, count(n_neurons)) if lang and n_neurons
               else "the language-specific neurons")
        steps = f"{r['steps']} step{'' if str(r['steps']).strip() == '1' else 's'}"
        text = Markup("Fine-tuning only {} ({} parameters, {}) changes held-out perplexity by {}").format(
            who, count(r["trainable_parameters"]), steps, changes(r))
        rest = [m for m in by if m != "neurons"]
        if rest:
            text += "; " + "; ".join(f"{METHOD_NAMES.get(m, m)}: {changes(by[m])}" for m in rest)
        sec.finding(text + ".", anchor=anchor)
        gain = as_float(r.get(f"ppl_{target}_change_pct"))
        en = as_float(r.get("ppl_en_change_pct")) if "en" in langs and target != "en" else None
        verdict = ""
        if gain is not None:
            verdict = (f" Here {target} perplexity {'falls' if gain < 0 else 'rises'} by "
                       f"{sig(abs(gain))} %" + (f" and English {'falls' if en < 0 else 'rises'} by {sig(abs(en))} %"
                                               if en is not None else "") + ".")
        sec.paper(Markup("§5 (Table 7) fine-tunes only a language's neurons on a little text of that language, which "
                         "improves that language while leaving English about as it was.{}").format(verdict))


def _recognise_run(folder: FolderView) -> bool:
    return folder.has("delta.json") or folder.has("train.json")


def render_run(sec: Section) -> None:
    name = "delta.json" if sec.exists("delta.json") else "train.json"
    meta = sec.json(name)
    if not isinstance(meta, dict):
        return
    losses = [x for x in (meta.get("losses") or []) if as_float(x) is not None]
    steps = (meta.get("steps") or {}).get("done") if isinstance(meta.get("steps"), dict) else meta.get("steps")
    rows = [["method", str(meta.get("method", "?"))],
            ["trainable parameters", count(meta.get("trainable_parameters"))],
            ["steps", str(steps if steps is not None else "?")],
            ["training loss, first → last step", f"{sig(losses[0])} → {sig(losses[-1])}" if losses else "–"],
            ["wall time", seconds(meta.get("wall_time_s"))],
            ["finished", "yes" if meta.get("finished", True) else "no (resumable)"]]
    sec.table(["", "value"], rows, caption=f"One fine-tuning run ({name})", cls="kv")


register_results_kind(ResultsKind("enhance", "Enhancement: fine-tuning a language's neurons", _recognise,
                                  render_compare, order=40, claims_subfolders=True))
register_results_kind(ResultsKind("enhance-run", "Enhancement run", _recognise_run, render_run, order=41))
