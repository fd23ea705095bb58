"""The deactivation grid's pieces: cell keys, the plan, content-keyed resume (replaced sets,
texts or weights are recomputed and said), torn and garbage cells.jsonl lines, repeated
languages, region labels by what was really switched off, the config-generated CLI and the
regions from a lens result."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

import mwork
import mwork.cli
from mwork.experiments.deactivation import (CellKey, DeactivationConfig, GridSpec, plan_cells, run_deactivation,
                                            run_deactivation_experiment)
from mwork.experiments.deactivation.plan import layer_regions
from mwork.lens.regions import resolve_regions
from mwork.neurons.neuronset import NeuronSet
from mwork.tasks.runtime import perplexity_evaluator

TEXTS = {
    "en": ["The quick brown fox jumps over the lazy dog.", "Language models read many languages."],
    "fr": ["Le renard brun saute par-dessus le chien.", "Les modèles de langue lisent le français."],
    "zh": ["敏捷的棕色狐狸跳过了懒狗。", "语言模型可以阅读多种语言。"],
}


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    return tiny_models.shared("tiny-random-gpt2")


def _sets(model, picks=None, kinds=("ffn", "q")):
    picks = picks or {"en": [1, 2], "fr": [5, 6, 7], "zh": [10, 11]}
    out = {}
    for lang, idx in picks.items():
        spec = {"ffn": {0: idx, 1: idx}, "q": {1: idx}, "v": {1: idx}}
        out[lang] = NeuronSet.from_indices(model, {k: spec[k] for k in kinds}, {"language": lang})
    return out


def _files(tmp_path, model, picks=None):
    neurons = tmp_path / "sets"
    for lang, ns in _sets(model, picks).items():
        ns.save(neurons / lang)
    texts = tmp_path / "texts"
    texts.mkdir(exist_ok=True)
    for lang, t in TEXTS.items():
        (texts / f"{lang}.txt").write_text("\n".join(t) + "\n", encoding="utf-8")
    return neurons, texts


def _grid(neurons, texts, out, *extra):
    return ["experiment", "deactivation", "--model", "tiny-random-gpt2", "--neurons", str(neurons), "--task", "ppl",
            "--langs", "en,fr,zh", "--out", str(out), "--understanding", "1", "--generation", "1", "--seeds", "0",
            "--texts-dir", str(texts), "--max-length", "16", "--batch-size", "2", "--device", "cpu", *extra]


def _table(out):
    with (out / "table.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---- keys and the plan ---------------------------------------------------------------------------

def test_cell_key_round_trip():
    keys = [CellKey.original("fr"), CellKey("task-solving FFN", "random3", "zh", "en")]
    for key in keys:
        again = CellKey.from_json(json.loads(json.dumps(key.to_json())))
        assert again == key and hash(again) == hash(key)
    assert str(keys[0]) == "original|fr" and str(keys[1]) == "task-solving FFN|random3|zh|en"
    for bad in ["original|fr", {"region": "x"}, {"region": 1, "variant": "v", "neurons_of": None, "eval_lang": "en"}]:
        with pytest.raises(ValueError, match="cell key"):
            CellKey.from_json(bad)


def test_plan_shares_cells_and_covers_the_grid(gpt2):
    model, _ = gpt2
    spec = GridSpec(("en", "fr", "zh"), "en", 1, 1, (0, 1), matrix=False)
    cells = plan_cells(spec, _sets(model), 3)
    keys = [c.key for c in cells]
    assert len(keys) == len(set(keys))
    variants = ["specific", "random0", "random1"]
    want = {CellKey.original(lang) for lang in spec.langs}
    want |= {CellKey("all layers", v, lang, lang) for lang in spec.langs for v in variants}
    want |= {CellKey(r.name, v, t, ev) for r in layer_regions(3, 1, 1) for t in ("fr", "zh") for v in variants
             for ev in ("en", t)}
    assert set(keys) == want  # the headline and the grid's "all layers" row share their cells
    fr_ffn = next(c for c in cells if c.key == CellKey("task-solving FFN", "specific", "fr", "en"))
    assert fr_ffn.off.count() == fr_ffn.off.count("ffn", 1) == 3


def test_repeated_languages_are_refused_before_loading(tmp_path, capsys, gpt2):
    code = mwork.cli.main(["experiment", "deactivation", "--model", "no-such-model", "--neurons", str(tmp_path),
                           "--langs", "en,fr,fr", "--out", str(tmp_path / "o"), "--understanding", "1",
                           "--generation", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "fr more than once" in err and "no-such-model" not in err
    model, tok = gpt2
    with pytest.raises(ValueError, match="more than once"):
        run_deactivation_experiment(model, perplexity_evaluator(model, tok, TEXTS), _sets(model),
                                    GridSpec(("en", "fr", "fr"), "en", understanding=1, generation=1, seeds=(0,)),
                                    tmp_path / "api", progress=False)


# ---- content-keyed resume ---------------------------------------------------------------------------

def test_replaced_sets_and_texts_are_recomputed_not_reused(tmp_path, capsys, gpt2):
    """The bug as the user met it: new files in the same --neurons folder, same command, exit 0
    with the old numbers. Now the changed cells are recomputed and the reason is said."""
    model, _ = gpt2
    neurons, texts = _files(tmp_path, model)
    out = tmp_path / "out"
    assert mwork.cli.main(_grid(neurons, texts, out)) == 0
    first = _table(out)
    capsys.readouterr()
    cells_before = (out / "cells.jsonl").read_text()

    assert mwork.cli.main(_grid(neurons, texts, out)) == 0  # nothing changed: nothing recomputed
    assert "recomputed" not in capsys.readouterr().err
    assert (out / "cells.jsonl").read_text() == cells_before and _table(out) == first

    shutil.rmtree(neurons)  # other sets, same folder, same command
    _files(tmp_path, model, picks={"en": [3], "fr": [20, 21, 22, 23], "zh": [30, 31]})
    assert mwork.cli.main(_grid(neurons, texts, out)) == 0
    err = capsys.readouterr().err
    assert "computed from other inputs" in err and "NeuronSet of en, fr, zh changed" in err
    fresh = tmp_path / "fresh"
    assert mwork.cli.main(_grid(neurons, texts, fresh)) == 0
    assert _table(out) == _table(fresh) != first
    lines = (out / "cells.jsonl").read_text().splitlines()
    assert len(lines) == len({json.dumps(json.loads(x)["key"]) for x in lines})  # no stale duplicates left

    (texts / "zh.txt").write_text("另一个中文句子。\n还有一个。\n", encoding="utf-8")
    capsys.readouterr()
    assert mwork.cli.main(_grid(neurons, texts, out)) == 0
    err = capsys.readouterr().err
    assert "evaluation texts / examples or options of zh changed" in err and "NeuronSet" not in err
    fresh2 = tmp_path / "fresh2"
    assert mwork.cli.main(_grid(neurons, texts, fresh2)) == 0
    assert _table(out) == _table(fresh2)
    results = json.loads((out / "results.json").read_text())
    assert results["original"]["zh"] != json.loads((fresh / "results.json").read_text())["original"]["zh"]


def test_changed_weights_and_batch_size_are_recomputed(tmp_path, capsys, fresh_tiny):
    model, tok = fresh_tiny("tiny-random-gpt2")
    calls = []
    base = perplexity_evaluator(model, tok, TEXTS, batch_size=2, max_length=16)

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, lang):
            calls.append(lang)
            return self.inner(lang)

        def inputs_digest(self, lang):
            return self.inner.inputs_digest(lang)

    sets = _sets(model)
    spec = GridSpec(("en", "fr"), "en", understanding=1, generation=1, seeds=(0,))
    run_deactivation_experiment(model, Counting(base), sets, spec, tmp_path, progress=False)
    n = len(calls)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)  # a retrained weight: every cell is stale
    capsys.readouterr()
    run_deactivation_experiment(model, Counting(base), sets, spec, tmp_path, progress=False)
    assert len(calls) == 2 * n and "the model's weights changed" in capsys.readouterr().err
    other = perplexity_evaluator(model, tok, TEXTS, batch_size=1, max_length=16)
    run_deactivation_experiment(model, Counting(other), sets, spec, tmp_path, progress=False)
    assert len(calls) == 3 * n and "options of en, fr changed" in capsys.readouterr().err


def test_torn_last_line_is_dropped_and_recomputed(tmp_path, capsys, gpt2):
    model, tok = gpt2
    calls = []
    base = perplexity_evaluator(model, tok, TEXTS, batch_size=2, max_length=16)

    def evaluate(lang):  # a plain function: cells keyed by model and sets only
        calls.append(lang)
        return base(lang)

    spec = GridSpec(("en", "fr"), "en", understanding=1, generation=1, seeds=(0,))
    first = run_deactivation_experiment(model, evaluate, _sets(model), spec, tmp_path, progress=False)
    path = tmp_path / "cells.jsonl"
    data = path.read_bytes()
    last = data[:-1].rindex(b"\n") + 1
    path.write_bytes(data[:last + (len(data) - last) // 2])  # killed in the middle of writing the last cell
    n = len(calls)
    capsys.readouterr()
    again = run_deactivation_experiment(model, evaluate, _sets(model), spec, tmp_path, progress=False)
    err = capsys.readouterr().err
    assert f"{path}: the last line is incomplete" in err and "recomputed" in err
    assert len(calls) == n + 1  # that one cell, nothing else
    assert again["grid"] == first["grid"] and again["headline"] == first["headline"]
    assert path.read_bytes() == data  # the file is whole again, in the same order


def test_torn_line_message_and_garbage_line_names_the_file(tmp_path, capsys, gpt2):
    model, _ = gpt2
    neurons, texts = _files(tmp_path, model)
    out = tmp_path / "out"
    assert mwork.cli.main(_grid(neurons, texts, out)) == 0
    path = out / "cells.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:25])
    capsys.readouterr()
    assert mwork.cli.main(_grid(neurons, texts, out)) == 0
    assert f"{path}: the last line is incomplete" in capsys.readouterr().err
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = "not json at all\n"
    path.write_text("".join(lines))
    assert mwork.cli.main(_grid(neurons, texts, out)) == 2
    err = capsys.readouterr().err
    assert f"{path}:3 is not a cell of the deactivation grid (not valid JSON)" in err and "delete that line" in err
    lines[2] = '{"key": "x"}\n'
    path.write_text("".join(lines))
    assert mwork.cli.main(_grid(neurons, texts, out)) == 2
    assert f"{path}:3 is not a cell" in capsys.readouterr().err


# ---- the table says what was switched off --------------------------------------------------------

def test_region_kinds_are_those_really_switched_off(tmp_path, gpt2):
    model, tok = gpt2
    only_v = _sets(model, kinds=("ffn", "v"))  # attention neurons of V only, in layer 1
    res = run_deactivation_experiment(model, perplexity_evaluator(model, tok, TEXTS, max_length=16), only_v,
                                      GridSpec(("en", "fr", "zh"), "en", understanding=1, generation=1, seeds=(0,)),
                                      tmp_path, progress=False)
    kinds = {(r["region"], r["neurons_off"]): r["kinds"] for r in res["grid"]}
    for region in layer_regions(3, 1, 1):  # a direct count of what each region holds
        held = [k for k in region.kinds
                if any(only_v[t].restrict(region.layers, [k]).count() for t in ("fr", "zh"))]
        assert kinds[region.name, "specific"] == kinds[region.name, "random"] == ("+".join(held) or "none")
    assert kinds["task-solving attention", "specific"] == "v" and kinds["generation", "specific"] == "none"
    assert kinds["understanding", "specific"] == "ffn"
    assert {r["name"]: r["kinds"] for r in res["info"]["regions"]}["task-solving attention"] == ("q", "k", "v")
    assert _table(tmp_path)[3]["kinds"] == "v"


# ---- the config-generated CLI and the API side by side ---------------------------------------------

def test_cli_equals_api(tmp_path, capsys, gpt2):
    model, tok = gpt2
    neurons, texts = _files(tmp_path, model)
    assert mwork.cli.main(_grid(neurons, texts, tmp_path / "cli", "--matrix")) == 0
    config = DeactivationConfig(model="tiny-random-gpt2", neurons=str(neurons), task="ppl", langs="en,fr,zh",
                                out=str(tmp_path / "api"), understanding=1, generation=1, seeds=(0,),
                                texts_dir=str(texts), max_length=16, batch_size=2, device="cpu", matrix=True)
    api = run_deactivation(config, progress=False)
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    for r in (api, cli):
        r["info"].pop("elapsed_s")
    assert json.loads(json.dumps(api, default=str)) == cli
    for name in ("table.csv", "headline.csv", "matrix.csv"):
        assert (tmp_path / "api" / name).read_text() == (tmp_path / "cli" / name).read_text()
    with pytest.raises(ValueError, match="must include English"):
        DeactivationConfig(neurons="x", langs=("fr", "zh"), out="o")
    with pytest.raises(ValueError, match="unknown task"):
        DeactivationConfig(neurons="x", langs=("en", "fr"), out="o", task="gsm8k")
    assert mwork.cli.main([*_grid(neurons, texts, tmp_path / "x"), "--seeds", "0,0"]) == 2
    assert "each once" in capsys.readouterr().err


# ---- regions from a lens result --------------------------------------------------------------------

def _shares(curve):
    return {"en": [{"english_share": 1.0}] * len(curve), "zh": [{"english_share": x} for x in curve]}


def test_resolve_regions():
    lens = _shares([0.0, 0.1, 0.8, 0.9, 0.7, 0.1, 0.0])  # 6 decoder layers: r = 2, s = 4
    assert resolve_regions(6, lens)[:2] == (2, 2)
    u, g, est = resolve_regions(6, lens, understanding=1)
    assert (u, g) == (1, 2) and est.found and est.rise_layer == 2 and est.fall_layer == 4
    assert resolve_regions(6, None, 3, 1) == (3, 1, None)
    with pytest.raises(ValueError, match="--understanding U and --generation G, or --lens"):
        resolve_regions(6)
    with pytest.raises(ValueError, match="has 6 layers but the model has 8"):
        resolve_regions(8, lens)
    with pytest.raises(ValueError, match="could not estimate") as err:
        resolve_regions(6, _shares([0.1] * 7))
    assert "no estimate" in err.value.estimate.describe()
