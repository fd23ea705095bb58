from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import mwork
from mwork.models.adapters import KINDS, UnsupportedModelError, get_adapter
from mwork.models.tiny import TINY_CONFIGS


def test_every_alias_loads_and_adapter_resolves(tiny):
    model, tok = tiny
    ad = get_adapter(model)
    assert ad.num_layers == len(ad.layers) == 3
    assert isinstance(ad.final_norm, nn.Module) and isinstance(ad.lm_head, nn.Module)
    counts = ad.neuron_counts()
    for layer in range(ad.num_layers):
        for kind in KINDS:
            site = ad.channel_site(layer, kind)
            assert len(site.index) == counts[kind]
            width = site.module.weight.shape[1 if site.on_input else 0]
            if type(site.module).__name__ == "Conv1D":  # GPT-2 stores (in, out)
                width = site.module.weight.shape[0 if site.on_input else 1]
            assert int(site.index.max()) < width
        assert ad.down_weight(layer).shape == (ad.hidden_size, counts["ffn"])
        assert ad.o_weight(layer).shape == (ad.hidden_size, ad.num_heads * ad.head_dim)
    # q/k/v channels that share a fused projection never overlap
    sites = [ad.channel_site(0, k) for k in ("q", "k", "v")]
    if sites[0].module is sites[1].module:
        idx = torch.cat([s.index for s in sites])
        assert len(set(idx.tolist())) == len(idx) == sites[0].module.weight.numel() // ad.hidden_size
    ids = tok(["Hello world", "Bonjour le monde"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()


def test_tiny_models_are_identical_on_every_call(tiny_alias):
    a, _ = mwork.load_model(tiny_alias, device="cpu")
    b, _ = mwork.load_model(tiny_alias, device="cpu")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_every_family_has_a_tiny_model(shared_tiny):
    from mwork.models.adapters import REGISTRY

    families = {cls.family for cls in REGISTRY.values()}
    tiny_families = {get_adapter(shared_tiny(f"tiny-random-{a}")[0]).family for a in TINY_CONFIGS}
    assert families == tiny_families


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="built-in alias"):
        mwork.load_model("no-such-model")
    with pytest.raises(ValueError, match="unknown tiny model"):
        mwork.load_model("tiny-random-nope")


def test_unsupported_family_names_supported_ones():
    from transformers import MambaConfig, MambaForCausalLM  # a state-space model: no attention to adapt

    model = MambaForCausalLM(MambaConfig(hidden_size=16, num_hidden_layers=1, vocab_size=50, state_size=4))
    with pytest.raises(UnsupportedModelError, match="llama.*adapters.py"):
        get_adapter(model)


def test_local_folder_round_trip(tmp_path):
    model, tok = mwork.load_model("tiny-random-qwen3")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, _ = mwork.load_model(str(tmp_path))
    ids = tok(["a test"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**ids).logits, again(**ids).logits, atol=1e-5)


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "mwork.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "models" in out.stdout


def test_cli_bad_model_exits_2_with_message():
    out = subprocess.run([sys.executable, "-m", "mwork.cli", "info", "--model", "nope"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown model 'nope'" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_default_model_loads_from_cache(gemma):
    model, tok = gemma
    ad = get_adapter(model)
    assert (ad.num_layers, ad.hidden_size, ad.ffn_size, ad.num_heads, ad.num_kv_heads) == (18, 640, 2048, 4, 1)
    ids = tok(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0]) or out.shape[1] == ids["input_ids"].shape[1] + 3
