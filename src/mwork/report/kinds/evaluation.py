"""Results kind ``eval`` (``mwork eval``: ``mwork_eval.json`` beside lm-eval's own
``<model>/results_*.json`` and ``samples_*.jsonl``): each task's main metric, and, where a
sibling folder holds the same evaluation without neurons off (or with random neurons like the
same set), the score with and without them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mwork.report.html as H
from mwork.report.format import as_float, count, sig
from mwork.report.html import Markup, el
from mwork.report.read import BadResultFile, read_json
from mwork.report.registry import FolderView, ResultsKind, register_results_kind
from mwork.report.section import Section

RECORD = "mwork_eval.json"
# settings that must agree for two runs to be compared (the neurons switched off may differ)
SAME = ("model", "include_path", "limit", "num_fewshot", "max_length", "dtype", "bootstrap_iters")
LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "byte_perplexity", "word_perplexity", "bpb")


def _recognise(folder: FolderView) -> bool:
    return folder.has(RECORD)


# ---- what one run measured --------------------------------------------------------------------
def main_metric(task: str, res: dict[str, Any], config: dict[str, Any] | None) -> tuple[str, str, str] | None:
    """``(key, metric, filter)`` of a task's main metric in lm-eval's results: the first of its
    config's ``metric_list`` under its first filter, else the first number that is no stderr."""
    if isinstance(config, dict) and config.get("metric_list"):
        metric = str(config["metric_list"][0].get("metric"))
        filters = [str(f.get("name")) for f in config.get("filter_list") or [] if isinstance(f, dict)] or ["none"]
        for flt in filters:
            if f"{metric},{flt}" in res:
                return f"{metric},{flt}", metric, flt
    for key, value in res.items():
        if "," in key and "_stderr," not in key and as_float(value) is not None and not isinstance(value, bool):
            metric, flt = key.split(",", 1)
            return key, metric, flt
    return None


def run_scores(record: dict[str, Any], lm: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per task of ``mwork_eval.json``'s results: its main metric's value, stderr, direction and
    document count (the configs and directions from lm-eval's results file, when readable)."""
    lm = lm if isinstance(lm, dict) else {}
    configs = lm.get("configs") if isinstance(lm.get("configs"), dict) else {}
    better = lm.get("higher_is_better") if isinstance(lm.get("higher_is_better"), dict) else {}
    n_samples = lm.get("n-samples") if isinstance(lm.get("n-samples"), dict) else {}
    out = {}
    results = record.get("results") if isinstance(record.get("results"), dict) else {}
    for task, res in results.items():
        if not isinstance(res, dict):
            continue
        found = main_metric(task, res, configs.get(task))
        if found is None:
            continue
        key, metric, flt = found
        higher = (better.get(task) or {}).get(metric) if isinstance(better.get(task), dict) else None
        if higher is None:
            higher = not any(word in metric for word in LOWER_IS_BETTER)
        n = res.get("sample_len")
        if n is None and isinstance(n_samples.get(task), dict):
            n = n_samples[task].get("effective")
        out[task] = {"metric": metric, "filter": flt, "value": as_float(res[key]),
                     "stderr": as_float(res.get(f"{metric}_stderr,{flt}")), "higher": bool(higher), "n": n}
    return out


def _stem(spec: Any) -> str:
    name = Path(str(spec)).name
    return name[:-len(".safetensors")] if name.endswith(".safetensors") else name


def role(record: dict[str, Any]) -> str:
    """``specific`` (a set switched off), ``random`` (random neurons like one) or ``none``."""
    iv = record.get("intervention") if isinstance(record.get("intervention"), dict) else {}
    if iv.get("random_like"):
        return "random"
    if iv.get("neurons"):
        return "specific"
    return "none"


def describe(record: dict[str, Any]) -> Markup:
    """What the run switched off, in words (Markup)."""
    iv = record.get("intervention") if isinstance(record.get("intervention"), dict) else {}
    n = count(iv.get("deactivated"))
    scale = as_float(iv.get("scale"))
    how = "switched off" if not scale else f"scaled by {sig(scale)}"
    where = []
    if iv.get("layers"):
        where.append(f"layers {','.join(map(str, iv['layers']))}")
    if iv.get("kinds"):
        where.append(f"kinds {','.join(map(str, iv['kinds']))}")
    place = f" ({'; '.join(where)})" if where else ""
    delta = (record.get("settings") or {}).get("delta") if isinstance(record.get("settings"), dict) else None
    merged = Markup(", the delta {} merged").format(el("code", _stem(delta))) if delta else ""
    kind = role(record)
    if kind == "specific":
        return Markup("{}'s {} neurons {}{}{}").format(el("code", _stem(iv["neurons"])), n, how, place, merged)
    if kind == "random":
        return Markup("{} random neurons like {}'s (seed {}) {}{}{}").format(
            n, el("code", _stem(iv["random_like"])), iv.get("seed", 0), how, place, merged)
    return Markup("the unmodified model") + merged


# ---- comparable runs beside this one ----------------------------------------------------------
def _comparable(a: dict[str, Any], b: dict[str, Any]) -> bool:
    sa, sb = a.get("settings") or {}, b.get("settings") or {}
    if not isinstance(sa, dict) or not isinstance(sb, dict):
        return False
    return all(sa.get(k) == sb.get(k) for k in SAME) and bool(set(sa.get("tasks") or []) & set(sb.get("tasks") or []))


def _same_off(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether random run ``b`` is drawn like the set run ``a`` switches off (same set name,
    count, restriction and scale)."""
    ia, ib = a.get("intervention") or {}, b.get("intervention") or {}
    return (_stem(ia.get("neurons")) == _stem(ib.get("random_like")) and ia.get("deactivated") == ib.get("deactivated")
            and all(ia.get(k) == ib.get(k) for k in ("layers", "kinds", "scale"))
            and (a.get("settings") or {}).get("delta") == (b.get("settings") or {}).get("delta"))


def _is_baseline_of(base: dict[str, Any], run: dict[str, Any]) -> bool:
    if role(base) != "none" or not _comparable(base, run):
        return False
    delta = (run.get("settings") or {}).get("delta")
    want = delta if role(run) != "none" else None
    return (base.get("settings") or {}).get("delta") == want and base is not run


def siblings(sec: Section) -> list[tuple[str, dict[str, Any]]]:
    """The other ``mwork eval`` folders beside this one (inside the results root), as
    ``(relative path, record)``; an unreadable record is left to its own section's warning."""
    if sec.folder.resolve() == sec.page.root.resolve():
        return []
    out = []
    for d in sorted(p for p in sec.folder.parent.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if d == sec.folder or not (d / RECORD).is_file():
            continue
        try:
            value = read_json(d / RECORD, required=("settings", "results"))
        except BadResultFile:
            continue
        if isinstance(value, dict):
            out.append((sec.page.rel(d), value))
    return out


def _lm_results(sec: Section, record: dict[str, Any]) -> dict[str, Any] | None:
    """lm-eval's newest ``results_*.json`` of this run (read through the section: a damaged one
    is a warning)."""
    listed = [f for f in record.get("files") or [] if isinstance(f, str) and Path(f).name.startswith("results_")
              and f.endswith(".json") and sec.exists(f)]
    if not listed:
        listed = sorted(p.relative_to(sec.folder).as_posix() for p in sec.folder.rglob("results_*.json"))
    if not listed:
        sec.add(H.note(Markup("lm-eval's {} is missing from this folder; the scores are {}'s.").format(
            el("code", "results_*.json"), el("code", RECORD))))
        return None
    newest = max(listed, key=lambda f: Path(f).name)
    value = sec.json(newest, required=("results",))
    return value if isinstance(value, dict) else None


# ---- the section ------------------------------------------------------------------------------
def _value(score: dict[str, Any] | None) -> str:
    if not score or score["value"] is None:
        return "–"
    return sig(score["value"]) + (f" ± {sig(score['stderr'])}" if score.get("stderr") else "")


def _change(after: dict[str, Any] | None, before: dict[str, Any] | None) -> float | None:
    if not after or not before or after["value"] is None or before["value"] is None:
        return None
    return after["value"] - before["value"]


def _signed(x: float | None) -> str:
    return "–" if x is None else ("+" if x > 0 else "") + sig(x)


def render_eval(sec: Section) -> None:
    record = sec.json(RECORD, required=("settings", "results"))
    if not isinstance(record, dict):
        return
    scores = run_scores(record, _lm_results(sec, record))
    settings = record.get("settings") if isinstance(record.get("settings"), dict) else {}
    limit = settings.get("limit")
    sec.add(el("p", Markup("Model {}, lm-eval {}; {}; {}{}{}.").format(
        el("code", settings.get("model", "?")), record.get("lm_eval_version", "?"), describe(record),
        f"at most {limit} documents per task" if limit else "every document",
        f", {settings['num_fewshot']}-shot" if settings.get("num_fewshot") is not None else "",
        f"; {sig(record['seconds'])} s" if as_float(record.get("seconds")) is not None else "")))
    if not scores:
        sec.add(H.note(Markup("{} holds no task scores.").format(el("code", RECORD))))
        return
    others = siblings(sec)
    base = next(((rel, r) for rel, r in others if _is_baseline_of(r, record)), None)
    randoms = [(rel, r) for rel, r in others if role(record) == "specific" and role(r) == "random"
               and _comparable(r, record) and _same_off(record, r)]
    base_scores = run_scores(base[1], None) if base else {}
    rand_scores = [(rel, run_scores(r, None)) for rel, r in randoms]
    head = ["task", "metric", H.Cell("this run", num=True), H.Cell("documents", num=True)]
    if base:
        head += [H.Cell(H.concat("without neurons off (", el("code", base[0]), ")"), num=True),
                 H.Cell("change", num=True)]
    for rel, _ in rand_scores:
        head.append(H.Cell(H.concat("random neurons (", el("code", rel), ")"), num=True))
    body = []
    for task, sc in scores.items():
        line = [task, f"{sc['metric']} ({sc['filter']}; {'higher' if sc['higher'] else 'lower'} is better)",
                H.Cell(_value(sc), num=True), H.Cell(count(sc["n"]) if sc["n"] is not None else "–", num=True)]
        if base:
            line += [H.Cell(_value(base_scores.get(task)), num=True),
                     H.Cell(_signed(_change(sc, base_scores.get(task))), num=True)]
        for _, rs in rand_scores:
            line.append(H.Cell(_value(rs.get(task)), num=True))
        body.append(line)
    anchor = sec.sub_id("scores")
    sec.add(el("div", H.table(
        head, body, caption=Markup("Each task's main metric (lm-eval's first metric of the task, first filter; ± its "
                                   "bootstrap standard error where lm-eval computed one)")
                            + (", beside the same evaluation in the folders next to this one" if base or randoms
                               else "")), id=anchor))
    _findings(sec, record, scores, base, base_scores, rand_scores, others, anchor)


def _task_text(task: str, sc: dict[str, Any], before: dict[str, Any] | None,
               randoms: list[dict[str, Any] | None]) -> str:
    text = f"{task} {sc['metric']} "
    text += f"{sig(before['value'])} → {sig(sc['value'])}" if before and before["value"] is not None else sig(sc["value"])
    rand = [r["value"] for r in randoms if r and r["value"] is not None]
    if rand:
        text += " (as many random neurons: " + ", ".join(sig(v) for v in rand) + ")"
    return text


def _findings(sec: Section, record: dict[str, Any], scores: dict[str, dict[str, Any]],
              base: tuple[str, dict[str, Any]] | None, base_scores: dict[str, dict[str, Any]],
              rand_scores: list[tuple[str, dict[str, dict[str, Any]]]], others: list[tuple[str, dict[str, Any]]],
              anchor: str) -> None:
    kind = role(record)
    here = el("code", sec.view.rel if sec.view.rel != "." else sec.folder.resolve().name)
    docs = sorted({sc["n"] for sc in scores.values() if sc["n"] is not None})
    n_docs = (f"; {count(docs[0])} documents per task" if len(docs) == 1 else
              f"; {count(docs[0])}–{count(docs[-1])} documents per task" if docs else "")
    tasks = [_task_text(t, sc, base_scores.get(t), [rs.get(t) for _, rs in rand_scores]) for t, sc in scores.items()]
    if kind == "none":
        # said by the runs that compare with it, unless none does
        if any(role(r) != "none" and _is_baseline_of(record, r) for _, r in others):
            return
        sec.finding(Markup("lm-eval on {} ({}): {}{}.").format(describe(record), here, "; ".join(tasks), n_docs),
                    anchor=anchor)
        return
    if kind == "random" and any(role(r) == "specific" and _comparable(r, record) and _same_off(r, record)
                                for _, r in others):
        return  # the run with the set's own neurons off says it
    text = Markup("lm-eval with {} ({}): {}{}").format(describe(record), here, "; ".join(tasks), n_docs)
    if base is None:
        sec.finding(text + " (no run without neurons off beside it to compare with).", anchor=anchor)
        return
    text += Markup("; without neurons off: {}.").format(el("code", base[0]))
    compared = [(t, _change(sc, base_scores.get(t)), sc["higher"]) for t, sc in scores.items()
                if _change(sc, base_scores.get(t)) is not None]
    worse = [t for t, d, higher in compared if (d < 0 if higher else d > 0)]
    verdict = Markup(" The score is worse in {} of {} tasks").format(len(worse), len(compared))
    beats = 0
    if kind == "specific" and rand_scores:
        for t, d, higher in compared:
            r = [_change(rs.get(t), base_scores.get(t)) for _, rs in rand_scores]
            r = [x for x in r if x is not None]
            if r and d is not None:
                own_harm = -d if higher else d
                rand_harm = max(-x if higher else x for x in r)
                beats += own_harm > rand_harm
        verdict += Markup("; the set's own neurons hurt more than random ones in {} of {}").format(beats, len(compared))
        if beats == 0:
            verdict += ": no better than random here"
    text += verdict + "." if compared else ""
    sec.finding(text, anchor=anchor)
    if kind == "specific" and compared:
        sec.paper(Markup("The paper evaluates tasks (XQuAD, MGSM, ...) with a language's specific neurons switched off "
                         "and finds that language's scores drop while random neurons leave them about as they were. "
                         "Here the main metric is worse in {} of {} tasks").format(len(worse), len(compared))
                  + (f", and worse than with as many random neurons in {beats} of {len(compared)}."
                     if rand_scores else " (no random-neuron run beside it to compare with)."))


register_results_kind(ResultsKind("eval", "Task evaluation (lm-eval)", _recognise, render_eval, order=35,
                                  claims_subfolders=True))
