"""Dictionary features shown like neurons: ``mwork detect --units sae:DIR`` records each chosen
feature's top activating tokens per language (``top_tokens.json``: the pass's ``top_activations``
of every feature, decoded in context), neuron detection writes no such file, and the report's
``feature-sets`` section renders a folder from a real tiny detect run -- counts per layer, the
feature explorer's data, markup in a token shown as text (also in a real browser), a folder
without ``top_tokens.json`` still drawn with a note."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import mwork
from mwork.cli import main as cli_main
from mwork.corpus_pass import PassOptions, corpus_pass, unit_request
from mwork.corpus_statistics import TopActivations
from mwork.neurons.methods.top_tokens import COLUMNS, TOP, read_top_tokens, token_in_context
from mwork.report import render_report
from mwork.units import Dictionary
from tests.browser import loaded_page
from tests.test_report import _data, _visible_text, needs_browser
from tests.test_sae_detect import CORPORA, MAX_LENGTH, _book

EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def sae():
    return Dictionary({0: _book(0, 12), 2: _book(1, 12, "topk", k=3)}, site="layer.out")


@pytest.fixture(scope="module")
def run(tmp_path_factory, sae):
    """``mwork detect --method monolinguality --units sae:DIR`` on the tiny model: its folder."""
    tmp = tmp_path_factory.mktemp("features")
    (tmp / "sae").mkdir()
    sae.save(tmp / "sae" / "dictionary.safetensors")
    files = []
    for lang, docs in CORPORA.items():
        (tmp / f"{lang}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
        files += ["--corpus", f"{lang}={tmp / f'{lang}.txt'}"]
    out = tmp / "mono"
    assert cli_main(["detect", "--method", "monolinguality", "--units", f"sae:{tmp / 'sae'}", "--model",
                     "tiny-random-llama", "--out-dir", str(out), "--quiet", "--max-length", str(MAX_LENGTH),
                     "--mono-top-k", "2", *files]) == 0
    return tmp, out, files


def test_detect_records_each_chosen_features_top_tokens_in_every_language(run, sae, tiny_models):
    tmp, out, _ = run
    value = read_top_tokens(out)
    sets = {lang: mwork.load_units(out / lang) for lang in CORPORA}
    chosen = sorted({(int(layer), int(f)) for s in sets.values() for layer, f in zip(s.layers.tolist(),
                                                                                    s.features.tolist())})
    assert list(value["features"]) == [f"{layer}:{f}" for layer, f in chosen]
    assert value["languages"] == list(CORPORA) and value["columns"] == list(COLUMNS) and value["top"] == TOP
    # the same statistic run on its own, over every feature: the file holds its entries, decoded
    model, tok = tiny_models.shared("tiny-random-llama", torch.float32)
    docs = {lang: (tmp / f"{lang}.txt").read_text(encoding="utf-8").splitlines() for lang in CORPORA}
    alone = corpus_pass(model, tok, docs, [unit_request(TopActivations, sae, {"n": TOP, "above": 0.0}, key="top")],
                        PassOptions(max_length=MAX_LENGTH), progress=False)
    fired = 0
    for layer, f in chosen:
        for lang in CORPORA:
            want = alone.value("top", lang, layer).unit(f)  # every feature of the layer, in order
            rows = value["features"][f"{layer}:{f}"][lang]
            assert [(r[4], r[5]) for r in rows] == [(d, p) for _, d, p in want]
            assert [r[3] for r in rows] == pytest.approx([v for v, _, _ in want], rel=1e-5)
            for token, before, after, _, d, p in rows:
                ids = tok(docs[lang][d], add_special_tokens=False)["input_ids"]
                assert (token, before, after) == token_in_context(tok, ids, p)
                assert before + token + after in docs[lang][d]  # the token in its own text
            fired += len(rows)
    assert fired > 0


def test_neuron_detection_writes_no_top_tokens(run, tmp_path):
    tmp, _, files = run
    out = tmp_path / "lape"
    assert cli_main(["detect", "--method", "lape", "--model", "tiny-random-llama", "--out-dir", str(out), "--quiet",
                     "--max-length", str(MAX_LENGTH), *files]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{lang}{ext}" for lang in CORPORA
                                                           for ext in (".json", ".safetensors"))


def _section(html: str) -> str:
    start = html.index("<section id='feature-sets'>")
    return html[start:html.index("</section>", html.index("Raw files", start))]


def test_the_report_shows_feature_sets_with_their_top_tokens(run, tmp_path):
    _, out, _ = run
    folder = tmp_path / "mono"
    shutil.copytree(out, folder)
    page = render_report(folder)
    html = page.read_text(encoding="utf-8")
    assert "Dictionary features" in html and "mwork report: warning" not in html
    assert "Neuron sets" not in _visible_text(html)  # the folder is the feature kind's
    text = _visible_text(_section(html))
    assert "monolinguality" in text and "share of the dictionary" in text
    value = _data(html, "feature-explorer")
    top = read_top_tokens(folder)
    assert value["unit"] == "feature" and value["rows"] == [0, 2] and value["langs"] == list(CORPORA)
    for lang in CORPORA:
        s = mwork.load_units(folder / lang)
        assert value["counts"][lang]["features"] == [int((s.layers == layer).sum()) for layer in (0, 2)]
        listed = value["features"][lang]
        nu = dict(zip(zip(s.layers.tolist(), s.features.tolist()), s.stats["monolinguality"].tolist()))
        for layer in (0, 2):
            entries = listed[str(layer)]
            assert sorted(f for f, _ in entries) == sorted(s.features[s.layers == layer].tolist())
            assert [v for _, v in entries] == sorted((nu[layer, f] for f, _ in entries), reverse=True)
            for f, _ in entries:  # every listed feature with its top tokens in every language
                assert value["top"][f"{layer}:{f}"] == {
                    g: [r[:4] for r in rows] for g, rows in top["features"][f"{layer}:{f}"].items()}
    assert value["stat"] == "monolinguality" and value["top_langs"] == list(CORPORA)


def _evil_folder(out: Path, tmp_path: Path) -> Path:
    """The run's folder with markup in a token and its context (a file someone else wrote)."""
    folder = tmp_path / "evil"
    shutil.copytree(out, folder)
    value = json.loads((folder / "top_tokens.json").read_text(encoding="utf-8"))
    for per in value["features"].values():
        for rows in per.values():
            for r in rows:
                r[0], r[1], r[2] = EVIL, '"><img src=x onerror=alert(2)>', "</mark><b>x</b>"
    (folder / "top_tokens.json").write_text(json.dumps(value), encoding="utf-8")
    return folder


def test_markup_in_a_token_is_text(run, tmp_path):
    _, out, _ = run
    page = render_report(_evil_folder(out, tmp_path))
    html = page.read_text(encoding="utf-8")
    assert EVIL not in html and "<img src=x" not in html and "<b>x</b>" not in html  # only inside the escaped JSON
    value = _data(html, "feature-explorer")
    tokens = {r[0] for per in value["top"].values() for rows in per.values() for r in rows}
    assert tokens == {EVIL}  # intact, as data


@needs_browser
def test_markup_in_a_token_shows_as_text_in_a_real_browser(run, tmp_path):
    _, out, _ = run
    page = render_report(_evil_folder(out, tmp_path))
    with loaded_page(page) as (tab, dialogs, errors):
        tab.click(".nx button[data-layer='2']")
        marks = tab.evaluate("() => [...document.querySelectorAll('.nx-detail mark.fx-tok')].map(m => m.textContent)")
        found = tab.evaluate("() => document.querySelectorAll('.nx-detail script, .nx-detail img, .nx-detail b')"
                             ".length")
        pressed = tab.get_attribute(".nx button[data-layer='2']", "aria-pressed")
    assert dialogs == [] and errors == [] and found == 0 and pressed == "true"
    assert marks and set(marks) == {EVIL}


def test_a_folder_without_top_tokens_still_renders_with_a_note(run, tmp_path):
    _, out, _ = run
    folder = tmp_path / "old"
    shutil.copytree(out, folder)
    (folder / "top_tokens.json").unlink()
    html = render_report(folder).read_text(encoding="utf-8")
    section = _section(html)
    assert "has no top_tokens.json" in _visible_text(section) and "warning" not in section.lower()
    value = _data(html, "feature-explorer")
    assert value["top"] is None and "no top_tokens.json" in value["no_top"]
    assert sum(value["counts"]["fr"]["features"]) == mwork.load_units(folder / "fr").count()
    (folder / "top_tokens.json").write_text("{not json", encoding="utf-8")  # damaged: a warning, still drawn
    with pytest.warns(UserWarning, match="top_tokens.json is not valid JSON"):
        html = render_report(folder).read_text(encoding="utf-8")
    assert re.search(r"top_tokens\.json</code>\s*is not valid JSON", html) and _data(html, "feature-explorer")["top"] \
        is None
