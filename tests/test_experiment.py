from __future__ import annotations

import csv
import math

import pytest
import torch

import mwork
import mwork.cli
from mwork.experiments.deactivation import GridSpec, layer_regions, performance_delta, run_deactivation_experiment
from mwork.tasks.runtime import perplexity_evaluator
from mwork.neurons.neuronset import NeuronSet

TEXTS = {
    "en": ["The quick brown fox jumps over the lazy dog.", "Language models read many languages."],
    "fr": ["Le renard brun saute par-dessus le chien.", "Les modèles de langue lisent le français."],
    "zh": ["敏捷的棕色狐狸跳过了懒狗。", "语言模型可以阅读多种语言。"],
}


def _sets(model):
    picks = {"en": [1, 2], "fr": [5, 6, 7], "zh": [10, 11]}
    return {lang: NeuronSet.from_indices(model, {"ffn": {0: idx, 1: idx, 2: idx}, "q": {1: idx}}, {"language": lang})
            for lang, idx in picks.items()}


def test_regions_cover_the_layers():
    regs = {r.name: r for r in layer_regions(10, 2, 3)}
    assert regs["understanding"].layers == (0, 1)
    assert regs["task-solving FFN"].layers == regs["task-solving attention"].layers == (2, 3, 4, 5, 6)
    assert regs["task-solving FFN"].kinds == ("ffn",)
    assert regs["generation"].layers == (7, 8, 9)
    with pytest.raises(ValueError, match="fit"):
        layer_regions(4, 3, 3)


def test_performance_delta_signs():
    assert performance_delta(0.5, 0.3, True) == pytest.approx(-0.2)
    assert performance_delta(10.0, 20.0, False) == pytest.approx(-math.log(2))


def test_grid_table_and_resume(tmp_path):
    model, tok = mwork.load_model("tiny-random-llama")
    calls = []
    base = perplexity_evaluator(model, tok, TEXTS, batch_size=2, max_length=64)

    def evaluate(lang):
        calls.append(lang)
        return base(lang)

    sets = _sets(model)
    spec = GridSpec(("en", "fr", "zh"), "en", understanding=1, generation=1, seeds=(0, 1))
    res = run_deactivation_experiment(model, evaluate, sets, spec, tmp_path, progress=False)
    with (tmp_path / "table.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {"Eng", "n-Eng", "ΔEng", "Δn-Eng", "Δ"} <= set(rows[0])
    for r in rows:
        assert float(r["Δ"]) == pytest.approx(float(r["ΔEng"]) - float(r["Δn-Eng"]), abs=1e-9)
    # the original row is the unmodified model
    assert float(rows[0]["ΔEng"]) == 0.0
    with torch.no_grad():
        direct = base("en")["score"]
    assert float(rows[0]["Eng"]) == pytest.approx(direct)
    # headline: each language, its own neurons off; specific changes ppl
    head = {h["lang"]: h for h in res["headline"]}
    assert head["fr"]["neurons_off"] == 3 * 3 + 3
    assert head["fr"]["specific"] != head["fr"]["original"]
    for name in ("table.md", "headline.csv", "results.json", "deactivation.png"):
        assert (tmp_path / name).exists()
    n = len(calls)
    again = run_deactivation_experiment(model, evaluate, sets, spec, tmp_path, progress=False)
    assert len(calls) == n, "finished cells must not be recomputed"
    assert again["grid"] == res["grid"]
    with pytest.raises(ValueError, match="other settings"):
        run_deactivation_experiment(model, evaluate, sets, GridSpec(("en", "fr", "zh"), "en", understanding=2,
                                    generation=1, seeds=(0, 1)), tmp_path, progress=False)


def test_cli_writes_table(tmp_path):
    model, _ = mwork.load_model("tiny-random-gpt2")
    neurons = tmp_path / "sets"
    for lang, ns in _sets(model).items():
        ns.save(neurons / lang)
    texts = tmp_path / "texts"
    texts.mkdir()
    for lang, t in TEXTS.items():
        (texts / f"{lang}.txt").write_text("\n".join(t) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    code = mwork.cli.main(["experiment", "deactivation", "--model", "tiny-random-gpt2", "--neurons", str(neurons),
                           "--task", "ppl", "--langs", "en,fr,zh", "--out", str(out), "--understanding", "1",
                           "--generation", "1", "--seeds", "0", "--texts-dir", str(texts), "--matrix"])
    assert code == 0
    matrix = (out / "matrix.csv").read_text(encoding="utf-8").splitlines()
    assert len(matrix) == 1 + 3 * 3 and matrix[0].startswith("neurons_of,eval_lang,original")
    header = (out / "table.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[4:9] == ["Eng", "n-Eng", "ΔEng", "Δn-Eng", "Δ"]
    code = mwork.cli.main(["experiment", "deactivation", "--model", "tiny-random-gpt2", "--neurons", str(neurons),
                           "--langs", "en,de", "--out", str(out / "x"), "--understanding", "1", "--generation", "1"])
    assert code == 2
