"""Results kinds ``latent`` (``mwork latent``: Wendler-style word tasks, P(target) against
P(English) per layer and lens) and ``tuned_lens`` (``mwork lens train``: held-out KL per layer)."""

from __future__ import annotations

import mwork.report.html as H
from mwork.report.format import as_float, language_name, sig
from mwork.report.html import Markup, el
from mwork.report.registry import FolderView, ResultsKind, register_results_kind
from mwork.report.section import Section

SUMMARY_COLUMNS = ("task", "source", "target", "lens", "n_items", "english_peak_layer", "english_peak",
                   "target_overtakes_layer", "target_peak", "p_target_last")


def _recognise(folder: FolderView) -> bool:
    return folder.any("latent.csv", "latent_summary.csv")


def _pair(row: dict[str, str]) -> str:
    return row["target"] if row["source"] == row["target"] else f"{row['source']}→{row['target']}"


def _english_phase(row: dict[str, str]) -> bool:
    """P(English word) reaches 0.1 and peaks before the target word does."""
    peak, e_layer, t_layer = as_float(row["english_peak"]), row["english_peak_layer"], row.get("target_peak_layer")
    if peak is None or peak < 0.1 or not e_layer or not t_layer:
        return False
    return int(e_layer) < int(t_layer)


def render_latent(sec: Section) -> None:
    info = sec.json("latent.json") if sec.exists("latent.json") else None
    info = info if isinstance(info, dict) else {}
    tasks = list(dict.fromkeys((info.get("config") or {}).get("tasks") or ("translation", "repetition", "cloze")))
    for task in tasks:
        sec.image(f"latent_{task}.png", f"P(target word) and P(English word) per layer, {task} task",
                  Markup("{} task: per layer, the probability of the target-language word (solid) and of its English "
                         "translation (dashed), one panel per lens (Wendler et al. 2024's figure).").format(task))
    rows = sec.csv("latent_summary.csv", required=SUMMARY_COLUMNS,
                   numeric=("english_peak", "target_peak", "p_target_last"))
    if not rows:
        return
    body = []
    for r in rows:
        over = r["target_overtakes_layer"] or "never"
        body.append([r["task"], f"{_pair(r)} ({language_name(r['target'])})", r["lens"], H.Cell(r["n_items"]),
                     H.Cell(f"{sig(as_float(r['english_peak']))} (layer {r['english_peak_layer']})"), H.Cell(over),
                     H.Cell(sig(as_float(r["p_target_last"])))])
    sec.table(["task", "pair", "lens", H.Cell("items", num=True), H.Cell("English peak", num=True),
               H.Cell("target overtakes from layer", num=True), H.Cell("P(target), last layer", num=True)], body,
              caption="Per task, language pair and lens: where P(English word) peaks and from which layer P(target "
                      "word) stays above it")
    survival = info.get("survival") or []
    if survival:
        sec.add(H.details("Items that survive the first-token filter", H.table(
            ["task", "pair", H.Cell("with every word", num=True), H.Cell("kept", num=True), H.Cell("used", num=True)],
            [[s.get("task", ""), f"{s.get('source')}→{s.get('target')}", H.Cell(s.get("candidates")),
              H.Cell(s.get("kept")), H.Cell(s.get("used"))] for s in survival])))
    by_lens: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_lens.setdefault(r["lens"], []).append(r)
    parts = []
    for lens, rs in by_lens.items():
        n_en = sum(1 for r in rs if _english_phase(r))
        parts.append(f"{lens} lens: {n_en} of {len(rs)} task–language pairs")
    sec.paper(Markup("The paper reads English in the middle layers off the share of English among decoded tokens; "
                     "Wendler et al. measure it on word tasks as the probability of the English word before the "
                     "target word takes over."))
    sec.finding(Markup("Word tasks: an English phase (P(English word) ≥ 0.1 peaking before the target word's peak) in "
                       "{}.").format("; ".join(parts)), anchor=sec.id)


def _recognise_tuned(folder: FolderView) -> bool:
    return folder.any("tuned_lens_kl.csv", "tuned_lens.safetensors")


def render_tuned(sec: Section) -> None:
    rows = sec.csv("tuned_lens_kl.csv", required=("layer", "kl_logit", "kl_tuned"), numeric=("kl_logit", "kl_tuned"))
    info = sec.json("tuned_lens.json") if sec.exists("tuned_lens.json") else None
    info = info if isinstance(info, dict) else {}
    if not rows:
        return
    sec.table(["layer", H.Cell("KL, logit lens", num=True), H.Cell("KL, tuned lens", num=True)],
              [[r["layer"], H.Cell(sig(as_float(r["kl_logit"]))), H.Cell(sig(as_float(r["kl_tuned"])))] for r in rows],
              caption="Held-out KL(final layer ‖ lens) per layer, nats")
    if info:
        sec.add(el("p", f"Trained on {info.get('train_tokens')} positions of {', '.join(info.get('texts') or [])}; "
                        f"held-out KL on {info.get('heldout_positions')} positions; timing {info.get('timing')}."))
    mid = rows[:-1]
    if mid:
        a = sum(as_float(r["kl_logit"]) for r in mid) / len(mid)
        b = sum(as_float(r["kl_tuned"]) for r in mid) / len(mid)
        sec.finding(Markup("Tuned lens: mean held-out KL to the final layer over layers 0–{} is {} nats against the "
                           "logit lens's {}.").format(len(mid) - 1, sig(b), sig(a)), anchor=sec.id)


register_results_kind(ResultsKind("latent", "Latent language (word tasks)", _recognise, render_latent, order=11))
register_results_kind(ResultsKind("tuned_lens", "Tuned lens", _recognise_tuned, render_tuned, order=12))
