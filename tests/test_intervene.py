"""mwork.deactivate: the hooks hit exactly the channels that zeroing weights would, in forward
passes and generate, nest, scale, and leave no trace on exit."""

from __future__ import annotations

import copy

import pytest
import torch

from mwork.intervene import deactivate, parse_kinds, parse_layers
from mwork.models.adapters import KINDS, get_adapter
from mwork.neurons.neuronset import NeuronSet

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Быстрая лиса", "语言模型可以阅读"]


def random_set(model, fraction: float = 0.15, seed: int = 0, kinds=KINDS) -> NeuronSet:
    """A seeded random NeuronSet with about ``fraction`` of each kind, at least one per layer."""
    ns = NeuronSet.empty_for(model)
    gen = torch.Generator().manual_seed(seed)
    for k in kinds:
        m = torch.rand(ns.masks[k].shape, generator=gen) < fraction
        m[:, 0] = True
        ns.masks[k] = m
    return ns


def edit_weights(model, ns: NeuronSet, scale: float = 0.0):
    """Ground truth: a deep copy whose weights (and q/k/v biases) are scaled for ``ns``."""
    edited = copy.deepcopy(model)
    ad = get_adapter(edited)
    assert ad.model is edited
    with torch.no_grad():
        for kind in ns.kinds:
            for layer in range(ns.num_layers):
                channels = ns.indices(kind, layer)
                if not len(channels):
                    continue
                site = ad.channel_site(layer, kind)
                feats, mod = site.index[channels], site.module
                conv = type(mod).__name__ == "Conv1D"  # GPT-2 stores (in, out)
                if site.on_input:  # ffn: columns of W_down (what neuron k writes)
                    if conv:
                        mod.weight[feats, :] *= scale
                    else:
                        mod.weight[:, feats] *= scale
                else:  # q/k/v: rows of W (output channels) and their bias
                    if conv:
                        mod.weight[:, feats] *= scale
                    else:
                        mod.weight[feats, :] *= scale
                    if mod.bias is not None:
                        mod.bias[feats] *= scale
    return edited


def batch(tok, padding_side="right"):
    tok.padding_side = padding_side
    return tok(TEXTS, return_tensors="pt", padding=True)


def unmasked(tok):
    """Right-padded ids without attention mask: causal attention hides the padding from the
    real positions. (In float64, transformers' masks leave fully masked pad rows NaN, which
    then reaches real positions through 0 * NaN; float32 is unaffected.)"""
    return {"input_ids": batch(tok)["input_ids"]}


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hook_equals_zeroed_weights(tiny64):
    model, tok = tiny64
    inputs = unmasked(tok)
    before = logits(model, inputs)
    for kinds in (["ffn"], ["q"], ["k"], ["v"], list(KINDS)):
        ns = random_set(model, kinds=kinds)
        with deactivate(model, ns) as d:
            hooked = logits(model, inputs)
        assert d.count == ns.count() > 0
        expected = logits(edit_weights(model, ns), inputs)
        torch.testing.assert_close(hooked, expected, rtol=1e-10, atol=1e-10, msg=lambda m: f"{kinds}: {m}")
        assert not torch.allclose(hooked, before, atol=1e-6), kinds  # it did something


# Every family: test_hook_equals_zeroed_weights (the channels each adapter names). The tests below check how
# deactivate scales, unwinds, nests, restricts and runs in generate: the same code for every family, so they
# run on one family per layout (tests/conftest.py REPRESENTATIVE).
def test_scale_equals_scaled_weights(rep_dense_tiny64):
    model, tok = rep_dense_tiny64
    ns = random_set(model, seed=1)
    inputs = unmasked(tok)
    with deactivate(model, ns, scale=0.5):
        hooked = logits(model, inputs)
    expected = logits(edit_weights(model, ns, scale=0.5), inputs)
    torch.testing.assert_close(hooked, expected, rtol=1e-10, atol=1e-10)


def test_exit_is_bit_identical_even_after_an_exception(rep_tiny):
    model, tok = rep_tiny
    inputs = batch(tok)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = hook_count(model)
    before = logits(model, inputs)
    with deactivate(model, random_set(model)):
        assert hook_count(model) > hooks
    assert torch.equal(logits(model, inputs), before)
    with pytest.raises(RuntimeError, match="boom"):
        with deactivate(model, random_set(model, seed=2)):
            logits(model, inputs)
            raise RuntimeError("boom")
    assert hook_count(model) == hooks
    assert torch.equal(logits(model, inputs), before)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # weights never touched


def test_nesting_composes_and_unwinds(rep_dense_tiny64):
    model, tok = rep_dense_tiny64
    inputs = unmasked(tok)
    a, b = random_set(model, seed=3), random_set(model, seed=4)
    with deactivate(model, a):
        only_a = logits(model, inputs)
        with deactivate(model, b):
            both = logits(model, inputs)
        assert torch.equal(logits(model, inputs), only_a)
    torch.testing.assert_close(both, logits(edit_weights(model, a | b), inputs), rtol=1e-10, atol=1e-10)
    # scales multiply
    with deactivate(model, a, scale=0.5), deactivate(model, a, scale=0.5):
        quarter = logits(model, inputs)
    torch.testing.assert_close(quarter, logits(edit_weights(model, a, 0.25), inputs), rtol=1e-10,
                               atol=1e-10)


def test_restriction_by_layers_and_kinds(rep_dense_tiny64):
    model, tok = rep_dense_tiny64
    ns = random_set(model, seed=5)
    inputs = unmasked(tok)
    with deactivate(model, ns, layers="1-2", kinds="ffn,q") as d:
        hooked = logits(model, inputs)
    sub = ns.restrict([1, 2], ["ffn", "q"])
    assert d.count == sub.count() and sub.count("k") == 0 and sub.count("ffn", 0) == 0
    torch.testing.assert_close(hooked, logits(edit_weights(model, sub), inputs), rtol=1e-10, atol=1e-10)


def test_generate_with_cache_and_left_padding(rep_dense_tiny):
    model, tok = rep_dense_tiny  # float32: see unmasked()
    ns = random_set(model, seed=6)
    inputs = batch(tok, "left")
    kw = dict(max_new_tokens=4, do_sample=False, use_cache=True, return_dict_in_generate=True, output_logits=True,
              pad_token_id=tok.pad_token_id, eos_token_id=None)
    plain = model.generate(**inputs, **kw)
    with deactivate(model, ns):
        hooked = model.generate(**inputs, **kw)
    edited = edit_weights(model, ns).generate(**inputs, **kw)
    assert torch.equal(hooked.sequences, edited.sequences)
    for step, (h, e, p) in enumerate(zip(hooked.logits, edited.logits, plain.logits)):
        torch.testing.assert_close(h, e, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(h, p, atol=1e-6), f"hooks inactive at generation step {step}"
    again = model.generate(**inputs, **kw)  # nothing leaks into the next run
    assert torch.equal(again.sequences, plain.sequences)
    assert all(torch.equal(x, y) for x, y in zip(again.logits, plain.logits))


def test_gradients_flow_through_hooks(shared_tiny):
    model, tok = shared_tiny("tiny-random-llama")
    ad = get_adapter(model)
    ns = NeuronSet.from_indices(model, {"q": {0: [3, 7]}, "ffn": {1: [5]}})
    inputs = batch(tok)
    with deactivate(model, ns):
        out = model(**inputs, labels=inputs["input_ids"])
        out.loss.backward()
    q_grad = ad.channel_site(0, "q").module.weight.grad
    down_grad = ad.mlp_down(1).weight.grad
    assert torch.all(q_grad[[3, 7]] == 0) and q_grad[[0, 1]].abs().sum() > 0
    assert torch.all(down_grad[:, 5] == 0) and down_grad[:, 4].abs().sum() > 0
    model.zero_grad()
    with torch.no_grad(), deactivate(model, ns):
        model(**inputs)


def test_path_input_and_shape_check(tmp_path, shared_tiny):
    llama, tok = shared_tiny("tiny-random-llama")
    gpt2, _ = shared_tiny("tiny-random-gpt2")
    ns = random_set(llama)
    path = ns.save(tmp_path / "set")
    inputs = batch(tok)
    with deactivate(llama, ns):
        direct = logits(llama, inputs)
    with deactivate(llama, str(path)) as d:
        assert torch.equal(logits(llama, inputs), direct)
    assert d.count == ns.count()
    with pytest.raises(ValueError, match="does not fit"):
        deactivate(gpt2, path)
    with pytest.raises(FileNotFoundError):
        deactivate(llama, tmp_path / "missing")


def test_bad_arguments_are_clear_errors(shared_tiny):
    model, _ = shared_tiny("tiny-random-llama")
    ns = random_set(model)
    with pytest.raises(ValueError, match="out of range"):
        deactivate(model, ns, layers=[7])
    with pytest.raises(ValueError, match="unknown neuron kind"):
        deactivate(model, ns, kinds="mlp")
    with pytest.raises(ValueError, match="finite"):
        deactivate(model, ns, scale=float("nan"))
    ctx = deactivate(model, ns)
    with ctx, pytest.raises(RuntimeError, match="already active"):
        ctx.__enter__()
    assert hook_count(model) == 0


def test_empty_set_is_a_no_op(shared_tiny):
    model, tok = shared_tiny("tiny-random-gpt2")
    inputs = batch(tok)
    before = logits(model, inputs)
    with deactivate(model, NeuronSet.empty_for(model)) as d:
        assert d.count == 0 and torch.equal(logits(model, inputs), before)


def test_random_baseline_matches_counts_per_layer_and_kind(shared_tiny):
    model, _ = shared_tiny("tiny-random-qwen3")
    ns = random_set(model, fraction=0.2, seed=7)
    r1, r1b, r2 = ns.random_like(1, exclude=ns), ns.random_like(1, exclude=ns), ns.random_like(2, exclude=ns)
    assert r1.counts() == ns.counts() == r2.counts()
    assert r1 == r1b and r1 != r2
    assert (r1 & ns).count() == 0  # enough other neurons remain in every layer: never its own


def test_parse_specs():
    assert parse_layers("0-2,5, 7") == [0, 1, 2, 5, 7]
    assert parse_layers([3, 1, 3]) == [1, 3] and parse_layers(None) is None
    assert parse_kinds("attn,ffn") == ["q", "k", "v", "ffn"]
    for bad in ("3-1", "a", "", "1-"):
        with pytest.raises(ValueError):
            parse_layers(bad)
