"""Results kind ``bench`` (the JSON object ``mwork bench detect`` prints, saved as ``bench.json``):
what neuron importance costs next to a plain forward pass."""

from __future__ import annotations

import mwork.report.html as H
from mwork.report.format import as_float, seconds, sig, times
from mwork.report.html import Markup, el
from mwork.report.registry import FolderView, ResultsKind, register_results_kind
from mwork.report.section import Section


def _recognise(folder: FolderView) -> bool:
    return folder.has("bench.json")


def _mb(x: object) -> str:
    v = as_float(x)
    return "–" if v is None else f"{sig(v)} MB"


def render_bench(sec: Section) -> None:
    r = sec.json("bench.json", required=("forward_s", "importance_s"))
    if not isinstance(r, dict):
        return
    sec.add(el("p", Markup("Model {}, {} document(s) of {} tokens, {} threads, Q/K kernel {}; medians over {} "
                           "interleaved repeats.").format(
        el("code", r.get("model", "?")), r.get("docs", "?"), r.get("seq_len", "?"), r.get("threads", "?"),
        r.get("qk_kernel", "?"), r.get("repeats", "?"))))
    rows = [["plain forward pass", seconds(r.get("forward_s")), "1×", _mb(r.get("peak_mem_forward_mb"))],
            ["importance, FFN + V", seconds(r.get("ffn_v_s")), times(r.get("ffn_v_overhead")),
             _mb(r.get("peak_mem_ffn_v_mb"))],
            ["importance, all kinds (exact Q/K)", seconds(r.get("importance_s")), times(r.get("overhead")),
             _mb(r.get("peak_mem_importance_mb"))]]
    if r.get("reference_s") is not None:
        rows.append(["the reference code's way", seconds(r.get("reference_s")),
                     times((as_float(r["reference_s"]) or 0) / (as_float(r.get("forward_s")) or 1)),
                     _mb(r.get("peak_mem_reference_mb"))])
    sec.table(["phase", H.Cell("time", num=True), H.Cell("against the forward pass", num=True),
               H.Cell("peak memory", num=True)], rows, caption="Time and peak resident memory per phase")
    if r.get("reference_s") is None and r.get("reference_status"):
        sec.add(H.note(Markup("Reference code's way: {}").format(r["reference_status"])))
    text = Markup("Neuron importance for every kind costs {} a plain forward pass").format(times(r.get("overhead")))
    if as_float(r.get("ffn_v_overhead")) is not None:
        text += f" (FFN + V only: {times(r.get('ffn_v_overhead'))})"
    if as_float(r.get("speedup_vs_reference")) is not None:
        text += Markup(", {} faster than the reference code's way").format(times(r.get("speedup_vs_reference")))
    sec.finding(text + ".")


register_results_kind(ResultsKind("bench", "Detection benchmark", _recognise, render_bench, order=60))
