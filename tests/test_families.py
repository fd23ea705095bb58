"""Family variants the tiny aliases do not cover, and the enhancement slices of every family.

Each variant is a config of a supported family with another structure (Falcon-7B's multi-query
layout, Falcon-RW's ALiBi and sequential blocks, OPT-350m's post-LN, GPT-BigCode without MQA,
StableLM-2-12B's LayerNorm QK-norm and parallel residual, Phi with QK LayerNorm, Cohere with
its per-head QK LayerNorm, MPT with clip_qkv), checked in float64 as the aliases are:
attention recomputed from the adapter's pieces, layer parity, importance of every kind against
brute force (and the Q/K path it takes), deactivation against zeroed weights.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch

from mwork.neurons.delta import NeuronDelta
from mwork.hooks import Hooks
from mwork.intervene import deactivate
from mwork.models.adapters import KINDS, attention_mask, get_adapter
from mwork.models.parity import layer_parity
from mwork.models.tiny import TINY_ALIASES, _common, _rope, build_tiny
from mwork.neurons.brute_force import brute_force
from mwork.neurons.importance import importance, qk_paths
from mwork.neurons.neuronset import NeuronSet

TEXT = "The quick brown fox jumps over the lazy dog. Le renard brun saute."
_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
_LLAMA = dict(_SHAPE, intermediate_size=96, num_key_value_heads=2, head_dim=16)

# name -> (config class, kwargs, expected Q/K path: "exact" or "generic")
VARIANTS = {
    "falcon-mqa": ("FalconConfig", _common(**_SHAPE, multi_query=True, new_decoder_architecture=False,
                                           parallel_attn=True, ffn_hidden_size=96), "exact"),
    "falcon-alibi-sequential": ("FalconConfig", _common(**_SHAPE, alibi=True, multi_query=False, parallel_attn=False,
                                                        new_decoder_architecture=False, bias=True, ffn_hidden_size=96),
                                "exact"),
    "falcon-one-norm": ("FalconConfig", _common(**_SHAPE, num_kv_heads=2, new_decoder_architecture=True,
                                                num_ln_in_parallel_attn=1, ffn_hidden_size=96), "exact"),
    "opt-post-ln": ("OPTConfig", _common(hidden_size=64, num_hidden_layers=2, ffn_dim=96, num_attention_heads=4,
                                         word_embed_proj_dim=48, do_layer_norm_before=False,
                                         max_position_embeddings=256), "exact"),
    "gpt_bigcode-mha": ("GPTBigCodeConfig", _common(n_embd=64, n_layer=2, n_head=4, n_inner=96, n_positions=256,
                                                    multi_query=False), "exact"),
    "stablelm-qk-layernorm-parallel": ("StableLmConfig", _common(**_LLAMA, qk_layernorm=True, use_parallel_residual=True,
                                                                 rope_parameters=_rope(partial_rotary_factor=0.25)),
                                       "generic"),
    "phi-qk-layernorm": ("PhiConfig", _common(**_LLAMA, qk_layernorm=True, rope_parameters=_rope(partial_rotary_factor=0.5)),
                         "generic"),
    "cohere-qk-norm": ("CohereConfig", _common(**_LLAMA, use_qk_norm=True), "generic"),
    "mpt-clip-qkv": ("MptConfig", _common(d_model=64, n_heads=4, n_layers=2, max_seq_len=256,
                                          attn_config={"clip_qkv": 0.15}), "exact"),
    "gpt_neox-sequential": ("GPTNeoXConfig", _common(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                                     num_attention_heads=4, use_parallel_residual=False,
                                                     rope_parameters=_rope(partial_rotary_factor=0.25)), "exact"),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tiny_models):
    cls_name, kwargs, path = VARIANTS[request.param]
    model, tok = tiny_models.shared(f"variant-{request.param}", torch.float64,
                                    build=lambda: build_tiny(cls_name, kwargs, torch.float64))
    return request.param, model, tok, path


def _ids(tok) -> torch.Tensor:
    return torch.tensor(tok(TEXT).input_ids)


def test_variant_attention_is_recomputed_exactly(variant):
    name, model, tok, _ = variant
    _check_attention_recomputed(name, model, tok)


def test_falcon_alibi_under_sdpa_is_recomputed_exactly(tiny_models):
    """Hub models load with SDPA attention; ALiBi reaches Falcon's attention through the mask then
    (transformers 5.24: the eager path also added it to the raw scores; 5.25: the mask only)."""
    cls_name, kwargs, _ = VARIANTS["falcon-alibi-sequential"]

    def build():
        model = build_tiny(cls_name, kwargs, torch.float64)
        model.config._attn_implementation = "sdpa"  # read at every forward (5.24: Falcon's own switch)
        return model

    model, tok = tiny_models.shared("variant-falcon-alibi-sdpa", torch.float64, build=build)
    assert model.config._attn_implementation == "sdpa"
    _check_attention_recomputed("falcon-alibi-sdpa", model, tok)


def _check_attention_recomputed(name, model, tok):
    ad = get_adapter(model)
    ids = _ids(tok)[None]
    got: dict = {}
    for layer in range(ad.num_layers):
        hooks = Hooks().read(ad.site("attn.in", layer), lambda c: got.__setitem__("ctx", c))
        for kind in ("q", "k", "v"):
            hooks.read(ad.site(f"{kind}.out", layer), lambda x, kind=kind: got.__setitem__(kind, x.clone()))
        hooks.read(ad.site("o.out", layer), lambda x: got.__setitem__("o", x))
        with hooks, torch.no_grad():
            ad.body(input_ids=ids, **ad.forward_kwargs(torch.ones_like(ids)))
        n = ids.shape[1]
        q, k, v = (ad.neuron_site(kind, layer).channels(got[kind]).view(1, n, -1, ad.head_dim).transpose(1, 2)
                   for kind in ("q", "k", "v"))
        ctx = got["ctx"]
        q, k, v = (ad.apply_qk_norm(layer, which, x) for which, x in enumerate((q, k, v)))
        q, k = ad.apply_rope(q, ctx), ad.apply_rope(k, ctx)
        mask = attention_mask(torch.ones(1, n, dtype=torch.long), ad.sliding_window(layer))
        p = torch.softmax(ad.scores(layer, q, k, ctx).masked_fill(~mask, float("-inf")), dim=-1)
        o = (p @ v.repeat_interleave(ad.kv_group_size, dim=1)).transpose(1, 2).reshape(1, n, -1)
        with torch.no_grad():
            torch.testing.assert_close(ad.o_proj(layer)(o), got["o"], rtol=1e-6, atol=1e-6, msg=f"{name} layer {layer}")


def test_variant_layer_parity(variant):
    name, model, tok, _ = variant
    errors = layer_parity(model, tok([TEXT], return_tensors="pt"))
    assert max(errors.values()) <= 1e-12, (name, errors)


def test_variant_importance_equals_brute_force(variant):
    name, model, tok, path = variant
    ad = get_adapter(model)
    ids = _ids(tok)
    assert set(p.split(" ")[0] for p in qk_paths(model).values()) == {path}
    with pytest.warns(UserWarning, match="generic path") if path == "generic" else _no_warning():
        got = importance(model, {"input_ids": ids[None]})
    for layer in range(ad.num_layers):
        for kind in KINDS:
            want = brute_force(model, ids, layer, kind)
            err = float((got[kind][0, layer] - want).abs().max() / want.abs().max())
            assert err <= 1e-6, f"{name} {kind} layer {layer}: relative error {err:.2e}"


@contextlib.contextmanager
def _no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        yield


def test_variant_deactivation_equals_zeroed_weights(variant):
    from tests.test_intervene import edit_weights, random_set

    name, model, tok, _ = variant
    batch = {"input_ids": _ids(tok)[None]}
    ns = random_set(model)
    with torch.no_grad():
        with deactivate(model, ns):
            hooked = model(**batch).logits
        expected = edit_weights(model, ns)(**batch).logits
    torch.testing.assert_close(hooked, expected, rtol=1e-10, atol=1e-10)


# ---- enhancement slices, every family -----------------------------------------------------------


@pytest.fixture(scope="module", params=TINY_ALIASES)
def tiny_alias64(request, tiny_models):
    return tiny_models.shared(request.param, torch.float64)


def test_ffn_slices_own_exactly_their_neuron(tiny_alias64):
    """Zeroing the rows an FFN neuron owns (its W_gate / W_up rows and bias elements: the
    fused gate_up halves of Phi-3 included) zeroes that neuron's FFN hidden state and nothing
    else; its W_down slice is the column deactivation zeroes."""
    model, tok = tiny_alias64
    ad = get_adapter(model)
    batch = {"input_ids": _ids(tok)[None]}
    neurons = [0, ad.ffn_size - 1]

    def ffn_hidden(m) -> torch.Tensor:
        got = {}
        a = get_adapter(m)
        with torch.no_grad(), Hooks().read(a.site("ffn.in", 1), lambda h: got.__setitem__("h", h.clone())):
            a.body(**batch)
        return got["h"].reshape(-1, a.ffn_size)

    before = ffn_hidden(model)
    edited = copy.deepcopy(model)
    slices = get_adapter(edited).neuron_slices(1, "ffn")
    assert [s.role for s in slices][-1] == "down" and slices[-1].side == "in"
    assert torch.equal(slices[-1].index, ad.channel_site(1, "ffn").index)
    with torch.no_grad():
        for s in slices:
            if s.side != "out":
                continue
            feats = s.index[neurons]
            w = s.module.weight
            if s.transposed:
                w[:, feats] = 0
            else:
                w[feats, :] = 0
            if getattr(s.module, "bias", None) is not None:
                s.module.bias[feats] = 0
    after = ffn_hidden(edited)
    assert torch.all(after[:, neurons] == 0)
    keep = [c for c in range(ad.ffn_size) if c not in neurons]
    torch.testing.assert_close(after[:, keep], before[:, keep], rtol=0, atol=0)


def test_delta_attach_equals_merged_weights(tiny_alias64):
    model, tok = tiny_alias64
    ad = get_adapter(model)
    counts = ad.neuron_counts()
    ns = NeuronSet.from_indices(model, {"ffn": {0: [1, counts["ffn"] - 1]}, "q": {1: [0, counts["q"] - 1]},
                                        "k": {0: [3]}, "v": {2: [counts["v"] - 1]}})
    delta = NeuronDelta.zeros(model, ns)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in delta.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    batch = {"input_ids": _ids(tok)[None]}
    merged = copy.deepcopy(model)
    delta.merge_into(merged)
    with torch.no_grad():
        with delta.attach(model):
            hooked = model(**batch).logits
        plain = model(**batch).logits
        torch.testing.assert_close(hooked, merged(**batch).logits, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(hooked, plain)
    changed = {name for name, m in delta.element_masks(model).items() if m.any()}
    assert changed  # only modules that hold a selected neuron's slice
    assert len(changed) >= 4


@pytest.mark.parametrize("alias", ["tiny-random-olmo2", "tiny-random-cohere", "tiny-random-gptj"])
def test_approx_is_the_first_order_formula_for_new_structures(alias, shared_tiny):
    """method="approx" = ||P * (D - rowsum(P * D))||^2 summed over every head a channel changes,
    D the exact score change (recomputed here): with a QK-norm over the whole projection
    (OLMo-2: every head changes) and with interleaved RoPE (Cohere, GPT-J partial)."""
    model, tok = shared_tiny(alias, torch.float64)
    ad = get_adapter(model)
    ids = _ids(tok)[None]
    n, layer = ids.shape[1], 1
    approx = importance(model, {"input_ids": ids}, kinds=("q", "k"), method="approx")
    got: dict = {}
    hooks = Hooks().read(ad.site("attn.in", layer), lambda c: got.__setitem__("ctx", c))
    for kind in ("q", "k"):
        hooks.read(ad.site(f"{kind}.out", layer), lambda x, kind=kind: got.__setitem__(kind, x.clone()))
    with hooks, torch.no_grad():
        ad.body(input_ids=ids, **ad.forward_kwargs(torch.ones_like(ids)))
    ctx = got["ctx"]
    raw = {k: ad.neuron_site(k, layer).channels(got[k]).view(1, n, -1, ad.head_dim).transpose(1, 2) for k in ("q", "k")}
    mask = attention_mask(torch.ones(1, n, dtype=torch.long), ad.sliding_window(layer))

    def scores(q, k):
        q, k = ad.apply_qk_norm(layer, 0, q), ad.apply_qk_norm(layer, 1, k)
        with torch.no_grad():
            return ad.scores(layer, ad.apply_rope(q, ctx), ad.apply_rope(k, ctx), ctx).masked_fill(~mask, 0)

    S = scores(raw["q"], raw["k"])
    P = torch.softmax(S.masked_fill(~mask, float("-inf")), -1)
    for kind in ("q", "k"):
        want = []
        for c in range(ad.neuron_counts()[kind]):
            zq, zk = raw["q"].clone(), raw["k"].clone()
            (zq if kind == "q" else zk)[:, c // ad.head_dim, :, c % ad.head_dim] = 0
            D = S - scores(zq, zk)
            dP = P * (D - (P * D).sum(-1, keepdim=True))
            want.append(dP.square().sum())
        torch.testing.assert_close(approx[kind][0, layer], torch.stack(want).sqrt(), rtol=1e-6, atol=1e-12)


def test_models_command_lists_every_family_and_alias(capsys):
    from mwork.cli import main
    from mwork.models.adapters import supported_families, supported_model_types
    from mwork.models.tiny import tiny_model_types

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(lines) == set(supported_families())
    for alias, model_type in tiny_model_types().items():
        family = get_adapter_family(model_type)
        assert model_type in lines[family] and alias in lines[family]
    assert len(supported_model_types()) >= 26
    assert set(tiny_model_types().values()) == set(supported_model_types())  # every model type has a tiny model


def get_adapter_family(model_type: str) -> str:
    from mwork.models.adapters import REGISTRY

    return REGISTRY[model_type].family
