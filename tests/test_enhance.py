"""Enhancement: only the selected neurons' slices train, deltas round-trip, resume is exact."""

from __future__ import annotations

import json

import pytest
import torch

import mwork
from mwork.cli import main
from mwork.neurons.delta import NeuronDelta, apply_delta
from mwork.experiments.enhance import CHECKPOINT_FILE, compare, enhance, lora_for_budget, read_checkpoint
from mwork.models.adapters import get_adapter
from mwork.neurons.neuronset import NeuronSet

# Llama-style (gated MLP, GQA), with q/k/v biases (qwen2), Conv1D (gpt2), fused qkv (bloom, gpt_neox)
FAMILIES = ["tiny-random-llama", "tiny-random-qwen2", "tiny-random-gemma3", "tiny-random-gpt2",
            "tiny-random-bloom", "tiny-random-gpt_neox"]

TEXTS = [
    "Le renard brun saute par-dessus le chien paresseux. Les modèles de langue lisent le français.",
    "Les modèles de langue lisent le français.",
    "Bonjour le monde, le renard brun saute.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
]
# float64 with right padding gives NaN in transformers' eager sliding-window models (mistral,
# gemma2, gemma3): those run in float32 here
DTYPES = {"tiny-random-gemma3": torch.float32}
FAST = dict(lr=1e-2, batch_size=2, grad_accum=2, warmup_ratio=0.0, progress=False)


def _neurons(model: torch.nn.Module) -> NeuronSet:
    ad = get_adapter(model)
    counts = ad.neuron_counts()
    return NeuronSet.from_indices(model, {
        "ffn": {0: [1, 5], 2: [counts["ffn"] - 1]},
        "q": {1: [0, counts["q"] - 1]},
        "k": {0: [3]},
        "v": {2: [1, counts["v"] - 1]},
    })


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_models):
    """One short float64 run per family: (alias, trained base model, tokenizer, result, out dir)."""
    runs = {}
    for alias in FAMILIES:
        model, tok = tiny_models.fresh(alias, DTYPES.get(alias, torch.float64))
        out = tmp_path_factory.mktemp(alias)
        res = enhance(model, tok, _neurons(model), TEXTS, out, max_steps=2, **FAST)
        runs[alias] = (model, tok, res, out)
    return runs


@pytest.mark.parametrize("alias", FAMILIES)
def test_only_selected_slices_change(trained, alias, shared_tiny):
    model, tok, res, out = trained[alias]
    dtype = DTYPES.get(alias, torch.float64)
    base, _ = shared_tiny(alias, dtype)
    merged, _ = mwork.load_model(alias, dtype=dtype, device="cpu", delta=out)
    assert all(torch.isfinite(torch.tensor(res.losses))) and res.losses[-1] != res.losses[0]
    masks = res.delta.element_masks(base)
    # the delta holds exactly the selected elements
    assert sum(int(m.sum()) for m in masks.values()) == res.delta.num_parameters() == res.meta["trainable_parameters"]
    assert {k.split(".")[-2] for k in masks} >= {"query_key_value", "c_attn", "q_proj"} & {k.split(".")[-2] for k in masks}
    for (name, p0), (_, p1), (_, p_trained) in zip(base.named_parameters(), merged.named_parameters(),
                                                   model.named_parameters()):
        assert torch.equal(p0, p_trained), f"training edited the base weight {name}"
        mask = masks.get(name)
        if mask is None:
            assert torch.equal(p0, p1), f"{name} changed but holds no selected neuron"
            continue
        assert torch.equal(p0[~mask], p1[~mask]), f"{name}: an element outside the selected slices changed"
        assert bool((p0[mask] != p1[mask]).all()), f"{name}: a selected element did not change"


@pytest.mark.parametrize("alias", FAMILIES)
def test_delta_file_round_trips(trained, alias):
    model, tok, res, out = trained[alias]
    ids = tok(TEXTS[:3], return_tensors="pt", padding=True)
    dtype = DTYPES.get(alias, torch.float64)
    merged, _ = mwork.load_model(alias, dtype=dtype, device="cpu", delta=out)
    with torch.no_grad():
        with res.delta.attach(model):
            hooked = model(**ids).logits
        assert not torch.equal(hooked, model(**ids).logits)  # the hooks are gone after the block
        loaded = merged(**ids).logits
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    assert torch.isfinite(hooked).all()
    torch.testing.assert_close(loaded, hooked, rtol=tol, atol=tol)
    again = NeuronDelta.load(out, model)
    for k, v in res.delta.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)
    meta = json.loads((out / "delta.json").read_text())
    assert meta["fingerprint"] == get_adapter(model).fingerprint()
    assert len(meta["losses"]) == 2 and meta["finished"] and len(meta["data"]["sha256"]) == 64


@pytest.mark.parametrize("alias", ["tiny-random-llama", "tiny-random-bloom"])
def test_optimizer_state_matches_selected_slices(trained, alias):
    _, _, res, out = trained[alias]
    ckpt = read_checkpoint(out / CHECKPOINT_FILE)  # safetensors + JSON: nothing is unpickled
    moments = [v for st in ckpt["optimizer"]["state"].values() for k, v in st.items() if k in ("exp_avg", "exp_avg_sq")]
    n = res.delta.num_parameters()
    assert sum(v.numel() for v in moments) == 2 * n == res.meta["optimizer_state_elements"]
    # far fewer than the matrices the slices live in
    model = trained[alias][0]
    whole = sum(model.get_submodule(s.module).weight.numel() for s in {s.module: s for s in res.delta.slices}.values())
    assert n < whole


def test_resume_gives_the_identical_delta(tmp_path, fresh_tiny):
    # gpt2 has dropout: resuming must also restore the RNG
    model, tok = fresh_tiny("tiny-random-gpt2", torch.float64)
    ns = _neurons(model)
    full = enhance(model, tok, ns, TEXTS, tmp_path / "full", max_steps=4, **FAST)
    part = enhance(model, tok, ns, TEXTS, tmp_path / "part", max_steps=4, stop_after=2, **FAST)
    assert not part.meta["finished"] and part.meta["steps"]["done"] == 2
    with pytest.raises(ValueError, match="resume"):
        enhance(model, tok, ns, TEXTS, tmp_path / "part", max_steps=4, **FAST)
    with pytest.raises(ValueError, match="settings"):
        enhance(model, tok, ns, TEXTS, tmp_path / "part", max_steps=5, resume=True, **FAST)
    done = enhance(model, tok, ns, TEXTS, tmp_path / "part", max_steps=4, resume=True, **FAST)
    assert done.meta["finished"] and done.losses == full.losses
    for k, v in full.delta.state_dict().items():
        assert torch.equal(done.delta.state_dict()[k], v), k


def test_micro_batches_do_not_change_the_loss(fresh_tiny):
    model, tok = fresh_tiny("tiny-random-llama", torch.float64)
    ns = _neurons(model)
    a = enhance(model, tok, ns, TEXTS, max_steps=2, **FAST)
    b = enhance(model, tok, ns, TEXTS, max_steps=2, micro_batch_size=1, **FAST)
    assert a.losses == pytest.approx(b.losses, rel=1e-9)  # float64: only the summation order differs
    for k, v in a.delta.state_dict().items():
        torch.testing.assert_close(b.delta.state_dict()[k], v)


def test_bad_input_is_a_clear_error(fresh_tiny, shared_tiny):
    model, tok = fresh_tiny("tiny-random-llama")
    other, _ = shared_tiny("tiny-random-gpt2")
    with pytest.raises(ValueError, match="does not fit"):
        enhance(model, tok, _neurons(other), TEXTS, max_steps=1, progress=False)
    with pytest.raises(ValueError, match="empty"):
        enhance(model, tok, NeuronSet.empty_for(model), TEXTS, max_steps=1, progress=False)
    with pytest.raises(ValueError, match="unknown settings"):
        enhance(model, tok, _neurons(model), TEXTS, learning_rate=1.0)
    with pytest.raises(ValueError, match="lr"):
        enhance(model, tok, _neurons(model), TEXTS, lr=0.0)
    with pytest.raises(ValueError, match="texts"):
        enhance(model, tok, _neurons(model), "one string", max_steps=1)


def test_delta_refuses_another_model(trained, shared_tiny):
    _, _, _, out = trained["tiny-random-gpt2"]
    model, _ = shared_tiny("tiny-random-llama")
    with pytest.raises(ValueError, match="does not fit"):
        apply_delta(model, out)
    with pytest.raises(FileNotFoundError):
        mwork.load_model("tiny-random-gpt2", device="cpu", delta=out / "nowhere")


def test_lora_budget_matches_neuron_count(shared_tiny):
    model, _ = shared_tiny("tiny-random-llama")
    ns = _neurons(model)
    lora = lora_for_budget(model, ns, budget=10_000)
    assert abs(lora["parameters"] - 10_000) <= lora["parameters_per_rank"] / 2
    assert set(lora["target_modules"]) == {s.module for s in NeuronDelta.zeros(model, ns).slices}


def test_cli_writes_delta_and_applies(tmp_path, capsys, shared_tiny):
    model, tok = shared_tiny("tiny-random-gpt2")
    _neurons(model).save(tmp_path / "ns.safetensors")
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "delta"
    args = ["enhance", "--model", "tiny-random-gpt2", "--neurons", str(tmp_path / "ns.safetensors"),
            "--texts", str(tmp_path / "texts.txt"), "--out", str(out), "--max-docs", "4", "--steps", "2",
            "--lr", "1e-2", "--batch-size", "2", "--grad-accum", "1", "--no-progress"]
    assert main(args) == 0
    meta = json.loads((out / "delta.json").read_text())
    assert (out / "delta.safetensors").is_file() and meta["data"]["n_docs"] == 4
    assert meta["settings"]["max_steps"] == 2 and meta["neurons"]["path"].endswith("ns.safetensors")
    assert main(args) == 2  # the folder holds a run: needs --resume
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert main(["enhance", "apply", "--model", "tiny-random-gpt2", "--delta", str(out), "--out", str(tmp_path / "m")]) == 0
    saved, _ = mwork.load_model(str(tmp_path / "m"), device="cpu")
    merged, _ = mwork.load_model("tiny-random-gpt2", device="cpu", delta=out)
    for (n, p), (_, q) in zip(saved.state_dict().items(), merged.state_dict().items()):
        assert torch.equal(p, q), n
    # the contract: `mwork ppl --delta DIR` evaluates the enhanced model
    capsys.readouterr()
    ppl = ["ppl", "--model", "tiny-random-gpt2", "--texts", str(tmp_path / "texts.txt")]
    assert main(ppl) == 0
    base = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(ppl + ["--delta", str(out)]) == 0
    enhanced = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert enhanced["delta"] == str(out) and enhanced["ppl"] != base["ppl"]
    from mwork.tasks.perplexity import perplexity

    assert enhanced["ppl"] == pytest.approx(perplexity(merged, tok, TEXTS, progress=False)["ppl"], rel=1e-6)


def _squad_folder(path):
    """A tiny XQuAD-shaped data folder (48 one-paragraph articles, en and zh): the task
    harness reads it like the real data, evaluation articles are 24-47."""
    path.mkdir()
    words = {"en": ["red", "blue", "green", "cat", "dog"], "zh": ["红色", "蓝色", "绿色", "猫", "狗"]}
    for lang, ws in words.items():
        data = [{"title": f"a{a}", "paragraphs": [{
            "context": f"{ws[a % 5]} {ws[(a + 1) % 5]} {ws[(a + 2) % 5]}.",
            "qas": [{"id": f"{lang}-{a}", "question": f"{ws[(a + 3) % 5]}?", "answers": [{"text": ws[a % 5]}]}]}]}
            for a in range(48)]
        (path / f"xquad.{lang}.json").write_text(json.dumps({"data": data}, ensure_ascii=False), encoding="utf-8")
    return path


def test_compare_writes_a_table(tmp_path, monkeypatch, shared_tiny):
    ns_model, _ = shared_tiny("tiny-random-llama")
    ns = _neurons(ns_model)
    evals = {"fr": TEXTS[:2], "en": ["The quick brown fox."]}
    source = _squad_folder(tmp_path / "xquad")
    out = tmp_path / "cmp"
    # float64: the task outputs of the hooked model and of the merged delta must agree exactly
    kw = dict(max_steps=1, device="cpu", dtype=torch.float64, tasks={"xquad": ["zh", "en"]}, task_source=source,
              task_limit=3, task_kwargs={"max_new_tokens": 3}, **FAST)
    rows = compare("tiny-random-llama", ns, TEXTS, evals, out, lrs={"lora": 1e-2}, **kw)
    assert [r["method"] for r in rows] == ["neurons", "random", "lora", "full"]
    by = {r["method"]: r for r in rows}
    assert by["neurons"]["trainable_parameters"] == by["random"]["trainable_parameters"]
    assert by["full"]["trainable_parameters"] == sum(p.numel() for p in ns_model.parameters())
    table = json.loads((out / "compare.json").read_text())
    assert abs(by["lora"]["trainable_parameters"] - by["neurons"]["trainable_parameters"]) <= \
        table["lora"]["parameters_per_rank"] / 2
    assert by["lora"]["lr"] == 1e-2 and by["neurons"]["lr"] == FAST["lr"]
    task_cols = [f"xquad_{lang}{m}_{when}" for lang in ("zh", "en") for m in ("", "_exact_match")
                 for when in ("before", "after", "change")]
    for r in rows:
        assert r["ppl_fr_before"] == rows[0]["ppl_fr_before"] and r["ppl_en_after"] > 0
        if r["method"] != "lora":  # LoRA's B starts at zero: its first step changes nothing
            assert r["ppl_fr_after"] != r["ppl_fr_before"]
        for c in task_cols:  # every task column, the "before" ones measured once for all methods
            assert c in r and (not c.endswith("_before") or r[c] == rows[0][c])
            assert 0 <= r[c] <= 1 or c.endswith("_change")
        assert r["xquad_zh_change"] == pytest.approx(r["xquad_zh_after"] - r["xquad_zh_before"], abs=1e-4)
    assert table["tasks"]["xquad"]["metric"] == "f1" and table["tasks"]["xquad"]["langs"]["zh"]["n"] == 3
    assert table["before_tasks"]["xquad"]["en"]["n"] == 3
    header = (out / "compare.csv").read_text().splitlines()[0]
    assert header.startswith("method,") and "xquad_zh_before" in header and "xquad_en_exact_match_after" in header
    assert "| neurons |" in (out / "compare.md").read_text() and "xquad_en_after" in (out / "compare.md").read_text()
    assert (out / "neurons" / "delta.safetensors").is_file()
    # the "after" scores are those of the trained model: the merged delta gives the same outputs
    from mwork.tasks.registry import get_task

    merged, tok = mwork.load_model("tiny-random-llama", dtype=torch.float64, device="cpu", delta=out / "neurons")
    task = get_task("xquad")
    saved = json.loads((out / "neurons" / "tasks.json").read_text(encoding="utf-8"))
    for lang in ("zh", "en"):
        res = task.evaluate(merged, tok, task.load(lang, source, limit=3), lang, max_new_tokens=3, progress=False)
        assert [r["output"] for r in res["records"]] == [r["output"] for r in saved["xquad"][lang]["records"]]
        assert by["neurons"][f"xquad_{lang}_after"] == round(res["score"], 4)
    before_file = json.loads((out / "before_tasks.json").read_text(encoding="utf-8"))
    assert before_file["xquad"]["zh"]["records"][0]["id"] == "zh-24"  # evaluation articles only

    # incremental: rerun one method; the others' rows and the "before" numbers are kept, not re-measured
    calls = []
    original = type(task).evaluate
    monkeypatch.setattr(type(task), "evaluate", lambda self, *a, **k: calls.append(a[-1]) or original(self, *a, **k))
    again = compare("tiny-random-llama", ns, TEXTS, evals, out, methods=["random"], lrs={"lora": 1e-2}, **kw)
    assert calls == ["zh", "en"]  # only the retrained method's "after"
    assert [r["method"] for r in again] == ["neurons", "random", "lora", "full"]
    assert again[1]["ppl_fr_after"] == by["random"]["ppl_fr_after"]  # deterministic
    for r in again:
        assert {c: r[c] for c in task_cols} == {c: by[r["method"]][c] for c in task_cols}
    # another folder's settings are refused, task settings included
    with pytest.raises(ValueError, match="settings"):
        compare("tiny-random-llama", ns, TEXTS, evals, out, methods=["random"], **dict(kw, max_steps=2))
    for change in ({"task_limit": 2}, {"tasks": {"xquad": ["zh"]}}, {"task_kwargs": {"max_new_tokens": 4}}, {"tasks": None}):
        with pytest.raises(ValueError, match="tasks"):
            compare("tiny-random-llama", ns, TEXTS, evals, out, methods=["random"], **dict(kw, **change))
    assert calls == ["zh", "en"]  # refused before evaluating anything


def test_compare_task_input_errors(tmp_path, shared_tiny):
    ns_model, _ = shared_tiny("tiny-random-llama")
    kw = dict(max_steps=1, device="cpu", **FAST)
    with pytest.raises(ValueError, match="unknown task"):
        compare("tiny-random-llama", _neurons(ns_model), TEXTS, {"fr": TEXTS}, tmp_path, tasks={"squad9": ["en"]}, **kw)
    with pytest.raises(ValueError, match="languages"):
        compare("tiny-random-llama", _neurons(ns_model), TEXTS, {"fr": TEXTS}, tmp_path, tasks={"xquad": "en"}, **kw)
    assert not (tmp_path / "compare.json").exists()


def test_cli_compare_with_a_task(tmp_path, capsys, shared_tiny):
    model, _ = shared_tiny("tiny-random-llama")
    _neurons(model).save(tmp_path / "ns.safetensors")
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    source = _squad_folder(tmp_path / "xquad")
    base = ["enhance", "compare", "--model", "tiny-random-llama", "--neurons", str(tmp_path / "ns.safetensors"),
            "--texts", str(tmp_path / "texts.txt"), "--eval", "fr=" + str(tmp_path / "texts.txt") + "[0:2]",
            "--out", str(tmp_path / "cmp"), "--methods", "neurons", "--steps", "1", "--lr", "1e-2",
            "--batch-size", "2", "--grad-accum", "1", "--device", "cpu", "--no-progress"]
    task = ["--task", "xquad", "--task-langs", "zh,en", "--task-limit", "2", "--task-source", str(source),
            "--task-max-new-tokens", "2"]
    assert main(base + task) == 0
    row = json.loads((tmp_path / "cmp" / "compare.json").read_text())["rows"][0]
    assert {"xquad_zh_before", "xquad_en_after", "xquad_en_exact_match_change"} <= set(row)
    assert "xquad_zh_after" in capsys.readouterr().out
    assert main(base + ["--task", "xquad"]) == 2  # no languages
    assert "--task-langs" in capsys.readouterr().err
    assert main(base + task[:2] + ["--task-langs", "en"] + task[4:]) == 2  # other task settings: refused
    assert "tasks" in capsys.readouterr().err
