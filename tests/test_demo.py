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
