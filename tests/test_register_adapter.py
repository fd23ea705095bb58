"""A model family added from outside mwork with ``register_adapter``: the worked example of
docs/ARCHITECTURE.md, run as written, gets exact importance, exact deactivation and the lens."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import transformers

import mwork
from mwork.models import adapters
from mwork.models.adapters import KINDS, UnsupportedModelError, get_adapter
from mwork.models.tiny import tiny_tokenizer
from mwork.neurons.brute_force import brute_force
from mwork.neurons.importance import importance

DOC = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"
TEXT = "The quick brown fox jumps over the lazy dog. Le renard brun saute par-dessus le chien."


def _example_code() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("**A new model family.**"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _tiny_gpt_neo() -> transformers.PreTrainedModel:
    config = transformers.GPTNeoConfig(
        vocab_size=512, hidden_size=64, num_layers=3, num_heads=4, intermediate_size=96, window_size=8,
        attention_types=[[["global", "local", "global"], 1]], max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float64)
        for name, p in model.named_parameters():  # norms and biases away from their init
            if p.dim() == 1:
                p.data.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def neo():
    model = _tiny_gpt_neo()
    with pytest.raises(UnsupportedModelError, match="register_adapter"):
        get_adapter(model)
    namespace: dict = {}
    exec(compile(_example_code(), str(DOC), "exec"), namespace)  # registers GPTNeoAdapter
    try:
        yield _tiny_gpt_neo(), tiny_tokenizer(), namespace["GPTNeoAdapter"]
    finally:
        adapters.REGISTRY.pop("gpt_neo", None)


def test_the_example_registers_a_family(neo):
    model, _, cls = neo
    ad = get_adapter(model)
    assert type(ad) is cls and "gpt_neo" in adapters.supported_model_types()
    assert ad.num_layers == 3 and ad.neuron_counts() == {"ffn": 96, "q": 64, "k": 64, "v": 64}
    assert [ad.sliding_window(i) for i in range(3)] == [None, 8, None]
    with pytest.raises(ValueError, match="already have an adapter"):
        mwork.register_adapter(cls, model_types=("llama",))


def test_importance_equals_brute_force(neo):
    model, tok, _ = neo
    ids = torch.tensor(tok(TEXT).input_ids)
    assert ids.numel() > 8  # longer than the local layers' window
    got = importance(model, {"input_ids": ids[None]})
    for layer in range(3):
        for kind in KINDS:
            want = brute_force(model, ids, layer, kind)
            err = float((got[kind][0, layer] - want).abs().max() / want.abs().max())
            assert err <= 1e-6, f"{kind} layer {layer}: relative error {err:.2e}"


def test_deactivation_equals_zeroed_weights(neo):
    model, tok, _ = neo
    ns = mwork.NeuronSet.from_indices(model, {"ffn": {0: [1, 5], 2: [7]}, "q": {1: [0, 33]}, "v": {2: [4]}})
    zeroed = copy.deepcopy(model)
    ad = get_adapter(zeroed)
    with torch.no_grad():
        ad.mlp_down(0).weight[:, [1, 5]] = 0
        ad.mlp_down(2).weight[:, [7]] = 0
        ad.attention(1).q_proj.weight[[0, 33]] = 0
        ad.attention(2).v_proj.weight[[4]] = 0
    batch = tok([TEXT], return_tensors="pt")
    with torch.no_grad(), mwork.deactivate(model, ns):
        got = model(**batch).logits
    with torch.no_grad():
        torch.testing.assert_close(got, zeroed(**batch).logits, rtol=0, atol=0)


def test_lens_and_capture_run(neo):
    model, tok, _ = neo
    result = mwork.logit_lens(model, tok, ["Le renard brun"], top_k=3, max_new_tokens=2, progress=False)
    assert result.prompts[0].topk_ids.shape[0] == 4  # embeddings + 3 layers
    with mwork.capture(model, ["ffn.act", "q.out"], layers=[1]) as cap:
        model(**tok([TEXT], return_tensors="pt"))
    assert cap["ffn.act", 1].shape[-1] == 96 and cap["q.out", 1].shape[-1] == 64
