"""Mixture-of-experts families, each proven exact on its tiny model in float64.

An FFN neuron is (layer, expert, channel), FFN channel e * I + k of its layer (a shared expert's
channels last). Checked for every MoE family, against ground truths that do not go through the
hook layer's computation of the block (weights zeroed in a copy, the block module run on its own,
the router module's own choice, hidden states computed from the expert weights):

* the FFN sites give (batch, tokens, E * I) hidden states, zero where a token is not routed;
  with no edit the recomputed block is the module's, bit for bit, and readers never change it;
* importance of every kind equals brute force within 1e-6 (FFN: the block output's change when
  one expert channel is zeroed, routing weights included), and equals weight-zeroing;
* deactivation equals a weight-zeroed copy exactly; scaling equals scaled weights;
* layer parity, lens, perplexity, enhancement slices (only the expert's rows and column train),
  router statistics, per-expert NeuronSet statistics, ``mwork models``.
"""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch

import mwork
from mwork.capturing import capture
from mwork.cli import main
from mwork.hooks import MOE_SITES, SITES, Hooks, active_hooks
from mwork.intervene import deactivate
from mwork.models.adapters import KINDS, UnsupportedModelError, get_adapter
from mwork.models.parity import layer_parity
from mwork.models.tiny import MOE_ALIASES, _common, build_tiny
from mwork.neurons.brute_force import brute_force
from mwork.neurons.delta import NeuronDelta
from mwork.neurons.importance import importance, qk_paths
from mwork.neurons.neuronset import NeuronSet
from mwork.neurons.router_stats import RouterStatsConfig, router_statistics, write_router_stats
from mwork.lens.logit_lens import LensOptions, logit_lens
from tests.test_lens import PROMPTS, _manual_logits
from tests.test_lens import test_lens_padding_independent  # noqa: F401  (run on the MoE models by the fixture below)

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Le renard brun saute par-dessus le chien.",
    "Быстрая коричневая лиса прыгает.",
]
TOL = 1e-6
# families whose Q/K take the generic path (none of the tiny MoE models)
GENERIC_QK: set[str] = set()

_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              max_position_embeddings=256)
# structures the aliases do not cover: name -> (config class, kwargs, Q/K path)
VARIANTS = {
    # OLMoE with clip_qkv (clamps the normed q, k and v: the generic Q/K path) and renormalised top-k
    "olmoe-clip-norm-topk": ("OlmoeConfig", _common(**_SHAPE, intermediate_size=16, num_experts=4,
                                                    num_experts_per_tok=2, norm_topk_prob=True, clip_qkv=0.3),
                             "generic"),
    # Qwen2-MoE with renormalised top-3 of 5 experts, a wider shared expert
    "qwen2_moe-top3-norm": ("Qwen2MoeConfig", _common(**_SHAPE, intermediate_size=96, moe_intermediate_size=8,
                                                      shared_expert_intermediate_size=40, num_experts=5,
                                                      num_experts_per_tok=3, norm_topk_prob=True), "exact"),
}


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=MOE_ALIASES)
def moe64(request, tiny_models):
    model, tok = tiny_models.shared(request.param, torch.float64)
    return request.param, model, tok


@pytest.fixture(scope="module")
def tiny64(moe64):
    """The fixture the lens test imported above takes: (alias, model, tokenizer)."""
    return moe64


def _variant(tiny_models, name: str):
    cls_name, kwargs, _ = VARIANTS[name]
    return tiny_models.shared(f"moe-variant-{name}", torch.float64,
                              build=lambda: build_tiny(cls_name, kwargs, torch.float64))


@pytest.fixture(params=[*MOE_ALIASES, *VARIANTS])
def any64(request, tiny_models):
    """Every alias and every variant, each once: (name, model, tokenizer)."""
    name = request.param
    model, tok = _variant(tiny_models, name) if name in VARIANTS else tiny_models.shared(name, torch.float64)
    return name, model, tok


def _ids(tok, text=TEXTS[0]) -> torch.Tensor:
    return torch.tensor(tok(text).input_ids)


# ---- ground truths that do not use the hook layer's computation of the block ----------------------


def _block(model, layer: int):
    decoder = model.model.layers[layer]
    return decoder.block_sparse_moe if hasattr(decoder, "block_sparse_moe") else decoder.mlp


def _router(block):
    return block.router if hasattr(block, "router") else block.gate


def _block_inputs(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """Every MoE block's input, by plain torch hooks on the block modules."""
    seen: list[torch.Tensor] = []
    handles = [_block(model, i).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
               for i in range(len(model.model.layers))]
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return seen


def _hidden_by_hand(block, x: torch.Tensor) -> torch.Tensor:
    """h over every expert channel from the expert weights (0 where the router skips the expert)."""
    flat = x.reshape(-1, x.shape[-1])
    _, weights, chosen = _router(block)(flat)[:3]
    ex = block.experts
    E, I = ex.gate_up_proj.shape[0], ex.down_proj.shape[2]
    shared = getattr(block, "shared_expert", None)
    S = 0 if shared is None else shared.down_proj.weight.shape[1]
    h = torch.zeros(flat.shape[0], E * I + S, dtype=x.dtype)
    for t in range(flat.shape[0]):
        for e in chosen[t].tolist():
            gu = ex.gate_up_proj[e] @ flat[t]
            h[t, e * I:(e + 1) * I] = ex.act_fn(gu[:I]) * gu[I:]
    if shared is not None:
        h[:, E * I:] = shared.act_fn(shared.gate_proj(flat)) * shared.up_proj(flat)
    return h.reshape(*x.shape[:-1], -1)


def zeroed_copy(model, ns: NeuronSet, scale: float = 0.0):
    """A deep copy whose weights are scaled for ``ns``: an expert channel's column of its expert's
    down projection (the shared expert's down_proj column), q/k/v rows and biases."""
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for layer in range(ns.num_layers):
            block = _block(edited, layer)
            E, I = block.experts.down_proj.shape[0], block.experts.down_proj.shape[2]
            for c in ns.indices("ffn", layer).tolist():
                if c < E * I:
                    block.experts.down_proj[c // I, :, c % I] *= scale
                else:
                    block.shared_expert.down_proj.weight[:, c - E * I] *= scale
            attn = edited.model.layers[layer].self_attn
            for kind in ("q", "k", "v"):
                rows = ns.indices(kind, layer)
                proj = getattr(attn, f"{kind}_proj")
                proj.weight[rows, :] *= scale
                if proj.bias is not None:
                    proj.bias[rows] *= scale
    return edited


def random_set(model, fraction: float = 0.15, seed: int = 0) -> NeuronSet:
    ns = NeuronSet.empty_for(model)
    gen = torch.Generator().manual_seed(seed)
    for k in KINDS:
        m = torch.rand(ns.masks[k].shape, generator=gen) < fraction
        m[:, 0] = True
        ns.masks[k] = m
    return ns


# ---- shapes and sites ---------------------------------------------------------------------------


def test_shapes_cover_every_expert_channel(moe64):
    name, model, tok = moe64
    ad = get_adapter(model)
    block = _block(model, 0)
    E, I = block.experts.down_proj.shape[0], block.experts.down_proj.shape[2]
    shared = getattr(block, "shared_expert", None)
    S = 0 if shared is None else shared.down_proj.weight.shape[1]
    assert ad.neuron_counts()["ffn"] == ad.ffn_size == E * I + S
    assert (E, I, S) == (4, 16, 24 if name.endswith("qwen2_moe") else 0)
    fp = ad.fingerprint()
    assert fp["experts"] == {"num_experts": E, "experts_per_token": 2, "expert_size": I, "shared_expert_size": S,
                             "ffn_channel": "expert * expert_size + channel; the shared expert's channels last"}
    ns = NeuronSet.empty_for(model)
    assert ns.masks["ffn"].shape == (ad.num_layers, E * I + S) and ns.fingerprint["experts"] == fp["experts"]
    got = importance(model, tok(TEXTS, return_tensors="pt", padding=True), kinds=("ffn",))
    assert got["ffn"].shape == (len(TEXTS), ad.num_layers, E * I + S)
    assert ad.down_weight(1).shape == (ad.hidden_size, E * I + S)
    assert torch.equal(ad.down_weight(1)[:, 2 * I + 3], _block(model, 1).experts.down_proj[2, :, 3])
    assert torch.equal(ad.expert_channels()[[0, I - 1, I, E * I - 1]], torch.tensor([0, 0, 1, E - 1]))


def test_every_site_resolves(moe64):
    _, model, _ = moe64
    ad = get_adapter(model)
    for name in [*SITES, *MOE_SITES]:
        site = ad.site(name, None if name == "final_norm.in" else 0)
        assert site.name == name and site.port in ("in", "out") and site.module in list(model.modules())
    with pytest.raises(ValueError, match="needs a layer"):
        ad.site("ffn.route", ad.num_layers)
    with pytest.raises(ValueError, match="unknown site"):
        capture(model, "ffn.nope")


def test_ffn_sites_are_the_expert_hidden_states(moe64):
    """ffn.in (and the points before it) hold each routed expert's values, zero elsewhere, and
    agree with the hidden states computed from the expert weights."""
    _, model, tok = moe64
    ad = get_adapter(model)
    ids = _ids(tok)[None]
    inputs = _block_inputs(model, ids)
    with torch.no_grad(), capture(model, ["ffn.in", "ffn.act", "ffn.up.out", "ffn.gate.out", "ffn.route"]) as cap:
        model(input_ids=ids)
    for layer in range(ad.num_layers):
        h = cap["ffn.in", layer]
        assert h.shape == (1, ids.shape[1], ad.ffn_size)
        want = _hidden_by_hand(_block(model, layer), inputs[layer])
        torch.testing.assert_close(h, want, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(cap["ffn.act", layer] * cap["ffn.up.out", layer], h, rtol=0, atol=0)
        routing = cap["ffn.route", layer]
        chosen = routing.chosen()  # (1, n, E)
        assert torch.equal(chosen.sum(-1), torch.full_like(chosen.sum(-1), ad.experts_per_token))
        routed = chosen[..., ad.expert_channels().clamp(max=ad.num_experts - 1)]
        routed[..., ad.expert_channels() == ad.num_experts] = True  # the shared expert sees every token
        for point in ("ffn.in", "ffn.act", "ffn.up.out", "ffn.gate.out"):
            assert torch.all(cap[point, layer][~routed] == 0), point
        _, w, e = _router(_block(model, layer))(inputs[layer].reshape(-1, ad.hidden_size))[:3]
        assert torch.equal(routing.experts[0], e) and torch.equal(routing.weights[0], w)


def test_recomputed_block_is_bit_identical(moe64):
    """An edit that changes nothing makes the hook layer return its computation of every block:
    the logits are the model's bit for bit; readers alone never change them."""
    _, model, tok = moe64
    ad = get_adapter(model)
    tok.padding_side = "right"
    batch = {"input_ids": tok(TEXTS, return_tensors="pt", padding=True)["input_ids"]}  # float64: no NaN pad rows
    with torch.no_grad():
        plain = model(**batch).logits
        hooks = Hooks()
        for layer in range(ad.num_layers):
            for point in ("ffn.gate.out", "ffn.up.out", "ffn.act", "ffn.in", "ffn.out"):
                hooks.edit(ad.site(point, layer), lambda x: x + 0)
        with hooks:
            edited = model(**batch).logits
        with capture(model, ["ffn.in", "ffn.route"]):
            read = model(**batch).logits
    assert torch.equal(edited, plain) and torch.equal(read, plain)
    assert sum(active_hooks(m) for m in model.modules()) == 0


def test_readers_keep_the_grouped_mm_output(fresh_tiny):
    """With transformers' default grouped_mm experts (another summation order), readers leave
    the module's output; an edit returns the computation's (eager) output, equal within rounding."""
    model, tok = fresh_tiny("tiny-random-qwen2_moe")  # grouped_mm has no float64 kernel
    ad = get_adapter(model)
    ids = _ids(tok)[None]
    with torch.no_grad():
        eager = model(input_ids=ids).logits
        model.set_experts_implementation("grouped_mm")
        grouped = model(input_ids=ids).logits
        with capture(model, "ffn.in"):
            read = model(input_ids=ids).logits
        with Hooks().edit(ad.site("ffn.in", 1), lambda x: x + 0):
            edited = model(input_ids=ids).logits
    assert torch.equal(read, grouped)
    torch.testing.assert_close(edited, grouped, rtol=1e-5, atol=1e-5)
    assert torch.equal(edited, eager)


def test_edits_run_before_reads_and_leave_no_trace(moe64):
    _, model, tok = moe64
    ad = get_adapter(model)
    ids = _ids(tok)[None]
    seen: list = []
    out: list = []
    with torch.no_grad():
        before = model(input_ids=ids).logits
        with Hooks().read(ad.site("ffn.in", 1), seen.append).read(ad.site("ffn.out", 1), out.append):
            with Hooks().edit(ad.site("ffn.in", 1), lambda x: x * 0):
                model(input_ids=ids)
        assert torch.all(seen[-1] == 0) and torch.all(out[-1] == 0)  # no expert has a bias
        with pytest.raises(RuntimeError, match="boom"):
            with Hooks().edit(ad.site("ffn.in", 0), lambda x: x * 2):
                model(input_ids=ids)
                raise RuntimeError("boom")
        with pytest.raises(TypeError, match="cannot be edited"):
            with Hooks().edit(ad.site("ffn.route", 0), lambda r: r):
                model(input_ids=ids)
        assert torch.equal(model(input_ids=ids).logits, before)
    assert sum(active_hooks(m) for m in model.modules()) == 0


def test_edits_at_unrouted_positions_are_ignored(moe64):
    """Steering writes a value into a channel at every token: only the tokens routed to its
    expert take it (the expert does not run on the others)."""
    _, model, tok = moe64
    ad = get_adapter(model)
    ids = _ids(tok)[None]
    c = 2 * ad.expert_size + 5  # expert 2, channel 5
    got: dict = {}

    def write(x):
        return x.index_fill(-1, torch.tensor([c]), 3.0)

    with torch.no_grad():
        with capture(model, ["ffn.route", "ffn.in"], layers=[1]) as plain:
            model(input_ids=ids)
        hooks = Hooks().edit(ad.site("ffn.in", 1), write).read(ad.site("ffn.out", 1), lambda o: got.__setitem__("o", o))
        with hooks:
            model(input_ids=ids)
        with capture(model, "ffn.out", layers=[1]) as base:
            model(input_ids=ids)
    routing, h = plain["ffn.route", 1], plain["ffn.in", 1]
    block = _block(model, 1)
    r = routing.dense_weights()[0, :, 2]  # (n,) expert 2's routing weight, 0 where not routed
    want = base["ffn.out", 1][0] + ((3.0 - h[0, :, c]) * r)[:, None] * block.experts.down_proj[2, :, 5][None]
    torch.testing.assert_close(got["o"][0], want, rtol=1e-10, atol=1e-12)


def test_steering_equals_a_hand_made_edit(moe64):
    """``mwork.steer`` on expert channels (set mode, every position) gives exactly the logits of a
    hand-made edit at the same computed point, in prompt passes and in cached generation, and
    leaves the model bit-identical."""
    _, model, tok = moe64
    ad = get_adapter(model)
    ids = _ids(tok)[None]
    ns = NeuronSet.empty_for(model)
    mask = ns.masks["ffn"].clone()
    chans = [ad.expert_size + 3, 2 * ad.expert_size + 5]  # experts 1 and 2
    mask[1, chans] = True
    target = torch.zeros(mask.shape)
    target[1, chans] = torch.tensor([0.7, -1.3])
    ns = NeuronSet({"ffn": mask}, ns.meta).with_statistics({"mean": {"ffn": target}}, {"rule": "test"})
    a = 0.5
    idx = torch.tensor(chans)

    def hand(x):
        return x.index_copy(-1, idx, (1 - a) * x[..., idx] + a * target[1, idx].to(x.dtype))

    with torch.no_grad():
        base = model(input_ids=ids).logits
        with Hooks().edit(ad.neuron_site("ffn", 1), hand):
            want = model(input_ids=ids).logits
            want_gen = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
        with mwork.steer(model, ns, mode="set", strength=a):
            got = model(input_ids=ids).logits
            got_gen = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
            no_cache = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, use_cache=False)
        after = model(input_ids=ids).logits
    assert not torch.equal(got, base)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert torch.equal(got_gen, want_gen) and torch.equal(got_gen, no_cache)
    assert torch.equal(after, base) and not active_hooks(model)


# ---- importance, brute force, deactivation ------------------------------------------------------------


def test_importance_equals_brute_force(any64):
    name, model, tok = any64
    ad = get_adapter(model)
    generic = name in GENERIC_QK or name in {v for v, (_, _, p) in VARIANTS.items() if p == "generic"}
    paths = qk_paths(model)
    assert all(p.startswith("generic (") for p in paths.values()) if generic else set(paths.values()) == {"exact"}
    tok.padding_side = "left"
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    with pytest.warns(UserWarning, match="generic path") if generic else _quiet():
        got = importance(model, batch)
    for b, text in enumerate(TEXTS):
        ids = _ids(tok, text)
        for layer in range(ad.num_layers):
            for kind in KINDS:
                want = brute_force(model, ids, layer, kind)
                err = float((got[kind][b, layer] - want).abs().max() / want.abs().max())
                assert err <= TOL, f"{name} {kind} layer {layer} doc {b}: relative error {err:.2e}"


def test_ffn_importance_equals_zeroed_expert_weights(moe64):
    """The FFN score of every expert channel is the change of the block's output when the column
    of that expert's down projection is zeroed (the block module run on its own, on its input)."""
    name, model, tok = moe64
    ad = get_adapter(model)
    ids = _ids(tok)
    x = _block_inputs(model, ids[None])[1]
    got = importance(model, {"input_ids": ids[None]}, kinds=("ffn",))["ffn"][0, 1]
    block = copy.deepcopy(_block(model, 1))
    E, I = ad.num_experts, ad.expert_size
    with torch.no_grad():
        clean = block(x)
        want = []
        for c in range(ad.ffn_size):
            w = block.experts.down_proj if c < E * I else block.shared_expert.down_proj.weight
            where = (c // I, slice(None), c % I) if c < E * I else (slice(None), c - E * I)
            kept = w[where].clone()
            w[where] = 0
            want.append(float((block(x) - clean).norm()))
            w[where] = kept
    want = torch.tensor(want, dtype=torch.float64)
    assert int((want == 0).sum()) == int((got == 0).sum())  # experts no token chose score 0
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-14)


def test_deactivation_equals_zeroed_weights_exactly(any64):
    name, model, tok = any64
    batch = {"input_ids": tok(TEXTS, return_tensors="pt", padding=True)["input_ids"]}
    with torch.no_grad():
        before = model(**batch).logits
        for kinds in (["ffn"], list(KINDS)):
            ns = random_set(model).restrict(kinds=kinds)
            with deactivate(model, ns) as d:
                hooked = model(**batch).logits
            assert d.count == ns.count() > 0
            expected = zeroed_copy(model, ns)(**batch).logits
            torch.testing.assert_close(hooked, expected, rtol=0, atol=0, msg=lambda m: f"{name} {kinds}: {m}")
            assert not torch.allclose(hooked, before, atol=1e-6)
        ns = random_set(model, seed=1)
        with deactivate(model, ns, scale=0.5):
            hooked = model(**batch).logits
        torch.testing.assert_close(hooked, zeroed_copy(model, ns, scale=0.5)(**batch).logits, rtol=1e-10, atol=1e-10)


def test_layer_parity(any64):
    name, model, tok = any64
    errors = layer_parity(model, tok([TEXTS[0]], return_tensors="pt"))
    assert max(errors.values()) <= 1e-12, (name, errors)


def test_lens_equals_manual_decoding(moe64):
    """The lens' logits of every layer == final norm + LM head (/ logits_scaling for GraniteMoE)
    of HF's hidden states, at prompt and generated positions (as tests/test_lens.py checks)."""
    name, model, tok = moe64
    res = logit_lens(model, tok, PROMPTS, top_k=5, max_new_tokens=3, options=LensOptions(batch_size=3),
                     progress=False)
    scale = getattr(model.config, "logits_scaling", 1.0)
    for p in res.prompts:
        manual = _manual_logits(model, p.token_ids)
        for layer, logits in enumerate(manual):
            logits = logits / scale if layer < len(manual) - 1 else logits  # HF's last logits are scaled
            ref_vals, ref_ids = logits[p.positions].topk(5, dim=-1)
            assert torch.equal(p.topk_ids[layer], ref_ids), (name, layer)
            torch.testing.assert_close(p.topk_logits[layer], ref_vals.float(), rtol=1e-5, atol=1e-5)


def test_perplexity_equals_manual_computation(moe64):
    _, model, tok = moe64
    total, count = 0.0, 0
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        nll = -torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])
        total, count = total + float(nll.sum()), count + nll.numel()
    r = mwork.perplexity(model, tok, TEXTS, batch_size=2, progress=False)
    assert r["tokens"] == count and r["nll"] == pytest.approx(total / count, rel=1e-10)


def test_dense_layers_are_refused():
    with pytest.raises(UnsupportedModelError, match="dense MLP"):
        get_adapter(build_tiny("Qwen3MoeConfig", _common(**_SHAPE, intermediate_size=32, moe_intermediate_size=16,
                                                         num_experts=4, num_experts_per_tok=2, mlp_only_layers=[1])))


# ---- enhancement ----------------------------------------------------------------------------------


def _expert_neurons(model) -> NeuronSet:
    ad = get_adapter(model)
    C, I = ad.ffn_size, ad.expert_size
    return NeuronSet.from_indices(model, {"ffn": {0: [1, 2 * I + 5], 2: [C - 1, I]}, "q": {1: [0]}, "v": {2: [3]}})


def test_expert_slices_own_exactly_their_neuron(moe64):
    """Zeroing the rows an expert channel owns (its rows of the expert's gate and up) zeroes
    that channel's hidden state at every token and nothing else."""
    _, model, tok = moe64
    ad = get_adapter(model)
    ids = _ids(tok)[None]
    neurons = torch.tensor([0, 3 * ad.expert_size + 7, ad.ffn_size - 1])
    before = mwork.capture(model, "ffn.in", layers=[1])
    with before, torch.no_grad():
        model(input_ids=ids)
    edited = copy.deepcopy(model)
    ea = get_adapter(edited)
    slices = ea.neuron_slices(1, "ffn")
    assert [(s.role, s.side, s.site) for s in slices] == [("gate", "out", "ffn.gate.out"), ("up", "out", "ffn.up.out"),
                                                          ("down", "in", "ffn.out")]
    with torch.no_grad():
        for role in ("gate", "up"):
            for part in ea.expert_parameters(1, role, neurons):
                part.param[part.index] = 0
    after = mwork.capture(edited, "ffn.in", layers=[1])
    with after, torch.no_grad():
        edited(input_ids=ids)
    h0, h1 = before["ffn.in", 1], after["ffn.in", 1]
    assert torch.all(h1[..., neurons] == 0)
    keep = torch.ones(ad.ffn_size, dtype=torch.bool)
    keep[neurons] = False
    torch.testing.assert_close(h1[..., keep], h0[..., keep], rtol=0, atol=0)


def test_delta_attach_equals_merged_weights(moe64):
    _, model, tok = moe64
    delta = NeuronDelta.zeros(model, _expert_neurons(model))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in delta.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    batch = {"input_ids": tok(TEXTS, return_tensors="pt", padding=True)["input_ids"]}
    merged = copy.deepcopy(model)
    delta.merge_into(merged)
    with torch.no_grad():
        with delta.attach(model):
            hooked = model(**batch).logits
        plain = model(**batch).logits
        torch.testing.assert_close(hooked, merged(**batch).logits, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(hooked, plain)
    masks = delta.element_masks(model)
    assert sum(int(m.sum()) for m in masks.values()) == delta.num_parameters()
    assert any(n.endswith("experts.gate_up_proj") for n in masks) and any(n.endswith("experts.down_proj") for n in masks)


@pytest.mark.parametrize("alias", ["tiny-random-mixtral", "tiny-random-qwen2_moe"])
def test_enhance_trains_only_the_expert_slices(alias, tmp_path, fresh_tiny, shared_tiny):
    from mwork.experiments.enhance import enhance, lora_for_budget

    # float32: float64 eager sliding-window attention gives NaN at padded rows (a transformers limitation)
    model, tok = fresh_tiny(alias)
    texts = TEXTS + ["Le renard brun saute par-dessus le chien paresseux.", "Der schnelle braune Fuchs springt."]
    res = enhance(model, tok, _expert_neurons(model), texts, tmp_path, max_steps=2, lr=1e-2, batch_size=2,
                  grad_accum=1, warmup_ratio=0.0, progress=False)
    assert all(math.isfinite(x) for x in res.losses) and res.losses[-1] != res.losses[0]
    base, _ = shared_tiny(alias)
    merged, _ = mwork.load_model(alias, device="cpu", delta=tmp_path)
    masks = res.delta.element_masks(base)
    assert sum(int(m.sum()) for m in masks.values()) == res.delta.num_parameters() == res.meta["trainable_parameters"]
    for (name, p0), (_, p1), (_, p2) in zip(base.named_parameters(), merged.named_parameters(),
                                            model.named_parameters()):
        assert torch.equal(p0, p2), f"training edited the base weight {name}"
        mask = masks.get(name)
        if mask is None:
            assert torch.equal(p0, p1), f"{name} changed but holds no selected neuron"
            continue
        assert torch.equal(p0[~mask], p1[~mask]), f"{name}: an element outside the selected slices changed"
        assert bool((p0[mask] != p1[mask]).all()), f"{name}: a selected element did not change"
    batch = {"input_ids": tok(TEXTS, return_tensors="pt", padding=True)["input_ids"]}
    with torch.no_grad():
        with res.delta.attach(model):
            hooked = model(**batch).logits
        torch.testing.assert_close(merged(**batch).logits, hooked, rtol=1e-4, atol=1e-4)
    again = NeuronDelta.load(tmp_path, model)
    assert {s.site for s in again.slices} >= {"ffn.gate.out", "ffn.up.out", "ffn.out"}
    with pytest.raises(ValueError, match="LoRA"):
        lora_for_budget(model, _expert_neurons(model))


def test_delta_refuses_another_moe_shape(tmp_path, shared_tiny):
    model, _ = shared_tiny("tiny-random-olmoe", torch.float64)
    NeuronDelta.zeros(model, _expert_neurons(model)).save(tmp_path, {"fingerprint": get_adapter(model).fingerprint()})
    other, _ = shared_tiny("tiny-random-qwen2_moe", torch.float64)
    with pytest.raises(ValueError, match="does not fit"):
        NeuronDelta.load(tmp_path, other)


# ---- statistics -----------------------------------------------------------------------------------


CORPORA = {"en": ["The quick brown fox jumps over the lazy dog.", "Language models read many languages."],
           "ru": ["Быстрая коричневая лиса прыгает через ленивую собаку.", "Модели читают много языков."],
           "zh": ["敏捷的棕色狐狸跳过了懒狗。", "语言模型可以阅读和书写多种语言。"]}


def _router_counts_by_hand(model, tok, texts) -> tuple[torch.Tensor, int]:
    """(layers, experts) selections from the router modules' own outputs, one document at a time."""
    layers = len(model.model.layers)
    counts = torch.zeros(layers, 4, dtype=torch.long)

    def keep(i: int):
        def hook(module, args, out) -> None:
            counts[i] += torch.bincount(out[2].flatten(), minlength=4)
        return hook

    handles = [_router(_block(model, i)).register_forward_hook(keep(i)) for i in range(layers)]
    n = 0
    try:
        with torch.no_grad():
            for t in texts:
                ids = tok(t)["input_ids"]
                n += len(ids)
                model(input_ids=torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return counts, n


@pytest.mark.parametrize("alias", ["tiny-random-olmoe", "tiny-random-qwen2_moe"])
def test_router_statistics(alias, tmp_path, shared_tiny):
    model, tok = shared_tiny(alias, torch.float64)
    stats = router_statistics(model, tok, CORPORA, config=RouterStatsConfig(batch_size=2))
    for li, lang in enumerate(CORPORA):
        want, n = _router_counts_by_hand(model, tok, CORPORA[lang])  # the tiny tokenizer adds no BOS
        assert torch.equal(stats.selections[li], want) and int(stats.tokens[li]) == n
    f = stats.frequency()
    torch.testing.assert_close(f.sum(-1), torch.full(f.shape[:2], 2.0, dtype=torch.float64))  # k = 2 per token
    # the specificity by its formula, one expert at a time
    for layer, e in [(0, 0), (2, 3)]:
        p = f[:, layer, e] / f[:, layer, e].sum()
        h = -sum(float(q) * math.log2(float(q)) for q in p if q > 0)
        assert float(stats.specificity()[layer, e]) == pytest.approx(1 - h / math.log2(3), abs=1e-12)
        mean = float(f[:, layer, e].mean())
        assert float(stats.log2_ratio()[1, layer, e]) == pytest.approx(math.log2(float(f[1, layer, e]) / mean))
    paths = write_router_stats(stats, tmp_path)
    assert {p.name for p in paths.values()} == {"router_frequency.csv", "router_specificity.csv", "router.png",
                                                "router.json"}
    rows = list(csv.DictReader(open(paths["frequency"])))
    assert len(rows) == 3 * 3 * 4 and set(rows[0]) == {"language", "layer", "expert", "selections", "tokens",
                                                         "frequency", "mean_weight", "log2_ratio"}
    spec = list(csv.DictReader(open(paths["specificity"])))
    assert len(spec) == 3 * 4 and set(spec[0]) == {"layer", "expert", "specificity", "entropy_bits", "top_language",
                                                     "top_frequency", "top_log2_ratio"}
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_router_statistics_refuse_dense_models_and_bad_corpora(tmp_path, shared_tiny):
    dense, tok = shared_tiny("tiny-random-llama")
    with pytest.raises(ValueError, match="mixture-of-experts"):
        router_statistics(dense, tok, CORPORA)
    with pytest.raises(ValueError, match="LANG=SPEC"):
        RouterStatsConfig(corpora=("en",))
    with pytest.raises(ValueError, match="twice"):
        RouterStatsConfig(corpora=("en=a.txt", "en=b.txt"))


def test_stats_cli_router_and_per_expert_counts(tmp_path, capsys, shared_tiny):
    for lang, texts in CORPORA.items():
        (tmp_path / f"{lang}.txt").write_text("\n".join(texts) + "\n")
    out = tmp_path / "router"
    args = ["stats", "--router", "--model", "tiny-random-granitemoe", "--device", "cpu", "--out", str(out),
            "--quiet", "--corpus", *(f"{lang}={tmp_path / f'{lang}.txt'}" for lang in CORPORA)]
    assert main(args) == 0
    assert "specificity" in capsys.readouterr().out
    meta = json.loads((out / "router.json").read_text())
    assert meta["languages"] == list(CORPORA) and meta["model"] == "tiny-random-granitemoe"
    assert main(["stats", "--router", "--model", "tiny-random-granitemoe", "--out", str(out)]) == 2
    assert "--corpus" in capsys.readouterr().err
    # NeuronSet statistics of a MoE model count neurons per expert
    model, _ = shared_tiny("tiny-random-qwen2_moe")
    ns = _expert_neurons(model)
    ns.meta["language"] = "fr"
    # ffn {0: [1, 2I + 5], 2: [C - 1 (shared), I]}: experts 0 and 2 in layer 0, expert 1 and the shared one in layer 2
    assert ns.expert_counts().tolist() == [[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 1]]
    assert NeuronSet.empty_for(shared_tiny("tiny-random-llama")[0]).expert_counts() is None
    ns.save(tmp_path / "fr.safetensors")
    assert main(["stats", str(tmp_path / "fr.safetensors"), "--out", str(tmp_path / "sets")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "sets" / "counts_per_expert.csv")))
    per = {(int(r["layer"]), r["expert"]): int(r["count"]) for r in rows}
    assert per[(0, "0")] == 1 and per[(0, "2")] == 1 and per[(2, "shared")] == 1 and per[(2, "1")] == 1
    assert sum(per.values()) == ns.count("ffn") and len(rows) == 3 * 5


def test_router_stats_job_is_what_the_cli_does(tmp_path, capsys, shared_tiny):
    """``RouterStatsConfig(...).run().write(out)`` writes what ``mwork stats --router`` writes."""
    for lang, texts in CORPORA.items():
        (tmp_path / f"{lang}.txt").write_text("\n".join(texts) + "\n")
    corpora = tuple(f"{lang}={tmp_path / f'{lang}.txt'}" for lang in CORPORA)
    assert main(["stats", "--router", "--model", "tiny-random-olmoe", "--out", str(tmp_path / "cli"), "--no-progress",
                 "--corpus", *corpora]) == 0
    printed = capsys.readouterr().out.splitlines()
    job = RouterStatsConfig(model="tiny-random-olmoe", corpora=corpora, progress=False)
    result = job.run(*shared_tiny("tiny-random-olmoe"))
    files = result.write(tmp_path / "api")
    assert printed[:-1] == result.lines()
    for name in ("router_frequency.csv", "router_specificity.csv", "router.json"):
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    assert set(files) == {"frequency", "specificity", "plot", "meta"}
    with pytest.raises(ValueError, match="needs --corpus"):
        RouterStatsConfig(model="tiny-random-olmoe").run()


def test_models_command_lists_the_moe_families(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for alias in MOE_ALIASES:
        family = alias[len("tiny-random-"):]
        assert alias in out and any(line.split()[0] == family for line in out.splitlines() if line.startswith("  "))


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("error", UserWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)
