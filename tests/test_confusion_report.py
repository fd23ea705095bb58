"""The report's confusion section (mwork.report.kinds.confusion): a run's folder, as its writer
(mwork.confusion.results.RunScores) writes it, gets the overall rates per lever, the per-language
table, the bars and the sample completions with the confused lines highlighted; markup in a
completion stays text. A scored file's folder (mwork confusion score: no lever) renders too."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from mwork.confusion.results import RunScores
from mwork.report import render_report

EVIL = "<img src=x onerror=alert(1)><script>alert(1)</script>"


def _row(task, source, language, lever, lpr, wpr=None, n=2):
    return {"model": "m", "task": task, "source": source, "language": language, "lever": lever, "cells": 1, "n": n,
            "scored": n, "line_pass": round(lpr * n), "word_pass": None, "lpr": lpr, "wpr": wpr,
            "lcpr": None, "distinct2": 0.9, "ppl": 12.5}


def write_run(folder: Path) -> None:
    rows = []
    for lever, lpr in (("none", 0.5), ("vectors", 1.0)):
        rows += [_row("monolingual", "okapi", "zh", lever, lpr, 1.0), _row("monolingual", "all", "zh", lever, lpr, 1.0),
                 _row("monolingual", "okapi", "fr", lever, lpr), _row("monolingual", "all", "fr", lever, lpr),
                 _row("monolingual", "okapi", "all", lever, lpr, 1.0), _row("monolingual", "all", "all", lever, lpr, 1.0)]
    samples = [{"lever": "none", "task": "monolingual", "source": "okapi", "language": "zh", "prompt_number": 0,
                "lines": [["这是一个很长的中文句子，用来测试。", "zh"], [f"This line is English {EVIL}", "en"], ["短", None]],
                "confused": True}]
    meta = {"model": "m", "settings": {"shots": 1, "chat": False, "greedy": False, "top_p": 0.75, "temperature": 0.3,
                                       "max_new_tokens": 100}}
    RunScores(rows, meta, {"none": {}, "vectors": {}}, samples).write(folder)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        assert not any(name.startswith("on") for name, _ in attrs), (tag, attrs)

    def handle_data(self, data):
        self.text.append(data)


def test_a_run_folder_gets_its_section_with_escaped_samples(tmp_path):
    write_run(tmp_path / "run")
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"lcb.csv", "lcb.json", "samples.jsonl", "lcb.png"}
    html = render_report(tmp_path).read_text(encoding="utf-8")
    assert "Language confusion (LCB)" in html and "could not be rendered" not in html
    parser = _Tags()
    parser.feed(html)
    assert "img" in parser.tags  # the bars (lcb.png), embedded
    assert "<img src=x" not in html and "<script>alert" not in html
    assert any(EVIL in t for t in parser.text)  # the payload arrives as text
    marks = re.findall(r"<mark[^>]*>(.*?)</mark>", html, re.S)
    assert len(marks) == 1 and "This line is English" in marks[0] and "[en]" in marks[0]
    assert "monolingual: LPR 50.0 % for the model as it is; the best lever is vectors at 100 %" in html
    assert "LPR vectors" in html and "Chinese (zh)" in html


def test_a_scored_file_folder_renders_without_levers(tmp_path):
    from mwork.confusion.lcb import score_completions

    scored = tmp_path / "scored"
    result = score_completions([{"completion": "Il fait très beau aujourd'hui à Paris", "source": "s",
                                 "language": "fr"}])
    result.write(scored)
    html = render_report(tmp_path).read_text(encoding="utf-8")
    assert "Language confusion (LCB)" in html and "could not be rendered" not in html
    assert "the completions: LPR 100 % for the model as it is." in html
