"""The comparison's reuse is keyed by content; the method registry takes a new method as one entry;
the enhance commands' options come from the config objects."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import mwork
from mwork.cli import build_parser, main
from mwork.config import from_args
from mwork.experiments import training_methods as methods
from mwork.experiments.compare import CompareConfig
from mwork.experiments.enhance import METHODS, EnhanceSettings, compare
from mwork.experiments.training_methods import Method, get_method, register_training_method
from mwork.models.adapters import get_adapter
from mwork.neurons.neuronset import NeuronSet

TEXTS = ["Le renard brun saute par-dessus le chien paresseux.", "Les modèles de langue lisent le français.",
         "Bonjour le monde, le renard brun saute.", "El rápido zorro marrón salta sobre el perro perezoso."]
EVALS = {"fr": TEXTS[:2], "en": ["The quick brown fox."]}
FAST = dict(lr=1e-2, batch_size=2, grad_accum=1, warmup_ratio=0.0, max_steps=1, progress=False, device="cpu")


def _neurons(model, shift=0):
    counts = get_adapter(model).neuron_counts()
    return NeuronSet.from_indices(model, {"ffn": {0: [1 + shift, 5]}, "q": {1: [0, counts["q"] - 1]}})


@pytest.fixture
def model_dir(tmp_path, fresh_tiny):
    """tiny-random-llama saved as a local folder, so that its weights can change under the same name."""
    model, tok = fresh_tiny("tiny-random-llama")
    path = tmp_path / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model


def _count_evaluations(monkeypatch):
    import mwork.experiments.compare as cmp

    calls = []
    original = cmp._evaluate
    monkeypatch.setattr(cmp, "_evaluate", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_changed_model_or_neurons_invalidates_the_before(model_dir, tmp_path, monkeypatch):
    path, model = model_dir
    ns_file = tmp_path / "ns.safetensors"
    _neurons(model).save(ns_file)
    out = tmp_path / "cmp"
    first = compare(str(path), ns_file, TEXTS, EVALS, out, methods=["neurons"], **FAST)
    calls = _count_evaluations(monkeypatch)
    # the same content under another name is the same comparison: "before" and rows are reused
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    again = compare(str(copy), ns_file, TEXTS, EVALS, out, methods=["random"], **FAST)
    assert len(calls) == 1  # only the random method's "after"
    assert [r["method"] for r in again] == ["neurons", "random"] and again[0] == first[0]
    assert again[1]["ppl_fr_before"] == first[0]["ppl_fr_before"]
    # other weights under the same name: refused before anything is evaluated
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    model.save_pretrained(path)
    with pytest.raises(ValueError, match=r"differs in \['model \(its weights\)'\]"):
        compare(str(path), ns_file, TEXTS, EVALS, out, methods=["random"], **FAST)
    # other neurons in the same file
    _neurons(model, shift=1).save(ns_file)
    with pytest.raises(ValueError, match=r"differs in \['neurons'\]"):
        compare(str(copy), ns_file, TEXTS, EVALS, out, methods=["random"], **FAST)
    _neurons(model).save(ns_file)
    # other evaluation texts under the same name, other training texts, another dtype
    with pytest.raises(ValueError, match=r"differs in \['eval_sets'\]"):
        compare(str(copy), ns_file, TEXTS, {**EVALS, "fr": TEXTS[1:3]}, out, methods=["random"], **FAST)
    with pytest.raises(ValueError, match=r"differs in \['data_sha256'\]"):
        compare(str(copy), ns_file, TEXTS[::-1], EVALS, out, methods=["random"], **FAST)
    with pytest.raises(ValueError, match=r"model \(its weights\)"):
        compare(str(copy), ns_file, TEXTS, EVALS, out, methods=["random"], **dict(FAST, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"compare\.random_seed"):
        compare(str(copy), ns_file, TEXTS, EVALS, out, methods=["random"], random_seed=3, **FAST)
    assert len(calls) == 1
    meta = json.loads((out / "compare.json").read_text())
    assert len(meta["model_sha256"]) == 64 and meta["neurons"]["sha256"] == mwork.fingerprints.neurons_digest(
        _neurons(model))


class NormsOnly(Method):
    """A method from outside mwork: train only the normalisation weights."""

    name = "norms"

    def parameters(self):
        return [p for n, p in self.model.named_parameters() if "norm" in n]


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(methods, "REGISTRY", methods.REGISTRY.copy())  # registrations end with the test
    return methods.REGISTRY


def test_a_new_method_is_one_entry(registry, tmp_path, capsys, fresh_tiny):
    from mwork.experiments.enhance import run_method
    from mwork.tasks.perplexity import perplexity

    register_training_method(NormsOnly)
    assert methods.method_names() == (*METHODS, "norms") and get_method("norms") is NormsOnly
    with pytest.raises(ValueError, match="already registered"):
        register_training_method(type("Other", (Method,), {"name": "norms"}))
    # standalone: only the norm weights change, train.json is written
    model, tok = fresh_tiny("tiny-random-llama")
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = run_method(NormsOnly(model), tok, TEXTS, tmp_path / "alone", **{k: v for k, v in FAST.items() if k != "device"})
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, base[n])}
    assert changed and all("norm" in n for n in changed)
    assert res.meta["method"] == "norms" and (tmp_path / "alone" / "train.json").is_file()
    assert res.meta["trainable_parameters"] == sum(base[n].numel() for n in base if "norm" in n)
    # in the comparison: its row's "after" is the perplexity of the model trained the same way
    rows = compare("tiny-random-llama", _neurons(model), TEXTS, EVALS, tmp_path / "cmp", methods=["neurons", "norms"],
                   lrs={"norms": 2e-2}, **FAST)
    by = {r["method"]: r for r in rows}
    assert list(by) == ["neurons", "norms"] and by["norms"]["lr"] == 2e-2 and by["norms"]["lora_rank"] is None
    fresh, tok = fresh_tiny("tiny-random-llama")
    run_method(NormsOnly(fresh), tok, TEXTS, **{k: v for k, v in dict(FAST, lr=2e-2).items() if k != "device"})
    for name, texts in EVALS.items():
        assert by["norms"][f"ppl_{name}_after"] == round(perplexity(fresh, tok, texts, batch_size=8, max_length=512,
                                                                    progress=False)["ppl"], 4)
    # and on the command line, with its own learning-rate option
    _neurons(model).save(tmp_path / "ns.safetensors")
    (tmp_path / "t.txt").write_text("\n".join(TEXTS) + "\n")
    args = ["enhance", "compare", "--model", "tiny-random-llama", "--neurons", str(tmp_path / "ns.safetensors"),
            "--texts", str(tmp_path / "t.txt"), "--eval", f"fr={tmp_path / 't.txt'}[0:2]", "--out",
            str(tmp_path / "cli"), "--methods", "norms", "--norms-lr", "2e-2", "--steps", "1", "--lr", "1e-2",
            "--batch-size", "2", "--grad-accum", "1", "--warmup-ratio", "0", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    row = json.loads((tmp_path / "cli" / "compare.json").read_text())["rows"][0]
    assert row["method"] == "norms" and row["ppl_fr_after"] == by["norms"]["ppl_fr_after"]
    capsys.readouterr()


def test_unknown_methods_and_settings_are_refused_first(tmp_path):
    for kw, match in (({"methods": ["neurons", "nope"]}, "unknown methods"), ({"lrs": {"lorra": 1e-3}}, "lrs"),
                      ({"methods": ["lora", "lora"]}, "twice"), ({"task_limit": 3}, "need|only with tasks"),
                      ({"eval_articles": "48:24"}, "eval_articles"), ({"learning_rate": 1}, "unknown settings")):
        with pytest.raises(ValueError, match=match):
            compare("tiny-random-llama", tmp_path / "missing.safetensors", TEXTS, EVALS, tmp_path / "o", **kw)
    assert not (tmp_path / "o").exists()


def test_options_come_from_the_config_objects(tmp_path, capsys):
    parser = build_parser()
    args = parser.parse_args(["enhance", "--steps", "3", "--lr", "0.1", "--batch-size", "2", "--schedule", "linear",
                              "--max-docs", "5", "--micro-batch-size", "1"])
    assert from_args(EnhanceSettings, args) == EnhanceSettings(max_steps=3, lr=0.1, batch_size=2, schedule="linear",
                                                               max_docs=5, micro_batch_size=1)
    args = parser.parse_args(["enhance", "compare", "--neurons", "n", "--texts", "t", "--eval", "a=b", "--out", "o",
                              "--methods", "neurons,lora", "--lora-rank", "4", "--task-max-new-tokens", "7",
                              "--eval-max-texts", "3", "--eval-articles", "24:30"])
    assert from_args(CompareConfig, args, tasks={"xquad": ("zh",)}) == CompareConfig(
        methods=("neurons", "lora"), lora_rank=4, task_kwargs={"max_new_tokens": 7}, eval_max_texts=3,
        eval_articles="24:30", tasks={"xquad": ("zh",)})
    for cmd in (["enhance", "--help"], ["enhance", "compare", "--help"]):
        with pytest.raises(SystemExit):
            main(cmd)
        text = capsys.readouterr().out
        assert "learning rate (default: 2e-06)" in text and "--steps N" in text and "%%" not in text
    # invalid values: a sentence and exit 2 before a model is loaded
    assert main(["enhance", "--neurons", "n", "--texts", "t", "--out", str(tmp_path), "--lr", "0"]) == 2
    assert "lr must be positive" in capsys.readouterr().err
    assert main(["enhance", "compare", "--neurons", "n", "--texts", "t", "--eval", "a=b", "--out", str(tmp_path),
                 "--methods", "neurons,bogus"]) == 2
    assert "unknown methods" in capsys.readouterr().err
