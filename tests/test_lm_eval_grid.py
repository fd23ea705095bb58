"""The deactivation grid on lm-eval tasks (``--task lm-eval:TEMPLATE``): per-language names,
cells equal to lm-eval run with the set off, content-keyed resume, clear errors. Offline: the
tasks are local ones built from the XQuAD subset in tests/data."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

import mwork
import mwork.cli
from mwork.experiments.deactivation import DeactivationConfig
from mwork.experiments.deactivation.lm_eval_task import LmEvalEvaluator, task_names, template_of
from mwork.neurons.neuronset import NeuronSet
from tests.conftest import TEST_DATA

LANGS = ("en", "zh")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models):
    from mwork.tasks.lm_eval_local import make_local_tasks

    root = tmp_path_factory.mktemp("grid")
    make_local_tasks(root / "tasks", TEST_DATA, langs=list(LANGS), limit=3)
    for lang in LANGS:  # questions without their paragraph: short prompts for the tiny model
        path = root / "tasks" / f"mwork_xquad_mc_{lang}.yaml"
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        config["doc_to_text"] = "Q: {{question}}\nA:"
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    model, _ = tiny_models.shared("tiny-random-gpt2")
    picks = {"en": [1, 2], "zh": [5, 6, 7]}
    for lang, idx in picks.items():
        NeuronSet.from_indices(model, {"ffn": {0: idx, 1: idx}, "q": {1: idx}}, {"language": lang}).save(
            root / "sets" / lang)
    return root


def _grid(root, out, *extra):
    return ["experiment", "deactivation", "--model", "tiny-random-gpt2", "--neurons", str(root / "sets"),
            "--task", "lm-eval:mwork_xquad_mc_{lang}", "--include-path", str(root / "tasks"), "--langs", ",".join(LANGS),
            "--out", str(out), "--understanding", "1", "--generation", "1", "--seeds", "0", "--limit", "2",
            "--batch-size", "4", "--device", "cpu", *extra]


def test_templates_and_names():
    assert template_of("lm-eval:belebele_{lang}") == "belebele_{lang}"
    known = {"belebele_eng_Latn", "belebele_zho_Hans", "xnli_en", "xnli_zh"}
    assert task_names("belebele_{lang}", ["en", "zh"], known) == {"en": "belebele_eng_Latn", "zh": "belebele_zho_Hans"}
    assert task_names("xnli_{lang}", ["en", "zh"], known) == {"en": "xnli_en", "zh": "xnli_zh"}
    assert task_names("belebele_{flores}", ["zh"], known) == {"zh": "belebele_zho_Hans"}
    with pytest.raises(ValueError, match="tried xnli_fr, xnli_fra_Latn"):
        task_names("xnli_{lang}", ["fr"], known)
    with pytest.raises(ValueError, match="placeholder"):
        template_of("lm-eval:belebele")
    with pytest.raises(ValueError, match="placeholder"):
        DeactivationConfig(neurons="x", task="lm-eval:belebele", langs="en,zh", out="o")
    with pytest.raises(ValueError, match="lm-eval:TEMPLATE tasks only"):
        DeactivationConfig(neurons="x", task="ppl", langs="en,zh", out="o", lm_eval_metric="acc,none")


def test_grid_on_an_lm_eval_task(setup, tmp_path, monkeypatch):
    out = tmp_path / "grid"
    assert mwork.cli.main(_grid(setup, out)) == 0
    with (out / "table.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["region"] == "none (original)" and {r["neurons_off"] for r in rows[1:]} == {"specific", "random"}
    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert result["info"]["metric"] == "acc,none" and result["info"]["settings"]["texts"]["zh"] == "mwork_xquad_mc_zh"
    # a cell is lm-eval's own number with that language's set off (mwork eval / the backend)
    from mwork.tasks.lm_eval_run import EvalConfig, run_eval

    direct = run_eval(EvalConfig(model="tiny-random-gpt2", tasks=("mwork_xquad_mc_zh",), include_path=str(setup / "tasks"),
                                 neurons=str(setup / "sets" / "zh.safetensors"), limit=2, batch_size=4,
                                 bootstrap_iters=0, log_samples=False, device="cpu", out=str(tmp_path / "direct")))
    zh = next(h for h in result["headline"] if h["lang"] == "zh")
    assert zh["specific"] == direct["results"]["mwork_xquad_mc_zh"]["acc,none"]
    # resumable: a rerun measures nothing
    lines = (out / "cells.jsonl").read_text(encoding="utf-8").splitlines()

    def no_evaluation(self, lang):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(LmEvalEvaluator, "__call__", no_evaluation)
    assert mwork.cli.main(_grid(setup, out)) == 0
    assert (out / "cells.jsonl").read_text(encoding="utf-8").splitlines() == lines
    monkeypatch.undo()
    # other documents (another limit): refused as another experiment's folder, recomputed in a new one
    assert mwork.cli.main(_grid(setup, out, "--limit", "3")) == 2


def test_inputs_digest_follows_the_documents(setup, shared_tiny):
    from mwork.experiments.deactivation.lm_eval_task import LmEvalOptions, lm_eval_evaluator

    model, tok = shared_tiny("tiny-random-gpt2")
    local = str(setup / "tasks")
    two, _ = lm_eval_evaluator(model, tok, "lm-eval:mwork_xquad_mc_{lang}", ["en", "zh"],
                               LmEvalOptions(include_path=local, limit=2))
    three, _ = lm_eval_evaluator(model, tok, "lm-eval:mwork_xquad_mc_{lang}", ["en", "zh"],
                                 LmEvalOptions(include_path=local, limit=3))
    assert two.inputs_digest("en") != two.inputs_digest("zh")
    assert two.inputs_digest("en") != three.inputs_digest("en")
    again, _ = lm_eval_evaluator(model, tok, "lm-eval:mwork_xquad_mc_{lang}", ["en"],
                                 LmEvalOptions(include_path=local, limit=2))
    assert again.inputs_digest("en") == two.inputs_digest("en")
    with pytest.raises(ValueError, match="lm-eval knows no task"):
        lm_eval_evaluator(model, tok, "lm-eval:no_such_{lang}", ["en"], LmEvalOptions(include_path=local))
