"""The report as a research page (issue 16): findings first, one section per results folder, the
layer and neuron explorers, damaged files said, self-contained, and checked in a real browser."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch

from mwork.cli import main
from mwork.report import ResultsKind, register_results_kind, render_report
from mwork.report.format import change_pct, count, pct, sig, times
from mwork.report.kinds.lens import lens_facts
from mwork.report.kinds.neurons import neuron_facts
from tests.browser import WIDTHS, chromium_path, inspect_page, inspect_report

needs_browser = pytest.mark.skipif(chromium_path() is None,
                                   reason="Debian's chromium is not installed (.ci/run installs it)")
QUICK_PAGE_BUDGET = 3_000_000
FULL_PAGE_BUDGET = 10_000_000


def _results(tmp_path):
    lens = tmp_path / "lens"
    lens.mkdir()
    with (lens / "lens.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["input_lang", "layer", "english_share", "non_english_share", "unknown_share", "n_tokens"])
        w.writerows([["zh", i, 0.1 * i, 1 - 0.1 * i, 0.3, 100] for i in range(4)])
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2, 3], [0, 0.2, 0.6, 0.1])
    fig.savefig(lens / "lens.png")
    plt.close(fig)
    (lens / "lens.json").write_text(json.dumps({"model": "tiny", "top_k": 10}))
    exp = tmp_path / "experiment"
    exp.mkdir()
    (exp / "table.csv").write_text("row,Eng,n-Eng\nrandom,1.0,2.0\nspecific,1.1,9.0\n")
    (tmp_path / "run.json").write_text(json.dumps({"command": "mwork demo --out x", "total_seconds": 12.5,
                                                   "stages": [{"name": "lens", "seconds": 3.0, "cached": False}]}))
    return tmp_path


def test_report_contains_every_result(tmp_path):
    page = render_report(_results(tmp_path)).read_text()
    assert "Layer-wise decoding" in page and "Deactivation experiment" in page
    assert page.count("data:image/png;base64,") == 1
    assert "mwork demo --out x" in page and "<td>specific</td>" in page


def test_report_cli_and_errors(tmp_path, capsys):
    assert main(["report", str(_results(tmp_path))]) == 0
    assert (tmp_path / "index.html").exists()
    assert main(["report", str(tmp_path / "missing")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "holds no results" in capsys.readouterr().err


@needs_browser
def test_report_renders_in_a_real_browser(tmp_path):
    page = render_report(_results(tmp_path))
    seen = inspect_page(page, ["run", "lens", "experiment"])
    assert seen["errors"] == []
    assert all(seen["visible"].values()), seen["visible"]
    assert seen["images"] and all(i["complete"] and i["width"] > 0 for i in seen["images"])


# ---- numbers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value,text", [
    (17.434811419420342, "17.4"), (15768.9, "15,800"), (450.2, "450"), (0.000123, "0.000123"), (9.996, "10.0"),
    (1.23e-05, "1.23×10⁻⁵"), (-3.303, "−3.30"), (0, "0"), (float("nan"), "–"), ("", "–"), ("nan", "–"),
    ("abc", "abc"), (0.59, "0.590"), (1234567.0, "1,230,000"),
])
def test_three_significant_digits(value, text):
    assert sig(value) == text


def test_units():
    assert pct(0.0044) == "0.440 %" and times(450.2) == "450×" and change_pct(-3.303) == "−3.30 %"
    assert change_pct(1.2) == "+1.20 %" and count(376320.0) == "376,320"


# ---- a tiny demo's page ------------------------------------------------------------------------
TINY = dict(model="tiny-random-llama", lens={"langs": ("zh", "fr"), "max_prompts": 2, "max_new_tokens": 2},
            langs=("en", "zh", "fr"), deact_langs=("en", "zh"), detect_docs=3, detect={"max_length": 32}, eval_texts=2,
            eval_max_length=32, enhance_docs=2, enhance={"max_steps": 1, "max_length": 32},
            enhance_baselines=("random",))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A finished demo folder on a tiny model at the smallest sizes (its index.html is the page)."""
    from mwork.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    run_demo(out, quick=True, **TINY)
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _visible_text(html: str) -> str:
    html = re.sub(r"<script.*?</script>", " ", html, flags=re.S)
    html = re.sub(r"data:image/[a-z+]+;base64,[A-Za-z0-9+/=]+", " ", html)
    return re.sub(r"<[^>]+>", " ", html)


def _findings(html: str) -> str:
    start = html.index('<section id="findings">')
    return html[start:html.index("</section>", start)]


def _data(html: str, element_id: str):
    source = re.search(rf"id='{element_id}'[^>]*data-source='([^']+)'", html).group(1)
    return json.loads(re.search(rf"<script type='application/json' id='{source}'>(.*?)</script>", html,
                                flags=re.S).group(1))


def test_findings_come_first_and_say_the_results(demo):
    html = (demo / "index.html").read_text(encoding="utf-8")
    main_part = html[html.index("<main>"):]
    assert main_part.startswith('<main><section id="findings">')  # the first section of the page
    assert html.index('<section id="findings">') < html.index("<table")  # before any table
    ids = re.findall(r"<section id='([\w-]+)'>", main_part)
    top_level = [i for i in ids if i in ("lens", "neurons", "deactivation", "enhance", "run")]
    assert top_level == ["lens", "neurons", "deactivation", "enhance", "run"]  # settings and versions last
    assert "id='layer-explorer'" in html and "class='nx'" in html
    findings = _findings(html)
    # the numbers are the files' (the same facts as the README's headline)
    lens = lens_facts(_rows(demo / "lens" / "lens.csv"))
    assert f"{sig(lens['first'])} at layer 0" in findings and f"(layer {lens['peak_layer']})" in findings
    neurons = neuron_facts(_rows(demo / "neurons" / "summary.csv"))
    assert f"{pct(neurons['mean_share'])} of all neurons per language" in findings
    for r in _rows(demo / "deactivation" / "headline.csv"):
        assert f"{times(float(r['specific']) / float(r['original']))} ({r['lang']})" in findings
        assert times(float(r["random_mean"]) / float(r["original"])) in findings
    for r in _rows(demo / "enhance" / "compare.csv"):
        assert f"{change_pct(r['ppl_zh_change_pct'])} on zh" in findings
    # every finding links to evidence that exists
    anchors = re.findall(r"class='ev' href='#([\w-]+)'", findings)
    assert len(anchors) >= 4 and all(f"id='{a}'" in html for a in anchors)
    assert "problem" not in findings  # nothing was damaged


def test_tables_are_compact_and_raw_files_are_links(demo):
    html = (demo / "index.html").read_text(encoding="utf-8")
    body = html.split("<section id='run'>")[0]  # versions and settings are shown as they are
    cells = re.findall(r"<td[^>]*>(.*?)</td>", body, flags=re.S) + re.findall(r"<li>(.*?)</li>", _findings(body))
    decimals = [m for c in cells for m in re.findall(r"\d[\d,]*\.\d+", _visible_text(c))]
    assert decimals and all(len(m.replace(",", "").replace(".", "").lstrip("0")) <= 3 for m in decimals), decimals
    assert "lens.csv" not in html.split("<section id='lens'>")[0]
    assert "href='deactivation/table.csv'" in html and "href='neurons/specific/zh.safetensors'" in html
    assert "<pre>" not in html  # no preformatted dumps of CSV, Markdown or JSON
    assert len(html.encode("utf-8")) < QUICK_PAGE_BUDGET


def test_layer_explorer_holds_the_lens_files(demo):
    """The grid's tokens, probabilities and labels are lens_explorer.json's; its shares and regions
    lens.json's; at most 3 prompts per language and the top 5 tokens."""
    html = (demo / "index.html").read_text(encoding="utf-8")
    value = _data(html, "layer-explorer")
    src = json.loads((demo / "lens" / "lens_explorer.json").read_text())
    info = json.loads((demo / "lens" / "lens.json").read_text())
    k = value["k"]
    assert k == min(5, src["top_k"]) and value["layers"] == src["num_layers"] + 1
    by_text = {p["text"]: p for p in src["prompts"]}
    assert len(value["prompts"]) == len(src["prompts"])  # 2 per language here: all of them
    for p in value["prompts"]:
        s = by_text[p["text"]]
        n_pos = len(s["positions"])
        assert p["positions"] == s["positions"] and p["lang"] == s["lang"]
        assert [value["vocab"][v][0] for v in p["tokens"]] == [src["vocab"][v][1] for v in s["tokens"]]
        for layer in range(value["layers"]):
            for j in range(n_pos):
                mine = slice((layer * n_pos + j) * k, (layer * n_pos + j + 1) * k)
                theirs = slice((layer * n_pos + j) * src["top_k"], (layer * n_pos + j) * src["top_k"] + k)
                assert [value["vocab"][v] for v in p["top"][mine]] == [src["vocab"][v][1:] for v in s["top"][theirs]]
                assert p["prob"][mine] == s["prob"][theirs]
    for lang, sh in value["shares"].items():
        assert sh["en"] == [None if r["english_share"] is None else round(r["english_share"], 4)
                            for r in info["shares"][lang]]
    assert value["regions"]["found"] == bool(info["regions"]["found"])


def test_neuron_explorer_lists_each_sets_neurons_with_doc_counts(demo):
    from mwork.neurons.neuronset import NeuronSet

    html = (demo / "index.html").read_text(encoding="utf-8")
    value = _data(html, "neuron-explorer")
    assert value["langs"] == ["en", "zh", "fr"]
    for lang in value["langs"]:
        ns = NeuronSet.load(demo / "neurons" / "specific" / lang)
        for kind, mask in ns.masks.items():
            assert value["counts"][lang][kind] == mask.sum(dim=1).tolist()
            docs = ns.extra[f"doc_count.{kind}"]
            for layer in range(mask.shape[0]):
                listed = value["neurons"][lang][kind].get(str(layer), [])
                expect = sorted(([int(i), int(docs[layer, i])] for i in mask[layer].nonzero().flatten()),
                                key=lambda e: (-e[1], e[0]))
                assert listed == expect
        assert value["n_docs"][lang]["ffn"] == ns.meta["n_docs"]


def test_damaged_files_are_warnings_naming_them(demo, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(demo, broken)
    table = broken / "deactivation" / "table.csv"
    table.write_bytes(table.read_bytes()[: len(table.read_bytes()) // 2])  # cut off mid-line
    (broken / "deactivation" / "results.json").write_text("{garbage")
    (broken / "lens" / "lens_explorer.json").write_text("[1, 2")
    summary = broken / "neurons" / "summary.csv"
    summary.write_text(summary.read_text() + "en,en,ffn,1\n")  # a short row
    assert main(["report", str(broken)]) == 0
    html = (broken / "index.html").read_text(encoding="utf-8")
    findings = _findings(html)
    for name in ("deactivation/table.csv", "deactivation/results.json", "lens/lens_explorer.json",
                 "neurons/summary.csv"):
        assert f"<code>{name}</code>" in findings, name
    assert "looks truncated" in findings and "not valid JSON" in findings
    assert "id='layer-explorer'" not in html  # left out, and said
    deactivation = html.split("<section id='deactivation'>")[1].split("</section>")[0]
    assert "its own neurons off" in deactivation  # what could be read is still shown
    assert "class='warn'" in deactivation


def test_a_new_kind_of_results_is_one_entry(tmp_path):
    from mwork.report import registry

    steer = tmp_path / "steer"
    steer.mkdir()
    (steer / "steer.csv").write_text("alpha,target_share\n0.5,0.123456\n1.0,0.654321\n")
    other = tmp_path / "methods"
    other.mkdir()
    (other / "selectivity.csv").write_text("method,selectivity\nplnd,0.987654321\nlape,0.5\n")

    def render(section):
        rows = section.csv("steer.csv", required=("alpha", "target_share"))
        best = max(rows, key=lambda r: float(r["target_share"]))
        section.table(["alpha", "target share"], [[r["alpha"], sig(r["target_share"])] for r in rows])
        section.finding(f"Steering with alpha {best['alpha']} gives a target share of {sig(best['target_share'])}.")

    register_results_kind(ResultsKind("steering", "Steering", lambda f: f.has("steer.csv"), render, order=45))
    try:
        html = render_report(tmp_path).read_text(encoding="utf-8")
    finally:
        registry._KINDS.pop("steering")
    assert "<h2>Steering</h2>" in html and "alpha 1.0 gives a target share of 0.654" in _findings(html)
    # a folder no kind knows is still shown, compactly (the generic kind)
    assert "<section id='methods'>" in html and "0.988" in html and "0.987654321" not in _visible_text(html)


def test_full_demo_sized_explorer_stays_within_budget(demo, tmp_path):
    """A lens of the full demo's size (6 languages x 10 prompts, 24 positions, 19 layers, top-10)
    gives a page well under the full demo's budget: the page keeps 3 prompts per language and the
    top 5 tokens."""
    big = tmp_path / "big"
    shutil.copytree(demo, big)
    gen = torch.Generator().manual_seed(0)
    vocab = [[i, f"tok{i:05d}", ["en", "zh", "fr", "ru", "de", "es", "unknown"][i % 7]] for i in range(20000)]
    vocab[1][1] = "</script><!--<script>"  # a token's text never ends or confuses the page's data element
    layers, positions, k = 19, 24, 10
    prompts = []
    for lang in ("en", "zh", "ru", "fr", "de", "es"):
        for n in range(10):
            top = torch.randint(0, len(vocab), (layers * positions * k,), generator=gen).tolist()
            prompts.append({"lang": lang, "text": f"{lang} prompt {n}", "n_prompt": 16,
                            "tokens": torch.randint(0, len(vocab), (positions + 1,), generator=gen).tolist(),
                            "positions": list(range(positions)), "top": top,
                            "prob": [float(f"{x:.4g}") for x in torch.rand(len(top), generator=gen).tolist()]})
    prompts[0]["tokens"][0] = 1
    data = json.loads((demo / "lens" / "lens_explorer.json").read_text())
    data.update(num_layers=layers - 1, top_k=k, vocab=vocab, prompts=prompts)
    (big / "lens" / "lens_explorer.json").write_text(json.dumps(data, separators=(",", ":")))
    html = render_report(big).read_text(encoding="utf-8")
    value = _data(html, "layer-explorer")
    assert len(value["prompts"]) == 18 and value["k"] == 5
    assert ["</script><!--<script>", "zh"] in value["vocab"]
    size = len(json.dumps(value, separators=(",", ":")).encode("utf-8"))
    assert size < 2_000_000, size
    assert len(html.encode("utf-8")) < FULL_PAGE_BUDGET - 3_000_000  # room for the full demo's larger plots


@needs_browser
@pytest.mark.parametrize("width", WIDTHS)
def test_demo_page_in_a_real_browser(demo, width):
    _check_in_browser(demo / "index.html", width)


def _check_in_browser(page: Path, width: int) -> None:
    seen = inspect_report(page, width)
    assert seen["errors"] == [] and seen["requests"] == [], (seen["errors"], seen["requests"])
    for state in (seen, seen["after"]):
        assert state["scrollWidth"] <= state["innerWidth"], (width, state["scrollWidth"])
        assert state["first"] == "findings" and state["findingsBeforeTables"]
    if width >= 1280:
        assert seen["wideTables"] == [], seen["wideTables"]  # no table scrolls at a laptop's width
    assert seen["images"] and all(i["complete"] and i["width"] > 0 for i in seen["images"])
    assert seen["tip_visible"] and seen["tip_rows"] == seen["k"] and "%" in seen["tip_text"], seen
    assert seen["tip_inside"]
    assert seen["keyboard_moves"] and seen["keyboard_tip"]
    assert seen["redrawn"], "switching the prompt did not redraw the grid"
    assert seen["curve_paths"] >= 1
    assert seen["neuron_pressed"] == "true" and "layer 0" in seen["neuron_detail"]


@pytest.mark.slow
@needs_browser
def test_quick_demo_page_on_the_default_model(tmp_path, gemma):
    """The contract of issue 16 on `mwork demo --quick --out DIR`."""
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    page = out / "index.html"
    html = page.read_text(encoding="utf-8")
    assert html.index('<section id="findings">') < html.index("<table") and "id='layer-explorer'" in html
    assert len(html.encode("utf-8")) < QUICK_PAGE_BUDGET
    for width in WIDTHS:
        _check_in_browser(page, width)


def test_single_command_folders(demo, tmp_path):
    """A folder of one command is a page too: `mwork lens --out`, NeuronSet files, a benchmark."""
    lens = tmp_path / "lens-run"
    shutil.copytree(demo / "lens", lens)
    html = render_report(lens).read_text(encoding="utf-8")
    assert "<section id='lens'>" in html and "id='layer-explorer'" in html and "<li>For prompts in" in html

    sets = tmp_path / "sets"
    shutil.copytree(demo / "neurons" / "detected", sets)
    html = render_report(sets).read_text(encoding="utf-8")
    meta = json.loads((sets / "zh.json").read_text())
    assert "<h2>Neuron sets</h2>" in html and f"<td class='n'>{count(meta['count'])}</td>" in html

    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "bench.json").write_text(json.dumps({"model": "m", "forward_s": 1.5, "importance_s": 4.8, "ffn_v_s": 2.0,
                                                  "overhead": 3.2, "ffn_v_overhead": 1.333, "reference_s": 48.0,
                                                  "speedup_vs_reference": 10.0}))
    html = render_report(bench).read_text(encoding="utf-8")
    assert ("Neuron importance for every kind costs 3.20× a plain forward pass (FFN + V only: 1.33×), 10.0× faster "
            "than the reference code's way.") in _findings(html)
