from __future__ import annotations

import csv
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from mwork.cli import main
from mwork.report import render_report
from tests.browser import chromium_path, inspect_page


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


@pytest.mark.skipif(chromium_path() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_a_real_browser(tmp_path):
    page = render_report(_results(tmp_path))
    seen = inspect_page(page, ["run", "lens", "experiment"])
    assert seen["errors"] == []
    assert all(seen["visible"].values()), seen["visible"]
    assert seen["images"] and all(i["complete"] and i["width"] > 0 for i in seen["images"])
