"""``lens_explorer.json``: the token strings, probabilities and language labels the report's layer
explorer draws, checked against a direct computation."""

from __future__ import annotations

import json

import pytest
import torch

import mwork
from mwork.lens import LensConfig, LensOptions, Prompt, ScriptWordfreqIdentifier, TokenLabeler, logit_lens, run_lens
from mwork.lens.explorer import FORMAT, explorer_data, read_explorer, write_explorer

PROMPTS = [Prompt("Le renard brun saute", "fr"), Prompt("Быстрая лиса", "ru"), Prompt("The fox", "en")]


@pytest.fixture(scope="module")
def llama64(tiny_models):
    return tiny_models.shared("tiny-random-llama", torch.float64)


def test_probabilities_are_the_softmax_of_each_layers_logits(llama64):
    """exp(topk_logits - logsumexp) == softmax over the vocabulary of final norm + LM head of the
    hidden states, at prompt and generated positions."""
    model, tok = llama64
    adapter = mwork.get_adapter(model)
    res = logit_lens(model, tok, PROMPTS, top_k=4, max_new_tokens=3, options=LensOptions(batch_size=2),
                     progress=False)
    for p in res.prompts:
        with torch.no_grad():
            out = model(torch.tensor([p.token_ids]), output_hidden_states=True)
            # HF's last hidden state already holds the final norm: its logits are the model's own
            layers = [adapter.decode(h[0, p.positions]) for h in out.hidden_states[:-1]] + [out.logits[0, p.positions]]
        probs = p.topk_probs()
        assert probs.shape == p.topk_ids.shape and p.logsumexp.shape == p.topk_ids.shape[:2]
        for layer, logits in enumerate(layers):
            direct = torch.softmax(logits.double(), dim=-1).gather(1, p.topk_ids[layer])
            torch.testing.assert_close(probs[layer].double(), direct, rtol=1e-4, atol=1e-7)
        assert bool((probs[:, :, :-1] >= probs[:, :, 1:]).all())  # best first
        assert bool((probs.sum(-1) <= 1 + 1e-5).all())


def test_explorer_file_matches_the_lens_result(llama64, tmp_path):
    model, tok = llama64
    res = logit_lens(model, tok, PROMPTS, top_k=3, max_new_tokens=2, progress=False)
    labeler = TokenLabeler(tok, ScriptWordfreqIdentifier(latin_languages=("en", "fr")))
    data = read_explorer(write_explorer(res, labeler, tmp_path / "lens_explorer.json"))
    assert data["format"] == FORMAT and data["top_k"] == 3 and data["num_layers"] == res.num_layers
    ids = [v[0] for v in data["vocab"]]
    assert len(ids) == len(set(ids))  # each token once
    for v in data["vocab"]:
        assert v[1] == tok.decode([v[0]]) and v[2] == labeler.label(v[0])
    for p, d in zip(res.prompts, data["prompts"]):
        assert [ids[v] for v in d["tokens"]] == p.token_ids and d["positions"] == p.positions
        assert [ids[v] for v in d["top"]] == p.topk_ids.flatten().tolist()
        probs = p.topk_probs().flatten().tolist()
        assert all(abs(a - b) <= 5e-4 * b for a, b in zip(d["prob"], probs))  # 4 significant digits
        assert d["n_prompt"] == p.n_prompt and d["lang"] == p.lang and d["text"] == p.text
    assert explorer_data(res, labeler) == json.loads((tmp_path / "lens_explorer.json").read_text())


def test_run_lens_writes_the_explorer_file_with_its_labels(tmp_path):
    model, tok = mwork.load_model("tiny-random-qwen2")
    config = LensConfig(langs=("zh", "fr"), max_prompts=1, max_new_tokens=1, top_k=2, progress=False)
    run = run_lens(model, tok, config=config, out=tmp_path)
    data = read_explorer(run.files["lens_explorer.json"])
    assert {v[0]: v[2] for v in data["vocab"]} == {v[0]: run.labeler.label(v[0]) for v in data["vocab"]}
    assert [p["lang"] for p in data["prompts"]] == ["zh", "fr"]


def test_loaded_results_have_no_probabilities(llama64, tmp_path):
    from mwork.lens import LensResult

    model, tok = llama64
    res = logit_lens(model, tok, PROMPTS[:1], top_k=2, max_new_tokens=1, progress=False)
    back = LensResult.load(res.save(tmp_path / "lens_topk.safetensors"))
    with pytest.raises(ValueError, match="lens_explorer.json"):
        back.prompts[0].topk_probs()


@pytest.mark.parametrize("damage,message", [
    (lambda d: "not json{", "not a readable"),
    (lambda d: json.dumps({**d, "format": "other"}), "not a lens_explorer.json"),
    (lambda d: json.dumps({**d, "version": 99}), "version 99"),
    (lambda d: json.dumps({**d, "prompts": [{**d["prompts"][0], "top": d["prompts"][0]["top"][:-1]}]}), "inconsistent"),
    (lambda d: json.dumps({**d, "prompts": [{**d["prompts"][0], "top": [10 ** 6] * len(d["prompts"][0]["top"])}]}),
     "outside the vocab"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "vocab"}), "lacks a field"),
])
def test_a_damaged_explorer_file_is_a_clear_error(llama64, tmp_path, damage, message):
    model, tok = llama64
    res = logit_lens(model, tok, PROMPTS[:1], top_k=2, max_new_tokens=1, progress=False)
    path = write_explorer(res, TokenLabeler(tok), tmp_path / "lens_explorer.json")
    path.write_text(damage(json.loads(path.read_text())))
    with pytest.raises(ValueError, match=message) as info:
        read_explorer(path)
    assert str(path) in str(info.value)
