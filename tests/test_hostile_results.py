"""Second hostile round: results that looked like results but were not, as the user meets them on
the command line -- a device that is not there, a set steered under another language's name or
cancelled by --off, overflowing strengths ranked and averaged, a bool tensor read as neuron
indices, an empty set switched off. Each must end in a clear message (and exit code), or in a
result marked for what it is."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from mwork.cli import main
from mwork.neurons.neuronset import NeuronSet
from mwork.numerics import unusable_logits

MODEL = "tiny-random-llama"
PROMPTS = ["The quick brown fox", "Hello world"]
CORPUS = ["敏捷的棕色狐狸跳过了懒狗。", "语言模型可以阅读和书写多种语言。"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MWORK_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def files(tmp_path, shared_tiny):
    model, _ = shared_tiny(MODEL)
    gen = torch.Generator().manual_seed(0)
    zh, empty = NeuronSet.empty_for(model, {"language": "zh"}), NeuronSet.empty_for(model, {"language": "zh"})
    for k in zh.kinds:
        zh.masks[k] = torch.rand(zh.masks[k].shape, generator=gen) < 0.08
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    (tmp_path / "zh.txt").write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    return {"zh": str(zh.save(tmp_path / "specific" / "zh")), "empty": str(empty.save(tmp_path / "empty")),
            "prompts": str(tmp_path / "prompts.txt"), "corpus": str(tmp_path / "zh.txt"), "dir": tmp_path}


def steer(files, out, *extra, target="zh", neurons=None):
    return main(["steer", "--model", MODEL, "--neurons", neurons or files["zh"], "--target", target,
                 "--prompts", files["prompts"], "--source", "en", "--seeds", "0", "--out", str(out),
                 "--max-new-tokens", "3", "--device", "cpu", "--no-progress", *extra])


def read_csv(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---- 4: one device rule for every command -------------------------------------------------------


def _missing_cuda() -> str:
    """A CUDA device this machine does not have (``cuda`` itself where there is no CUDA)."""
    return "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


def test_eval_refuses_a_device_the_machine_lacks_like_every_command(files, tmp_path, capsys):
    device = _missing_cuda()
    code = main(["eval", "--model", MODEL, "--tasks", "mwork_xquad_mc_en", "--out", str(tmp_path / "e"),
                 "--device", device])
    err = capsys.readouterr().err
    assert code == 2 and f"mwork eval: error: device {device!r} is not usable on this machine" in err
    assert "use --device cpu" in err and "Traceback" not in err
    assert not (tmp_path / "e" / "mwork_eval.json").exists()  # nothing ran on the CPU instead
    # steer says the same, from the same rule (mwork.models.loading.check_device)
    assert steer(files, tmp_path / "s", "--mode", "scale", "--device", device) == 2
    assert f"mwork steer: error: device {device!r} is not usable on this machine" in capsys.readouterr().err


def test_lm_eval_backend_applies_the_same_device_rule():
    from mwork.tasks.lm_eval_backend import MworkLM

    device = _missing_cuda()
    with pytest.raises(ValueError, match=f"device {device!r} is not usable on this machine"):
        MworkLM(MODEL, device=device)


# ---- 5: the set's language and --off --------------------------------------------------------------


def test_steering_another_languages_set_warns(files, tmp_path, capsys):
    out = tmp_path / "fr"
    assert steer(files, out, "--mode", "scale", "--strengths", "2", target="fr") == 0
    err = capsys.readouterr().err
    assert ("mwork steer: warning: the steered NeuronSet is zh's (its metadata records language 'zh'), but the "
            "target is 'fr'") in err
    rows = read_csv(out / "steer.csv")
    assert rows and {r["target"] for r in rows} == {"fr"}  # labelled as asked, and said


def test_off_equal_to_the_steered_set_is_refused(files, tmp_path, capsys, monkeypatch):
    from mwork.experiments.steering import sweep

    monkeypatch.setattr(sweep, "generate_measured", lambda *a, **k: pytest.fail("generated"))
    assert steer(files, tmp_path / "o", "--mode", "scale", "--strengths", "2", "--off", files["zh"]) == 2
    err = capsys.readouterr().err
    assert "mwork steer: error: every steered neuron" in err and "also in the off set" in err
    assert "cancel it" in err and not (tmp_path / "o" / "steer.csv").exists()


def test_an_off_set_overlapping_the_steered_one_warns(files, tmp_path, capsys):
    ns = NeuronSet.load(files["zh"])
    half = NeuronSet(dict(ns.masks), dict(ns.meta, language="en"))
    half.masks["ffn"] = torch.zeros_like(ns.masks["ffn"])  # the zh set's attention neurons only
    off = half.save(tmp_path / "en")
    assert steer(files, tmp_path / "p", "--mode", "scale", "--strengths", "2", "--off", str(off)) == 0
    both = ns.count() - ns.count("ffn")
    assert (f"mwork steer: warning: {both} of the {ns.count()} steered neurons are also in --off: they are "
            "switched off, not steered") in capsys.readouterr().err


def test_steering_api_refuses_an_off_set_that_cancels_it(shared_tiny, files):
    from mwork.steering import steer as steer_ctx

    model, _ = shared_tiny(MODEL)
    ns = NeuronSet.load(files["zh"])
    with pytest.raises(ValueError, match="every steered neuron"):
        steer_ctx(model, ns, "scale", 2.0, off=ns)
    steer_ctx(model, ns, "scale", 1.0, off=ns)  # nothing steered: switching the set off is fine


# ---- 6: overflow is reported, never ranked or averaged -------------------------------------------


def test_an_overflowing_strength_marks_its_rows_nonfinite(files, tmp_path, capsys):
    out = tmp_path / "big"
    assert steer(files, out, "--strengths", "1e30", "--corpus", files["corpus"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "mwork steer: warning: non-finite logits (NaN or inf, or all equal" in captured.err
    assert "specific at 1e+30" in captured.err and "left empty in steer.csv" in captured.err
    assert "non-finite logits in 2 of 2 generations: not measured" in captured.out
    rows = read_csv(out / "steer.csv")
    assert rows and all(int(r["nonfinite"]) > 0 for r in rows)
    for r in rows:  # no rank, mass, rate or damage measured from NaN logits
        assert r["target_rank"] == r["target_prob_mass"] == r["target_rate"] == r["damage_ppl"] == ""
    assert read_csv(out / "unsteered.csv")[0]["nonfinite"] == "0"
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert gens and all(g["nonfinite"] for g in gens)


def test_a_negative_scale_that_overflows_is_not_ranked_best(files, tmp_path, capsys):
    out = tmp_path / "neg"
    assert steer(files, out, "--mode", "scale", "--strengths=-1e20") == 0
    assert "Traceback" not in capsys.readouterr().err
    specific = [r for r in read_csv(out / "steer.csv") if r["method"] == "specific"][0]
    assert int(specific["nonfinite"]) >= 1 and specific["target_rank"] == ""


@pytest.mark.parametrize("value, says", [("1e39", "1e+39 is beyond float32's range"),
                                         ("nan", "nan is not a finite number"),
                                         ("-inf", "-inf is not a finite number")])
def test_unrepresentable_strengths_are_refused_naming_the_option(files, tmp_path, capsys, value, says):
    with pytest.raises(SystemExit) as exit_:
        steer(files, tmp_path / "x", "--mode", "scale", f"--strengths=1,{value}")
    assert exit_.value.code == 2
    assert f"argument --strengths: {says}" in capsys.readouterr().err


def test_perplexity_of_overflowing_logits_is_an_error_not_the_vocabulary_size(files, capsys):
    code = main(["ppl", "--model", MODEL, "--neurons", files["zh"], "--scale", "1e30", "--texts", files["corpus"],
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "mwork ppl: error: non-finite logits" in err and "no perplexity can be computed" in err
    assert main(["ppl", "--model", MODEL, "--neurons", files["zh"], "--scale", "1e39", "--texts",
                 files["corpus"]]) == 2
    assert "beyond float32's range" in capsys.readouterr().err


def test_unusable_logits_rule():
    lg = torch.randn(5, 7)
    lg[1, 2] = float("nan")
    lg[2] = 0.0  # all equal: a norm zeroed an overflowed hidden state
    lg[3, 4] = float("inf")
    lg[4, :3] = float("-inf")  # masked tokens: probability 0, still measurable
    assert unusable_logits(lg).tolist() == [False, True, True, True, False]


# ---- 7: LAPE indices are checked, never coerced -----------------------------------------------------


def _lape(tmp_path, name, *per_layer):
    path = tmp_path / f"{name}.pth"
    torch.save([list(per_layer)], path)
    return str(path)


@pytest.mark.parametrize("layer0, says", [
    (torch.tensor([True, False]), "language 0, layer 0 holds bool values (a mask, not indices)"),
    (torch.tensor([1, 0], dtype=torch.uint8), "language 0, layer 0 holds uint8 values"),
    (torch.tensor([1.0, 2.0]), "language 0, layer 0 holds float32 values"),
    (torch.tensor([3, 5, 3]), "language 0 (en), layer 0 lists FFN neuron 3 more than once"),
    (torch.tensor([-1, 2]), "language 0 (en), layer 0 lists FFN neuron -1: neuron indices are 0 or more"),
    (torch.tensor([2, 96]), "language 0 (en), layer 0 lists FFN neuron 96, but this model's FFN layers have 96"),
])
def test_lape_import_checks_every_index(tmp_path, capsys, layer0, says):
    path = _lape(tmp_path, "x", layer0, torch.tensor([1]), torch.tensor([], dtype=torch.int64))
    code = main(["convert", "--from", "lape", path, "--model", MODEL, "--langs", "en", "--out-dir",
                 str(tmp_path / "sets")])
    err = capsys.readouterr().err
    assert code == 2 and f"mwork convert: error: {path}: {says}" in err
    assert not (tmp_path / "sets" / "en.safetensors").exists()


def test_lape_import_of_good_indices_still_works(tmp_path, capsys):
    path = _lape(tmp_path, "ok", torch.tensor([5, 2]), torch.tensor([1], dtype=torch.int32),
                 torch.tensor([], dtype=torch.int64))
    assert main(["convert", "--from", "lape", path, "--model", MODEL, "--langs", "en", "--out-dir",
                 str(tmp_path / "sets")]) == 0
    ns = NeuronSet.load(tmp_path / "sets" / "en.safetensors")
    assert ns.indices("ffn", 0).tolist() == [2, 5] and ns.indices("ffn", 1).tolist() == [1] and ns.count() == 3


def test_reference_import_refuses_repeated_neurons_and_layers(tmp_path, shared_tiny):
    from mwork.neurons.convert import import_reference

    model, _ = shared_tiny(MODEL)
    lines = ["{0: {1, 2}}", "{0: {1, 2}}", "{0: [3, 3]}", "{0: set()}", "{0: set()}"]
    path = tmp_path / "ref.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 3 \(q\), layer 0 lists neuron 3 more than once"):
        import_reference(path, model, "en")
    lines[2] = "{0: {3}, 0: {4}}"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lists layer 0 more than once"):
        import_reference(path, model, "en")


# ---- 13: a set with no neuron: one rule for steer, eval and ppl ----------------------------------------


def test_a_set_with_no_neuron_is_refused_by_eval_ppl_and_steer(files, tmp_path, capsys):
    code = main(["eval", "--model", MODEL, "--tasks", "mwork_xquad_mc_en", "--out", str(tmp_path / "e"),
                 "--neurons", files["empty"], "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"mwork eval: error: the NeuronSet {files['empty']} has no neuron: nothing to switch off" in err
    code = main(["ppl", "--model", MODEL, "--neurons", files["zh"], "--layers", "0", "--kinds", "ffn", "--texts",
                 files["corpus"], "--device", "cpu"])
    assert code == 0  # the zh set has FFN neurons in layer 0
    capsys.readouterr()
    code = main(["ppl", "--model", MODEL, "--neurons", files["empty"], "--texts", files["corpus"], "--device", "cpu"])
    assert code == 2 and "has no neuron: nothing to switch off" in capsys.readouterr().err
    assert steer(files, tmp_path / "s", "--mode", "scale", neurons=files["empty"]) == 2
    assert "mwork steer: error: the NeuronSet has no neuron: nothing to steer" in capsys.readouterr().err


def test_eval_refuses_an_empty_restriction_before_lm_eval(files, tmp_path, capsys, shared_tiny):
    model, _ = shared_tiny(MODEL)
    ffn_only = NeuronSet.from_indices(model, {"ffn": {0: [1, 2]}}, {"language": "zh"}).save(tmp_path / "ffn")
    code = main(["eval", "--model", MODEL, "--tasks", "mwork_xquad_mc_en", "--out", str(tmp_path / "e"),
                 "--neurons", str(ffn_only), "--kinds", "q", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "has no neuron in the chosen layers and kinds: nothing to switch off" in err
