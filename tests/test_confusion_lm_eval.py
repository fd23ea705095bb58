"""The benchmark as lm-eval tasks (mwork.confusion.lm_eval_tasks, ``mwork confusion tasks``): the
documents are the benchmark's few-shot text, the metric is the LCB scorer's cell rates, and
``mwork eval`` runs a task end to end on a tiny model. Offline: the tasks read tests/data/lcb."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mwork.cli import main
from mwork.confusion.data import LcbFolder
from mwork.confusion.lm_eval_tasks import lcb_tasks, process_results, rate
from mwork.confusion.prompts import few_shot_prompt

LCB = Path(__file__).resolve().parent / "data" / "lcb"
FR = "Il fait très beau aujourd'hui à Paris"  # fastText: fr
EN = "This is an English sentence with words"  # fastText: en
ZH = "今天天气很好，我们一起去公园散步吧"


def test_the_tasks_hold_the_benchmarks_prompts(tmp_path):
    files = lcb_tasks(LCB, tasks=("monolingual",), langs=("zh",), shots=1, limit=2).write(tmp_path)
    assert set(files) == {"mwork_lcb_monolingual_aya_human_annotated_zh", "mwork_lcb_monolingual_okapi_zh"}
    folder = LcbFolder(LCB)
    docs = [json.loads(line) for line in
            (tmp_path / "data" / "mwork_lcb_monolingual_okapi_zh.jsonl").read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in folder.prompts("monolingual", "zh", 2) if p.source == "okapi"]
    assert [d["text"] for d in docs] == [few_shot_prompt(folder.few_shot("monolingual", "zh", 1), p.prompt)
                                         for p in prompts]
    yaml = files["mwork_lcb_monolingual_okapi_zh"].read_text(encoding="utf-8")
    assert 'until: ["\\nQ:"]' in yaml and "top_p: 0.75" in yaml and "temperature: 0.3" in yaml
    with pytest.raises(ValueError, match="unknown language 'xx' in --langs"):
        lcb_tasks(LCB, langs=("xx",))


def test_the_metric_is_the_scorers_cell_rates():
    fr = {"language": "fr"}
    items = [process_results(fr, [f"{FR}\n{FR}"]), process_results(fr, [f"{FR}\n{EN}"]),
             process_results(fr, ["Oui."]), process_results(fr, [f"{FR}\nQ: {EN}"])]
    assert [i["lpr"] for i in items] == [(1, 1), (1, 0), (0, 0), (1, 1)]  # "Oui." has no line to score
    assert all("wpr" not in i for i in items)  # no word check in a Latin-script language
    assert rate([i["lpr"] for i in items]) == pytest.approx(2 / 3)
    zh = process_results({"language": "zh"}, [ZH])
    english = process_results({"language": "zh"}, [f"{ZH} computer"])
    assert zh["wpr"] == (1, 1) and english["wpr"] == (1, 0)
    assert math.isnan(rate([(0, 0)]))


def test_mwork_eval_scores_a_task_end_to_end(tmp_path, capsys):
    tasks = tmp_path / "tasks"
    assert main(["confusion", "tasks", "--lcb-dir", str(LCB), "--tasks", "monolingual", "--langs", "zh", "--limit",
                 "1", "--shots", "1", "--max-new-tokens", "4", "--out", str(tasks)]) == 0
    out = tmp_path / "eval"
    assert main(["eval", "--model", "tiny-random-llama", "--tasks", "mwork_lcb_monolingual_okapi_zh",
                 "--include-path", str(tasks), "--bootstrap-iters", "0", "--device", "cpu", "--out", str(out)]) == 0
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert set(results["mwork_lcb_monolingual_okapi_zh"]) >= {"lpr,none", "wpr,none"}
    # lm-eval asked the model the benchmark's one-shot text, sampling as the paper, until "\nQ:"
    sample = json.loads(next(out.rglob("samples_mwork_lcb_monolingual_okapi_zh*.jsonl")).read_text().splitlines()[0])
    folder = LcbFolder(LCB)
    prompt = [p for p in folder.prompts("monolingual", "zh", 1) if p.source == "okapi"][0]
    context, kwargs = sample["arguments"]["gen_args_0"]["arg_0"], sample["arguments"]["gen_args_0"]["arg_1"]
    assert context == few_shot_prompt(folder.few_shot("monolingual", "zh", 1), prompt.prompt)
    assert kwargs["until"] == ["\nQ:"] and kwargs["top_p"] == 0.75 and kwargs["max_gen_toks"] == 4
    assert main(["confusion", "tasks", "--lcb-dir", str(LCB), "--langs", "de", "--out", str(tmp_path / "x")]) == 2
    assert "no monolingual or crosslingual test set in de" in capsys.readouterr().err
