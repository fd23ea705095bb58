"""The report's sections for `mwork experiment methods`, `mwork steer` and `mwork eval` folders:
recognised by their file names, findings with the files' numbers (and honest verdicts), a few
escaped generations, damaged files as warnings naming them, and the page's usual checks.

The folders are written by the producers' own writers (``write_outputs`` of the methods and
steering experiments) from results with known numbers, and for ``mwork eval`` in the format
``run_eval`` and lm-eval's ``EvaluationTracker`` write (running the producers on a tiny model
takes 20-40 s each here; ``test_real_producers_folders`` does that, marked slow)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from mwork.cli import main
from mwork.report import render_report
from mwork.report.format import pct, sig
from tests.browser import WIDTHS, inspect_report
from tests.test_report import _findings, _visible_text, needs_browser

# ---- mwork experiment methods -----------------------------------------------------------------
# (method, size) -> {lang: (own, others, [random per seed])}
METHOD_CELLS = {
    ("plnd", "0.5%"): {"en": (0.5, 0.1, [0.05, 0.07]), "fr": (0.7, 0.1, [0.02, 0.04])},
    ("lape", "0.5%"): {"en": (0.2, 0.1, [0.05, 0.05]), "fr": (0.3, 0.1, [0.05, 0.05])},
    ("plnd", "1%"): {"en": (0.3, 0.2, [0.4, 0.5]), "fr": (0.3, 0.1, [0.4, 0.6])},
    ("lape", "1%"): {"en": (0.6, 0.2, [0.7, 0.9]), "fr": (0.5, 0.2, [0.6, 0.8])},
}
SIZES = {"0.5%": 10, "1%": 20}
STABILITY = {("plnd", "0.5%"): [(0.5, 0.01), (0.7, 0.03)], ("lape", "0.5%"): [(0.2, 0.05), (0.4, 0.07)],
             ("plnd", "1%"): [(0.6, 0.02), (0.8, 0.04)], ("lape", "1%"): [(0.1, 0.05), (0.3, 0.07)]}


def write_methods(out: Path) -> dict:
    """A comparison folder written by ``mwork.experiments.methods.report.write_outputs``."""
    from mwork.experiments.methods import tables
    from mwork.experiments.methods.report import write_outputs

    selectivity = []
    for (m, size), langs in METHOD_CELLS.items():
        for lang, (own, others, rand) in langs.items():
            selectivity.append({"intervention": "zero", "method": m, "size": size, "lang": lang, "neurons": SIZES[size],
                                "own": own, "others": others, "random": statistics.fmean(rand),
                                "random_std": statistics.stdev(rand), "selectivity": own - others,
                                "own_minus_random": own - statistics.fmean(rand), "random_max": max(rand),
                                "beyond_rule": 0, "kinds": f"ffn={SIZES[size]}"})
    stability = [{"method": m, "size": size, "lang": lang, "neurons": SIZES[size], "jaccard": j, "chance": c,
                  "intersection": 1} for (m, size), vals in STABILITY.items() for lang, (j, c) in zip(("en", "fr"), vals)]
    agreement = [{"size": size, "lang": lang, "method_a": "plnd", "method_b": "lape", "layer": layer, "count_a": 5,
                  "count_b": 5, "intersection": 1, "jaccard": 0.25 if layer == "all" else 0.1}
                 for size in SIZES for lang in ("en", "fr") for layer in ("all", 0, 1)]
    matrix = [{"intervention": "zero", "method": m, "size": size, "neurons_of": t, "eval_lang": e,
               "ln_ppl_ratio": METHOD_CELLS[m, size][t][0 if t == e else 1]}
              for (m, size) in METHOD_CELLS for t in ("en", "fr") for e in ("en", "fr")]
    cost = [{"method": "forward", "tokens": 84, "seconds": 0.1, "s_per_1k_tokens": 1.19, "relative_to_forward": 1.0},
            {"method": "plnd", "tokens": 84, "seconds": 0.9, "s_per_1k_tokens": 10.7, "relative_to_forward": 9.0},
            {"method": "lape", "tokens": 84, "seconds": 0.11, "s_per_1k_tokens": 1.31, "relative_to_forward": 1.1}]
    info = {"model": "tiny-random-llama", "langs": ["en", "fr"], "methods": ["plnd", "lape"], "sizes": SIZES,
            "total_neurons": 2000, "seeds": [0, 1], "interventions": ["zero"]}
    langid = [{"method": m, "size": size, "variant": variant, "lang": lang, "n": 4, "correct": c, "accuracy": c / 4,
               "ties": 0, "fasttext_accuracy": 1.0, "chance": 0.5, "units": SIZES[size]}
              for (m, size) in METHOD_CELLS for variant, c in (("specific", 3), ("random0", 2))
              for lang in ("en", "fr", "all")]
    result = {"info": info, "selectivity": selectivity, "summary": tables.summary_rows(selectivity),
              "matrix": matrix, "stability": stability, "agreement": agreement, "cost": cost, "langid": langid}
    out.mkdir(parents=True)
    write_outputs(out, result)
    return result


# ---- mwork steer ------------------------------------------------------------------------------
PROMPTS = ["<b>bold</b> & 'quoted' prompt", "A second prompt", "A third prompt", "A fourth prompt"]
LONG = "word " * 120
SCRIPT = "<script>alert(1)</script> 你好"


def _metrics(rate: float, damage: float, mass: float = 0.1) -> dict:
    return {"n": len(PROMPTS), "target_rate": rate, "target_prob_mass": mass, "damage_ppl": damage,
            "target_prob_mass_mean": mass, "target_rank": 3.0, "target_lang_rank": 2.0, "token_target_share": rate,
            "distinct_1": 0.9, "distinct_2": 0.95, "f1": None, "n_f1": 0, "empty": 0}


def write_steer(out: Path, measures: dict) -> dict:
    """A sweep folder written by ``mwork.experiments.steering.report.write_outputs``; ``measures``:
    (method, seed, strength) -> (target rate, damage), and "unsteered" -> (rate, damage)."""
    from mwork.experiments.steering.report import write_outputs

    rows, generations = [], []
    for key, (rate, damage) in measures.items():
        if key == "unsteered":
            continue
        method, seed, s = key
        rows.append({"target": "zh", "source": "en", "method": method, "seed": seed, "strength": s, "mode": "set",
                     "stat": "mean", "positions": "all", "neurons": 40, "off": 0, **_metrics(rate, damage)})
        for i, prompt in enumerate(PROMPTS):
            text = f"steered {method} {seed} {s:g} {i}"
            if i == 0 and method == "specific" and s == 2.0:
                text = SCRIPT
            if i == 1 and method == "specific" and s == 2.0:
                text = LONG
            generations.append({"prompt": prompt, "prompt_id": f"p{i}", "strength": s, "method": method, "seed": seed,
                                "text": text, "detected_language": "zh" if method == "specific" else "en",
                                "lid_score": 0.9, "token_target_share": None, "f1": None,
                                "unsteered_text": f"plain answer {i}", "unsteered_language": "en"})
    rate, damage = measures["unsteered"]
    unsteered = {"target": "zh", "source": "en", **_metrics(rate, damage)}
    info = {"settings": {"target": "zh", "source": "en", "mode": "set", "stat": "mean", "positions": "all",
                         "layers": None, "kinds": ["ffn"], "max_new_tokens": 8}, "notes": [], "elapsed_s": 1.0,
            "sets": {}, "statistics": None}
    out.mkdir(parents=True)
    write_outputs(out, {"rows": rows, "unsteered": unsteered, "generations": generations, "info": info})
    # the sweep keeps the set with the statistics it measured (set/add modes): a NeuronSet's two files
    save_file({"mask.ffn": np.zeros((2, 4), dtype=bool)}, str(out / "neurons.safetensors"), metadata={"mwork": "{}"})
    (out / "neurons.json").write_text(json.dumps({"counts": {"ffn": [0, 0]}, "count": 0}))
    return {"rows": rows, "unsteered": unsteered}


STEER = {("specific", None, 0.0): (0.0, 10.0), ("specific", None, 1.0): (0.75, 20.0),
         ("specific", None, 2.0): (0.5, 40.0), ("random", 0, 0.0): (0.0, 10.0), ("random", 0, 1.0): (0.0, 15.0),
         ("random", 0, 2.0): (0.0, 20.0), ("random", 1, 0.0): (0.0, 10.0), ("random", 1, 1.0): (0.25, 15.0),
         ("random", 1, 2.0): (0.25, 30.0), "unsteered": (0.0, 10.0)}
# the language's own neurons no better than random ones
STEER_FLAT = {("specific", None, 0.0): (0.0, 10.0), ("specific", None, 3.0): (0.1, 50.0),
              ("random", 0, 0.0): (0.0, 10.0), ("random", 0, 3.0): (0.2, 30.0), "unsteered": (0.0, 10.0)}


# ---- mwork eval -------------------------------------------------------------------------------
XQUAD, MGSM = "mwork_xquad_mc_zh", "mwork_mgsm_direct_zh"
STAMP = "2026-01-02T03-04-05.678901"


def write_eval(out: Path, scores: dict, intervention: dict | None = None, stderr: float | None = None) -> None:
    """An ``mwork eval`` folder as ``run_eval`` writes it: ``mwork_eval.json`` and lm-eval's
    ``<model>/results_<date>.json`` and ``samples_<task>_<date>.jsonl``. ``scores``: task -> value."""
    iv = intervention or {}
    se = "N/A" if stderr is None else stderr
    results = {XQUAD: {"name": XQUAD, "alias": XQUAD, "sample_len": 3, "acc,none": scores[XQUAD], "acc_stderr,none": se,
                       "acc_norm,none": 0.999, "acc_norm_stderr,none": se},
               MGSM: {"name": MGSM, "alias": MGSM, "sample_len": 3, "exact_match,remove_whitespace": scores[MGSM],
                      "exact_match_stderr,remove_whitespace": se, "exact_match,flexible-extract": 0.888,
                      "exact_match_stderr,flexible-extract": se}}
    settings = {"model": "tiny-random-llama", "tasks": [XQUAD, MGSM], "include_path": "tasks", "neurons": iv.get("neurons"),
                "random_like": iv.get("random_like"), "seed": iv.get("seed"), "layers": None, "kinds": None,
                "scale": 0.0, "delta": None, "limit": 3, "num_fewshot": None, "batch_size": 2, "max_length": None,
                "bootstrap_iters": 0, "log_samples": True, "dtype": None}
    model = out / "tiny-random-llama"
    model.mkdir(parents=True)
    configs = {XQUAD: {"task": XQUAD, "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                                      {"metric": "acc_norm", "aggregation": "mean",
                                                       "higher_is_better": True}], "output_type": "multiple_choice"},
               MGSM: {"task": MGSM, "metric_list": [{"metric": "exact_match", "aggregation": "mean",
                                                     "higher_is_better": True}],
                      "filter_list": [{"name": "remove_whitespace", "filter": []},
                                      {"name": "flexible-extract", "filter": []}], "output_type": "generate_until"}}
    (model / f"results_{STAMP}.json").write_text(json.dumps(
        {"results": results, "group_subtasks": {}, "configs": configs, "versions": {XQUAD: 1.0, MGSM: 1.0},
         "n-shot": {XQUAD: 0, MGSM: 0}, "higher_is_better": {XQUAD: {"acc": True, "acc_norm": True},
                                                           MGSM: {"exact_match": True}},
         "n-samples": {XQUAD: {"original": 6, "effective": 3}, MGSM: {"original": 6, "effective": 3}},
         "config": {"model": "", "mwork_intervention": iv}, "model_name": "tiny-random-llama",
         "lm_eval_version": "0.4.13"}, indent=2, ensure_ascii=False))
    for task in (XQUAD, MGSM):
        (model / f"samples_{task}_{STAMP}.jsonl").write_text(json.dumps({"doc_id": 0, "target": "2"}) + "\n")
    files = sorted(p.relative_to(out).as_posix() for p in model.iterdir())
    record = {"settings": settings, "intervention": iv, "seconds": 1.5, "lm_eval_version": "0.4.13",
              "results": results, "files": files}
    (out / "mwork_eval.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))


OFF = {"neurons": "sets/zh.safetensors", "deactivated": 7, "deactivated_per_kind": {"ffn": 5, "q": 2}, "layers": None,
       "kinds": None, "scale": 0.0}
RANDOM = {"random_like": "sets/zh.safetensors", "seed": 0, "deactivated": 7, "deactivated_per_kind": {"ffn": 5, "q": 2},
          "layers": None, "kinds": None, "scale": 0.0}


def write_evals(root: Path, off: dict, random: dict, base: dict = None) -> None:
    write_eval(root / "base", base or {XQUAD: 0.6, MGSM: 0.3}, stderr=0.04)
    write_eval(root / "zh-off", off, OFF, stderr=0.04)
    write_eval(root / "random-zh", random, RANDOM, stderr=0.04)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kinds")
    write_methods(root / "methods")
    write_steer(root / "steer", STEER)
    write_steer(root / "steer-flat", STEER_FLAT)
    write_evals(root / "eval", {XQUAD: 0.2, MGSM: 0.1}, {XQUAD: 0.55, MGSM: 0.3})
    render_report(root)
    return root


def _page(root: Path) -> str:
    return (root / "index.html").read_text(encoding="utf-8")


def _section(html: str, sid: str) -> str:
    return html.split(f"<section id='{sid}'>")[1].split("</section>")[0]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---- recognised, with the files' numbers ------------------------------------------------------
def test_negative_numbers_with_an_exponent_have_a_minus_sign():
    assert sig(-3.9e-05) == "−3.90×10⁻⁵" and sig(3.9e-05) == "3.90×10⁻⁵"


def test_each_folder_gets_its_section(results):
    html = _page(results)
    assert "<h2>Detection methods compared: PLND, LAPE, activation AP</h2>" in _section(html, "methods")
    assert "<h2>Steering the output language</h2>" in _section(html, "steer")
    for run in ("eval/base", "eval/zh-off", "eval/random-zh"):
        assert "<h2>Task evaluation (lm-eval)</h2>" in _section(html, run.replace("/", "-"))
    main_part = html[html.index("<main>"):]
    ids = re.findall(r"<section id='([\w-]+)'>", main_part)
    assert ids == ["methods", "eval-base", "eval-random-zh", "eval-zh-off", "steer", "steer-flat", "run"]
    # the folders below are part of their section (lm-eval's model folder), not sections of their own
    assert "tiny-random-llama" not in ids and "href='eval/zh-off/tiny-random-llama/samples_mwork_xquad_mc_zh_" in html
    assert "<h2>Neuron sets</h2>" not in html  # the sweep's own set is part of its section
    assert "href='steer/neurons.safetensors'" in _section(html, "steer")
    assert "problem" not in _findings(html)  # nothing damaged
    assert "matrix.csv" not in _findings(html)  # methods' matrix.csv is not taken for a deactivation matrix


def test_methods_findings_say_the_most_selective_method_and_whether_it_beats_random(results):
    html = _page(results)
    findings = _findings(html)
    summary = {(r["method"], r["size"]): r for r in _rows(results / "methods" / "summary.csv")}
    p, lape = summary["plnd", "0.5%"], summary["lape", "0.5%"]
    assert (f"at 0.5% (10 neurons) PLND is the most selective, {sig(p['selectivity'])} (LAPE {sig(lape['selectivity'])})"
            f", and its sets hurt their own language more than as many random neurons do (own − random "
            f"+{sig(p['own_minus_random'])}; its own language worse than with every random seed in 2 of 2 languages)"
            ) in findings
    p, lape = summary["plnd", "1%"], summary["lape", "1%"]
    assert sig(lape["own_minus_random"]) == "−0.200"
    assert (f"at 1% (20 neurons) LAPE is the most selective, {sig(lape['selectivity'])} (PLND {sig(p['selectivity'])})"
            ", but its sets hurt their own language no more than as many random neurons of the same layers and kinds "
            "do (own − random −0.200; its own language worse than with every random seed in 0 of 2 languages)"
            ) in findings
    assert "Stability at size 1%: the sets detected on the two halves of each corpus overlap with Jaccard 0.700 " \
           "(PLND; chance 0.0300), 0.200 (LAPE; chance 0.0600)." in findings
    section = _section(html, "methods")
    assert "PLND is the most selective in 1 of 2 settings" in section and "more than random neurons in 1 of 2" in section
    assert section.count("<strong>PLND</strong>") == 1 and section.count("<strong>LAPE</strong>") == 1
    assert "<td class='n'>10.7 s</td>" in section and "<td class='n'>9.00×</td>" in section  # cost
    assert section.count("data:image/png;base64,") == 2  # selectivity.png, agreement.png


def test_steer_findings_compare_the_strongest_setting_with_random_and_unsteered(results):
    findings = _findings(_page(results))
    assert ("Steering en prompts to zh with zh's 40 neurons at the strongest setting (set, strength 2): target-language "
            f"rate {pct(0.5)} against {pct(0.125)} with as many random neurons (mean of 2 seeds) and 0 % unsteered; "
            "damage (perplexity) 40.0 against 25.0 (random) and 10.0 (unsteered).") in findings
    assert f"The highest rate of its own neurons is {pct(0.75)}, at strength 1." in findings
    assert "no better than random" not in findings.split("Steering en prompts")[1].split("</li>")[0]
    flat = [li for li in findings.split("<li>") if "strength 3" in li][0]
    assert f"rate {pct(0.1)} against {pct(0.2)} with as many random neurons" in flat
    assert "The language's own neurons give no better than random neurons here." in flat


def test_steer_section_shows_a_few_escaped_generations(results):
    html = _page(results)
    section = _section(html, "steer")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; 你好" in section and "<script>alert(1)" not in html
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; &#x27;quoted&#x27; prompt" in section and "<b>bold</b>" not in html
    assert ("word " * 47).strip() in section and LONG.strip() not in section and "…" in section  # shortened
    assert "plain answer 0" in section and "steered random 0 2 0" in section  # unsteered and random seed 0
    assert "plain answer 3" not in section  # the first 3 of 4 prompts only
    assert "Generations of the first 3 of 4 prompts" in section
    assert "steered specific None 1 0" not in section  # only the strongest setting
    assert "href='steer/generations.jsonl'" in section and "href='steer/generations.md'" in section
    assert section.count("data:image/png;base64,") == 1
    rows = {(r["method"], r["seed"], r["strength"]) for r in _rows(results / "steer" / "steer.csv")}
    assert ("random", "1", "2") in rows


def test_eval_findings_say_each_task_with_and_without_neurons_off(results):
    html = _page(results)
    findings = _findings(html)
    assert ("lm-eval with <code>zh</code>'s 7 neurons switched off (<code>eval/zh-off</code>): mwork_xquad_mc_zh acc "
            "0.600 → 0.200 (as many random neurons: 0.550); mwork_mgsm_direct_zh exact_match 0.300 → 0.100 (as many "
            "random neurons: 0.300); 3 documents per task; without neurons off: <code>eval/base</code>. The score is "
            "worse in 2 of 2 tasks; the set's own neurons hurt more than random ones in 2 of 2.") in findings
    assert findings.count("lm-eval ") == 1  # the unmodified and the random run are said in that sentence
    section = _section(html, "eval-zh-off")
    assert "<td class='n'>0.200 ± 0.0400</td>" in section and "<td class='n'>−0.400</td>" in section
    assert "exact_match (remove_whitespace; higher is better)" in section and "0.888" not in section
    assert "acc_norm" not in section  # the main metric only
    assert "worse in 2 of 2 tasks, and worse than with as many random neurons in 2 of 2." in section


def test_eval_verdicts_are_honest(tmp_path):
    """Random neurons hurting as much: said; a run alone: its scores, and that there is nothing to compare."""
    write_evals(tmp_path / "eval", {XQUAD: 0.5, MGSM: 0.3}, {XQUAD: 0.4, MGSM: 0.3})
    findings = _findings(render_report(tmp_path).read_text(encoding="utf-8"))
    assert "mwork_xquad_mc_zh acc 0.600 → 0.500 (as many random neurons: 0.400)" in findings
    assert ("The score is worse in 1 of 2 tasks; the set's own neurons hurt more than random ones in 0 of 2: no better "
            "than random here.") in findings
    alone = tmp_path / "alone"
    write_eval(alone, {XQUAD: 0.25, MGSM: 0.0}, OFF)
    findings = _findings(render_report(alone).read_text(encoding="utf-8"))
    assert ("lm-eval with <code>zh</code>'s 7 neurons switched off (<code>alone</code>): mwork_xquad_mc_zh acc 0.250; "
            "mwork_mgsm_direct_zh exact_match 0; 3 documents per task (no run without neurons off beside it to compare "
            "with).") in findings
    base = tmp_path / "base-alone"
    write_eval(base, {XQUAD: 0.25, MGSM: 0.5})
    findings = _findings(render_report(base).read_text(encoding="utf-8"))
    assert "lm-eval on the unmodified model (<code>base-alone</code>): mwork_xquad_mc_zh acc 0.250; mwork_mgsm_direct_zh " \
           "exact_match 0.500; 3 documents per task." in findings


def test_methods_without_summary_csv_are_summarised_from_selectivity(tmp_path):
    write_methods(tmp_path / "methods")
    (tmp_path / "methods" / "summary.csv").unlink()
    html = render_report(tmp_path).read_text(encoding="utf-8")
    findings = _findings(html)
    assert "at 0.5% (10 neurons) PLND is the most selective, 0.500 (LAPE 0.150)" in findings
    assert "at 1% (20 neurons) LAPE is the most selective, 0.350 (PLND 0.150), but" in findings
    assert "computed from <code>selectivity.csv</code>" in html


# ---- damaged files ----------------------------------------------------------------------------
def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 3])


def test_damaged_files_are_warnings_naming_them(results, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(results, broken)
    (broken / "index.html").unlink()
    _cut(broken / "methods" / "selectivity.csv")
    (broken / "methods" / "cost.csv").write_text("method,tokens\nforward,84\n")  # lacks columns
    (broken / "steer" / "summary.json").write_text("{garbage")
    _cut(broken / "steer" / "generations.jsonl")
    steer = broken / "steer-flat" / "steer.csv"
    steer.write_text(steer.read_text().replace(",0.1,", ",lots,", 1))
    (broken / "eval" / "zh-off" / "mwork_eval.json").write_text("[1, 2")
    (broken / "eval" / "base" / "tiny-random-llama" / f"results_{STAMP}.json").write_text("nope")
    assert main(["report", str(broken)]) == 0
    html = _page(broken)
    findings = _findings(html)
    for name in ("methods/selectivity.csv", "methods/cost.csv", "steer/summary.json", "steer/generations.jsonl",
                 "steer-flat/steer.csv", "eval/zh-off/mwork_eval.json", f"eval/base/tiny-random-llama/results_{STAMP}.json"):
        assert f"<code>{name}</code>" in findings, name
    assert "looks truncated" in findings and "not valid JSON" in findings and "lacks the columns" in findings
    assert "target_prob_mass = &#x27;lots&#x27; is not a number" in findings
    assert "could not be rendered" not in html  # every kind copes with what it could read
    methods = _section(html, "methods")
    assert "class='warn'" in methods and "PLND is the most selective" in methods  # summary.csv still read
    steer = _section(html, "steer")
    assert "class='warn'" in steer and "target-language rate" in steer and "Generations of the first" not in steer
    assert "<td class='n'>0.600 ± 0.0400</td>" in _section(html, "eval-base")  # mwork_eval.json's scores
    # the set run is unreadable: the random run says its own result now
    assert "lm-eval with 7 random neurons like <code>zh</code>'s (seed 0) switched off" in findings


# ---- the page ---------------------------------------------------------------------------------
def test_page_is_compact_and_findings_come_first(results):
    html = _page(results)
    assert html.index('<section id="findings">') < html.index("<table")
    body = html.split("<section id='run'>")[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", body, flags=re.S) + re.findall(r"<li>(.*?)</li>", _findings(body))
    decimals = [m for c in cells for m in re.findall(r"\d[\d,]*\.\d+", _visible_text(c))]
    assert decimals and all(len(m.replace(",", "").replace(".", "").lstrip("0")) <= 3 for m in decimals), decimals
    assert "<pre>" not in html
    anchors = re.findall(r"class='ev' href='#([\w-]+)'", _findings(html))
    assert len(anchors) >= 5 and all(f"id='{a}'" in html for a in anchors)
    assert html.count("<p class='paper'>") == 4  # methods, steer, steer-flat, eval/zh-off


@needs_browser
@pytest.mark.parametrize("width", WIDTHS)
def test_page_in_a_real_browser(results, width):
    seen = inspect_report(results / "index.html", width, explore=False)
    assert seen["errors"] == [] and seen["requests"] == [], (seen["errors"], seen["requests"])
    assert seen["scrollWidth"] <= seen["innerWidth"], (width, seen["scrollWidth"])
    assert seen["first"] == "findings" and seen["findingsBeforeTables"]
    if width >= 1280:
        assert seen["wideTables"] == [], seen["wideTables"]
    assert len(seen["images"]) == 4 and all(i["complete"] and i["width"] > 0 for i in seen["images"])


# ---- the real producers, on a tiny model --------------------------------------------------------
@pytest.mark.slow
def test_real_producers_folders(tmp_path, monkeypatch):
    """`run_methods`, `run_steer_sweep` and `run_eval` on tiny-random-llama: each folder is
    recognised and its findings carry its files' numbers."""
    import torch

    import mwork
    from mwork.experiments.methods import run_methods
    from mwork.experiments.steering import SteerConfig, SteerSets, run_steer_sweep
    from mwork.experiments.steering.prompts import load_prompts
    from mwork.neurons.neuronset import NeuronSet
    from tests.test_experiment_methods import config_for

    monkeypatch.setenv("MWORK_CACHE", str(tmp_path / "cache"))
    model, tok = mwork.load_model("tiny-random-llama", device="cpu")
    root = tmp_path / "results"
    run_methods(config_for(tmp_path, root / "methods", methods=("lape", "ap"), interventions=("zero",)), model=model,
                tokenizer=tok, progress=False)
    gen = torch.Generator().manual_seed(0)
    ns = NeuronSet.empty_for(model, {"language": "zh"})
    for k in ns.kinds:
        ns.masks[k] = torch.rand(ns.masks[k].shape, generator=gen) < 0.08
    (tmp_path / "prompts.txt").write_text("The quick brown fox jumps\nLanguage models read and write\n")
    prompts, _ = load_prompts(str(tmp_path / "prompts.txt"), "zh", source="en")
    config = SteerConfig(neurons="zh.safetensors", target="zh", prompts=str(tmp_path / "prompts.txt"), source="en",
                         out=str(root / "steer"), strengths=(0.0, 1.0, 4.0), mode="set", seeds=(0,), max_new_tokens=4,
                         progress=False)
    run_steer_sweep(model, tok, SteerSets(ns, corpus=["敏捷的棕色狐狸跳过了懒狗。", "语言模型可以阅读和书写多种语言。"]),
                    prompts, config)
    assert (root / "steer" / "neurons.json").is_file()  # the set with its statistics: still the steer section
    from mwork.tasks.lm_eval_local import make_local_tasks
    from mwork.tasks.lm_eval_run import EvalConfig, run_eval
    from tests.conftest import TEST_DATA

    make_local_tasks(tmp_path / "tasks", TEST_DATA, langs=["zh"], limit=4)
    path = ns.save(tmp_path / "zh.safetensors")
    for name, extra in (("base", {}), ("zh-off", {"neurons": str(path)})):
        run_eval(EvalConfig(model="tiny-random-llama", tasks=(XQUAD,), include_path=str(tmp_path / "tasks"),
                            limit=2, batch_size=2, bootstrap_iters=0, out=str(root / "eval" / name), **extra),
                 model=model, tokenizer=tok)
    html = render_report(root).read_text(encoding="utf-8")
    findings = _findings(html)
    assert "problem" not in findings
    assert "<h2>Detection methods compared: PLND, LAPE, activation AP</h2>" in _section(html, "methods")
    summary = _rows(root / "methods" / "summary.csv")
    best = max(summary, key=lambda r: float(r["selectivity"]))
    assert sig(best["selectivity"]) in findings and "activation AP" in findings
    steer = [r for r in _rows(root / "steer" / "steer.csv") if r["method"] == "specific" and r["strength"] == "4"][0]
    assert f"(set, strength 4): target-language rate {pct(steer['target_rate'])}" in findings
    assert "<h2>Neuron sets</h2>" not in html
    assert f"damage (perplexity) {sig(steer['damage_ppl'])}" in findings
    base = json.loads((root / "eval" / "base" / "mwork_eval.json").read_text())["results"][XQUAD]["acc,none"]
    off = json.loads((root / "eval" / "zh-off" / "mwork_eval.json").read_text())["results"][XQUAD]["acc,none"]
    assert f"{XQUAD} acc {sig(base)} → {sig(off)}" in findings
