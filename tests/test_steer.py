"""mwork.steer: each mode changes exactly the chosen neurons, at the chosen positions and layers, by
the stated amount (against torch hooks written here and against the values the model computes);
generation with the KV cache equals generation without it; leaving restores bit-identical
logits; edits compose with mwork.deactivate in registration order."""

from __future__ import annotations

import pytest
import torch

import mwork
from mwork.hooks import active_hooks
from mwork.models.adapters import KINDS, get_adapter
from mwork.neurons.neuronset import NeuronSet
from mwork.steering import Steering, is_identity, parse_stat, steer

MODES = ("set", "add", "scale")
PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Быстрая лиса",
           "语言模型可以阅读和书写多种语言"]


def steer_set(model, seed: int = 0, fraction: float = 0.1, kinds=KINDS, layers=None) -> NeuronSet:
    """A seeded random set with a seeded random 'mean' statistic (what steering reads)."""
    ns = NeuronSet.empty_for(model)
    gen = torch.Generator().manual_seed(seed)
    values = {}
    for k in KINDS:
        m = torch.rand(ns.masks[k].shape, generator=gen) < fraction
        m[:, 1] = True
        if k not in kinds:
            m[:] = False
        if layers is not None:
            keep = torch.zeros(m.shape[0], dtype=torch.bool)
            keep[list(layers)] = True
            m &= keep[:, None]
        ns.masks[k] = m
        values[k] = torch.where(m, torch.randn(m.shape, generator=gen), torch.full(m.shape, float("nan")))
    return ns.with_statistics({"mean": values}, {"language": "test"})


def formula(mode: str, a: float, old: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    s = s.to(old.dtype)
    return {"set": (1 - a) * old + a * s, "add": old + a * s, "scale": a * old}[mode]


def hand_made(model, ns: NeuronSet, mode: str, a: float, select=lambda x: None) -> list:
    """Torch hooks written here, at the modules the adapter names: the reference for mwork.steer."""
    ad = get_adapter(model)
    handles = []
    for kind in ns.kinds:
        for layer in range(ns.num_layers):
            ch = ns.indices(kind, layer)
            if not len(ch):
                continue
            cs = ad.channel_site(layer, kind)
            feats = cs.index[ch]
            s = ns.statistic("mean", kind)[layer, ch].double()

            def edit(x, feats=feats, s=s):
                x = x.clone()
                old = x[..., feats]
                new = formula(mode, a, old, s)
                sel = select(x)
                if sel is not None:
                    new = torch.where(sel[..., None], new, old)
                x[..., feats] = new
                return x

            if cs.on_input:
                handles.append(cs.module.register_forward_pre_hook(lambda m, args, f=edit: (f(args[0]), *args[1:])))
            else:
                handles.append(cs.module.register_forward_hook(lambda m, args, out, f=edit: f(out)))
    return handles


def left_batch(tok):
    tok.padding_side = "left"
    return tok(PROMPTS, return_tensors="pt", padding=True)


# steer's edits go through the adapter's channel sites, checked for every family in tests/test_intervene.py and
# tests/test_adapters.py; the modes, positions and restoring are the same code for every family: one per layout
# (tests/conftest.py REPRESENTATIVE_DENSE: steering a mixture-of-experts FFN fails, see hooks.feature_width).
@pytest.mark.parametrize("mode", MODES)
def test_each_mode_equals_a_hand_made_hook(rep_dense_tiny64, mode):
    model, tok = rep_dense_tiny64
    ns = steer_set(model)
    tok.padding_side = "right"
    enc = tok(PROMPTS[:1], return_tensors="pt")
    a = 1.7
    handles = hand_made(model, ns, mode, a)
    try:
        with torch.no_grad():
            expected = model(**enc).logits
    finally:
        for h in handles:
            h.remove()
    with steer(model, ns, mode, a), torch.no_grad():
        got = model(**enc).logits
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    assert not torch.equal(got, model(**enc).logits)  # the edit did something


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
@pytest.mark.parametrize("mode", MODES)
def test_exactly_the_chosen_neurons_positions_and_layers_change(mode, positions, shared_tiny):
    """Inside generate (KV cache, left padding): the FFN value after the edit against the value the
    model computed before it (act(gate) * up, read at the same call)."""
    model, tok = shared_tiny("tiny-random-llama", torch.float64)
    ns = steer_set(model, seed=3, kinds=("ffn",), layers=[1, 2])
    a = 2.5
    enc = left_batch(tok)
    width = enc["input_ids"].shape[1]
    layers = range(get_adapter(model).num_layers)
    with steer(model, ns, mode, a, positions=positions), \
            mwork.capture(model, ["ffn.act", "ffn.up.out", "ffn.in"], keep="all") as cap, torch.no_grad():
        model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=0)
    for layer in layers:
        ch = ns.indices("ffn", layer)
        s = ns.statistic("mean", "ffn")[layer, ch].double()
        calls = cap.values("ffn.in", layer)
        assert len(calls) == 4
        for c, post in enumerate(calls):
            pre = cap.values("ffn.act", layer)[c] * cap.values("ffn.up.out", layer)[c]
            B, T = post.shape[:2]
            if c == 0:  # the prompt pass
                real = enc["attention_mask"].bool()
                chosen = real if positions in ("all", "prompt") else torch.zeros_like(real)
            else:  # one generated token a step
                chosen = torch.full((B, T), positions in ("all", "generated"))
            expect = pre.clone()
            if len(ch):
                cols = expect[..., ch]
                expect[..., ch] = torch.where(chosen[..., None], formula(mode, a, cols, s), cols)
            # float64 eager attention makes fully masked padding rows NaN: they stay NaN, untouched
            torch.testing.assert_close(post, expect, rtol=0, atol=0, equal_nan=True, msg=f"layer {layer} call {c}")
            if not len(ch):
                torch.testing.assert_close(post, pre, rtol=0, atol=0, equal_nan=True)
    assert width > 1


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_kv_cache_generation_equals_no_cache(rep_dense_tiny, positions):
    model, tok = rep_dense_tiny
    ns = steer_set(model, seed=1)
    enc = left_batch(tok)
    outs = []
    for use_cache in (True, False):
        with steer(model, ns, "add", 3.0, positions=positions), torch.no_grad():
            outs.append(model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=0, use_cache=use_cache,
                                       output_logits=True, return_dict_in_generate=True))
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    for a, b in zip(outs[0].logits, outs[1].logits):
        assert torch.allclose(a, b, atol=1e-4)
    with torch.no_grad():
        plain = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=0, output_logits=True,
                               return_dict_in_generate=True)
    assert any(not torch.allclose(a, b) for a, b in zip(plain.logits, outs[0].logits))


def test_generated_positions_equal_a_hand_made_hook_in_generate(shared_tiny):
    """positions='generated' under the KV cache: the prompt pass is untouched, every step steered."""
    model, tok = shared_tiny("tiny-random-gpt2", torch.float64)
    ns = steer_set(model, seed=2)
    enc = left_batch(tok)
    calls = {"n": 0}

    def count(module, args, kwargs):
        calls["n"] += 1

    def select(x):  # the hand-made rule: the first call of generate is the prompt
        return torch.zeros(x.shape[:2], dtype=torch.bool) if calls["n"] == 1 else None

    h0 = model.register_forward_pre_hook(count, with_kwargs=True)
    handles = hand_made(model, ns, "set", 1.0, select)
    try:
        with torch.no_grad():
            expected = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=0, output_logits=True,
                                      return_dict_in_generate=True)
    finally:
        for h in [h0, *handles]:
            h.remove()
    with steer(model, ns, "set", 1.0, positions="generated"), torch.no_grad():
        got = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=0, output_logits=True,
                             return_dict_in_generate=True)
    assert torch.equal(got.sequences, expected.sequences)
    for a, b in zip(got.logits, expected.logits):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_a_left_padded_row_generates_what_it_generates_alone(shared_tiny):
    """Under steering of all positions (padding itself is checked above, value by value; float32: float64
    eager attention turns fully masked padding rows into NaN, steered or not)."""
    model, tok = shared_tiny("tiny-random-llama")
    ns = steer_set(model, seed=4)
    enc = left_batch(tok)
    with steer(model, ns, "set", 2.0) as st, mwork.capture(model, "ffn.in", layers=[0]) as cap, torch.no_grad():
        batched = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=0)
        first = cap["ffn.in", 0]
        short = int(enc["attention_mask"].sum(1).argmin())
        alone = tok([PROMPTS[short]], return_tensors="pt")
        single = model.generate(**alone, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(batched[short, -5:], single[0, -5:])
    assert st.count == ns.count()
    assert first.shape[1] == 1  # the last call was a step


def test_leaving_restores_bit_identical_logits_even_after_an_error(rep_dense_tiny):
    model, tok = rep_dense_tiny
    ns = steer_set(model)
    enc = left_batch(tok)
    with torch.no_grad():
        before = model(**enc).logits
        with steer(model, ns, "set", 1.0, off=steer_set(model, seed=9)):
            inside = model(**enc).logits
        after = model(**enc).logits
        with pytest.raises(RuntimeError, match="boom"):
            with steer(model, ns, "add", 5.0, positions="prompt"):
                raise RuntimeError("boom")
        again = model(**enc).logits
    assert not torch.equal(before, inside)
    assert torch.equal(before, after) and torch.equal(before, again)
    assert all(active_hooks(m) == 0 for m in model.modules())


def test_composes_with_deactivate_in_registration_order(shared_tiny):
    model, tok = shared_tiny("tiny-random-llama", torch.float64)
    ns = steer_set(model, seed=5, kinds=("ffn",))
    enc = tok(PROMPTS[:1], return_tensors="pt")
    with torch.no_grad():
        with mwork.deactivate(model, ns), steer(model, ns, "set", 1.0):  # off, then set: the statistic wins
            off_then_set = model(**enc).logits
        with steer(model, ns, "set", 1.0), mwork.deactivate(model, ns):  # set, then off: zeros win
            set_then_off = model(**enc).logits
        with mwork.deactivate(model, ns):
            off = model(**enc).logits
        with steer(model, ns, "set", 1.0):
            only_set = model(**enc).logits
        with steer(model, ns, "scale", 0.0):
            scaled_to_zero = model(**enc).logits
    assert torch.allclose(off_then_set, only_set, atol=1e-12)  # set ignores the old value at strength 1
    assert torch.equal(set_then_off, off)
    assert torch.equal(scaled_to_zero, off)
    assert not torch.allclose(only_set, off)


def test_off_switches_the_source_neurons_off_after_steering(shared_tiny):
    model, tok = shared_tiny("tiny-random-llama", torch.float64)
    target = steer_set(model, seed=6, kinds=("ffn",), layers=[1])
    source = steer_set(model, seed=7, kinds=("ffn",), layers=[1])
    enc = tok(PROMPTS[:1], return_tensors="pt")
    with steer(model, target, "add", 2.0, off=source), mwork.capture(model, "ffn.in", layers=[1]) as cap, \
            torch.no_grad():
        model(**enc)
    post = cap["ffn.in", 1]
    assert torch.equal(post[..., source.indices("ffn", 1)], torch.zeros_like(post[..., source.indices("ffn", 1)]))
    handles = hand_made(model, target, "add", 2.0)
    ch = source.indices("ffn", 1)
    handles.append(get_adapter(model).mlp_down(1).register_forward_pre_hook(
        lambda m, args: (args[0].index_fill(-1, ch, 0.0),)))
    try:
        with torch.no_grad():
            expected = model(**enc).logits
    finally:
        for h in handles:
            h.remove()
    with steer(model, target, "add", 2.0, off=source), torch.no_grad():
        assert torch.allclose(model(**enc).logits, expected, atol=1e-12)


def test_layers_and_kinds_restrict_the_steered_neurons(shared_tiny):
    model, tok = shared_tiny("tiny-random-llama", torch.float64)
    ns = steer_set(model, seed=8)
    enc = tok(PROMPTS[:1], return_tensors="pt")
    st = Steering(model, ns, "scale", 3.0, layers="1", kinds="v")
    assert st.count == ns.count("v", 1)
    only = ns.restrict([1], ["v"])
    only = NeuronSet(only.masks, only.meta, ns.extra)
    with torch.no_grad():
        with st:
            a = model(**enc).logits
        with steer(model, only, "scale", 3.0):
            b = model(**enc).logits
    assert torch.equal(a, b)


def test_identity_strengths_register_nothing(shared_tiny):
    model, _ = shared_tiny("tiny-random-llama")
    ns = steer_set(model)
    for mode, a in (("set", 0.0), ("add", 0.0), ("scale", 1.0)):
        assert is_identity(mode, a)
        with steer(model, ns, mode, a):
            assert all(active_hooks(m) == 0 for m in model.modules())


def test_bad_arguments_are_clear_errors(shared_tiny):
    model, _ = shared_tiny("tiny-random-llama")
    ns = steer_set(model)
    bare = NeuronSet(ns.masks, {"fingerprint": ns.fingerprint})
    with pytest.raises(ValueError, match="unknown steering mode"):
        steer(model, ns, "boost", 1.0)
    with pytest.raises(ValueError, match="finite"):
        steer(model, ns, "add", float("nan"))
    with pytest.raises(ValueError, match="positions"):
        steer(model, ns, "add", 1.0, positions="middle")
    with pytest.raises(ValueError, match="corpus"):
        steer(model, bare, "set", 1.0)
    with pytest.raises(ValueError, match="median"):
        steer(model, ns, "add:median", 1.0)
    steer(model, bare, "scale", 2.0)  # scale needs no statistic
    with pytest.raises(ValueError, match="out of range"):
        steer(model, ns, "scale", 2.0, layers="0-99")
    assert parse_stat("Q0.90") == "q0.9" and parse_stat("median") == "median"
    with pytest.raises(ValueError, match="quantile"):
        parse_stat("q1.5")


def test_a_mode_names_its_statistic(shared_tiny):
    """``mode="set:median"`` is ``Steering(mode="set", stat="median")``: the same edits, the same values."""
    model, tok = shared_tiny("tiny-random-llama", torch.float64)
    ns = steer_set(model, seed=3)
    shifted = {k: ns.statistic("mean", k) + 0.5 for k in ns.kinds}  # a second statistic, other values
    ns = ns.with_statistics({"mean": {k: ns.statistic("mean", k) for k in ns.kinds}, "median": shifted},
                            {"language": "test"})
    enc = tok(PROMPTS[:1], return_tensors="pt")
    with torch.no_grad():
        with steer(model, ns, "set:median", 1.5) as named:
            a = model(**enc).logits
        with Steering(model, ns, "set", 1.5, stat="median"):
            b = model(**enc).logits
        with steer(model, ns, "set", 1.5) as plain:
            c = model(**enc).logits
    assert (named.mode, named.stat, plain.stat) == ("set", "median", "mean")
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="uses no statistic"):
        steer(model, ns, "scale:median", 2.0)
    with pytest.raises(ValueError, match="names the statistic already"):
        Steering(model, ns, "set:median", 1.0, stat="mean")
    with pytest.raises(ValueError, match="unknown steering mode"):
        steer(model, ns, "boost:median", 1.0)
    with pytest.raises(ValueError, match="quantile"):
        steer(model, ns, "add:q7", 1.0)


def test_steer_is_the_public_function(shared_tiny):
    assert mwork.steer is steer
    model, tok = shared_tiny("tiny-random-qwen3")
    ns = steer_set(model)
    with mwork.steer(model, ns, mode="set", strength=1.0) as st:
        out = model.generate(**tok(PROMPTS[:1], return_tensors="pt"), max_new_tokens=3, do_sample=False,
                             pad_token_id=0)
    assert out.shape[1] > 3 and not st.active
