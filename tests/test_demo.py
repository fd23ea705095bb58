from __future__ import annotations

import json

import pytest

from mwork.cli import main
from tests.browser import chromium_path, inspect_page


def _check_demo_folder(out):
    for name in ("index.html", "lens.csv", "table.csv", "compare.csv", "run.json",
                 "lens/lens.png", "deactivation/headline.csv", "neurons/summary.csv", "enhance/compare.md"):
        assert (out / name).exists(), name
    run = json.loads((out / "run.json").read_text())
    assert [s["name"] for s in run["stages"]] == ["lens", "neurons", "deactivation", "enhance"]
    assert "lens.csv" not in (out / "index.html").read_text().split("<section id='lens'>")[0]


def test_demo_on_a_tiny_model_then_cached(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--model", "tiny-random-llama", "--out", str(out)]) == 0
    _check_demo_folder(out)
    capsys.readouterr()
    assert main(["demo", "--quick", "--model", "tiny-random-llama", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count(": cached in") == 4, printed
    if chromium_path():
        sections = ["run", "lens", "neurons", "deactivation", "enhance"]
        seen = inspect_page(out / "index.html", sections)
        assert seen["errors"] == [] and all(seen["visible"].values()), seen
        assert seen["images"] and all(i["complete"] and i["width"] > 0 for i in seen["images"])


def test_demo_bad_input(tmp_path):
    assert main(["demo", "--quick", "--model", "tiny-random-llama", "--out", str(tmp_path / "x"),
                 "--corpus-dir", str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_quick_demo_on_the_default_model(tmp_path, gemma):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    _check_demo_folder(out)
    head = {row["lang"]: row for row in json.loads((out / "deactivation" / "results.json").read_text())["headline"]}
    # the paper's finding: a language's own neurons hurt it far more than random ones
    assert head["zh"]["specific"] > 2 * head["zh"]["random_mean"]


def test_time_left_is_rescaled_by_the_speed_so_far():
    from mwork.demo import DemoSettings, _nominal_seconds, _Stage, _time_left, _work_units

    s = DemoSettings.quick()
    nominal = _nominal_seconds(s)
    rest = ["neurons", "deactivation", "enhance"]
    assert _time_left(s, [], rest) == pytest.approx(sum(nominal[k] for k in rest))
    twice_as_slow = [_Stage("lens", 2 * nominal["lens"])]
    assert _time_left(s, twice_as_slow, rest) == pytest.approx(2 * sum(nominal[k] for k in rest))
    cached = [_Stage("lens", 100 * nominal["lens"], cached=True)]  # a cached stage says nothing about speed
    assert _time_left(s, cached, rest) == pytest.approx(sum(nominal[k] for k in rest))
    assert _work_units(DemoSettings())["neurons"] > _work_units(s)["neurons"]  # the full demo does more work
    assert 60 < sum(_nominal_seconds(s).values()) < 300 < sum(_nominal_seconds(DemoSettings()).values()) < 1200


def test_the_first_estimate_comes_from_this_machines_measured_forward_time(shared_tiny, tmp_path, capsys):
    from mwork.demo import (PROBE_SECONDS, PROBE_SHAPE, STAGES, DemoSettings, _forward_probe, _nominal_seconds,
                            _time_left, run_demo)

    s = DemoSettings.quick()
    nominal = sum(_nominal_seconds(s).values())
    assert _time_left(s, [], list(_nominal_seconds(s)), probe_speed=3.0) == pytest.approx(3 * nominal)
    model, _ = shared_tiny("tiny-random-llama")
    seconds = _forward_probe(model)
    assert 0 < seconds < 30 * PROBE_SECONDS and PROBE_SHAPE[0] * PROBE_SHAPE[1] >= 64
    out = tmp_path / "demo"
    run_demo(out, quick=True, **TINY)
    estimate = json.loads((out / "run.json").read_text())["estimate"]
    assert estimate["probe_seconds"] > 0 and [e["before"] for e in estimate["said"]] == list(STAGES)
    assert all(e["seconds_left"] > 0 for e in estimate["said"])


# ---- settings checked before any stage; stages keyed by content --------------------------------

TINY = dict(model="tiny-random-llama", lens={"langs": ("zh", "fr"), "max_prompts": 1, "max_new_tokens": 1},
            langs=("en", "zh", "fr"), deact_langs=("en", "zh"), detect_docs=3, detect={"max_length": 32}, eval_texts=2,
            eval_max_length=32, enhance_docs=2, enhance={"max_steps": 1, "max_length": 32})


def test_demo_settings_are_checked_before_any_stage(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["demo", "--quick", "--model", "tiny-random-llama", "--langs", "fr,zh", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "must include en" in err and "--langs en,fr,zh" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing ran
    assert main(["demo", "--quick", "--model", "tiny-random-llama", "--langs", "en,xx", "--out", str(out)]) == 2
    assert "no built-in corpus for xx" in capsys.readouterr().err and not out.exists()
    # a missing corpus file is found before the first stage too
    assert main(["demo", "--quick", "--model", "tiny-random-llama", "--out", str(out),
                 "--corpus-dir", str(tmp_path / "missing")]) == 2
    assert "en.txt" in capsys.readouterr().err and not out.exists()

    from mwork.demo import DemoSettings

    with pytest.raises(ValueError) as info:
        DemoSettings.quick(lens={"langs": ("en", "xx")}, deact_langs=("en", "es"), detect_docs=0, enhance_lang="en",
                           corpus_dir="c", xquad=True)
    for problem in ("no built-in lens prompts for xx", "deact_langs es are not among", "detect_docs must be",
                    "enhance_lang must be a non-English", "not both"):
        assert problem in str(info.value), problem
    with pytest.raises(ValueError, match="needs a non-English language"):
        DemoSettings().with_(lens={"langs": ("en",)})
    with pytest.raises(ValueError, match="langs lists fr more than once"):
        DemoSettings(langs=("en", "fr", "fr"), deact_langs=None)
    with pytest.raises(ValueError, match="no word list for xx"):
        DemoSettings().with_(lens={"latin_langs": "en,xx"})

    from mwork.demo import Demo
    from mwork.lens import LensConfig, WORDFREQ_LATIN_LANGUAGES

    assert Demo(tmp_path, DemoSettings.quick()).lens_config() == LensConfig(
        langs=("zh", "ru", "fr", "de", "es"), max_prompts=2, max_new_tokens=2, top_k=10,
        latin_langs=WORDFREQ_LATIN_LANGUAGES)
    old = Demo(tmp_path, DemoSettings.quick(lens={"latin_langs": "en,fr,es,de,it,pt,nl"})).lens_config()
    assert old.latin_langs == ("en", "fr", "es", "de", "it", "pt", "nl")


def test_enhance_language_fallback_is_said(tmp_path):
    from mwork.demo import Demo, DemoSettings

    s = DemoSettings.quick(**{**TINY, "langs": ("en", "fr"), "deact_langs": None})
    assert s.enhance_language()[0] == "fr" and "'zh' is not among" in s.enhance_language()[1]
    assert any("trains 'fr'" in note for note in Demo(tmp_path, s).prepare())
    assert DemoSettings.quick(**TINY).enhance_language() == ("zh", "")


def test_demo_stages_rerun_when_what_they_read_changes(tmp_path, capsys):
    """Replacing a NeuronSet file reruns the stages that read it (and says why), not the others."""
    import torch

    from mwork.demo import run_demo
    from mwork.neurons.neuronset import NeuronSet

    out = tmp_path / "demo"
    run_demo(out, quick=True, **TINY)
    capsys.readouterr()
    path = out / "neurons" / "specific" / "zh.safetensors"
    ns = NeuronSet.load(path)
    ns.masks["ffn"] = torch.zeros_like(ns.masks["ffn"])
    ns.masks["ffn"][0, :2] = True
    ns.save(path)
    run_demo(out, quick=True, **TINY)
    printed = capsys.readouterr().out
    assert "[demo 1/4] lens: cached" in printed and "[demo 2/4] neurons: cached" in printed
    for n, stage in ((3, "deactivation"), (4, "enhance")):
        assert (f"[demo {n}/4] {stage}: running again: changed since the cached run: "
                f"inputs.neurons/specific/zh.safetensors") in printed, printed
    run = json.loads((out / "run.json").read_text())
    assert [s["cached"] for s in run["stages"]] == [True, True, False, False]
    key = json.loads((out / "deactivation" / "stage.json").read_text())["key"]
    assert set(key) == {"settings", "model", "texts", "regions", "inputs"} and len(key["model"]["digest"]) == 64
    # other lens settings: the lens reruns; the neurons (which do not read it) stay cached
    run_demo(out, quick=True, **{**TINY, "lens": {**TINY["lens"], "max_prompts": 2}})
    printed = capsys.readouterr().out
    assert "[demo 1/4] lens: running again: changed since the cached run: prompts, settings.max_prompts" in printed
    assert "[demo 2/4] neurons: cached" in printed
