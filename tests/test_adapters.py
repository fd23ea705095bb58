"""The adapters answer every "where is X" question correctly, for every supported family.

The strongest checks: attention recomputed from the pieces the adapter names (captured q/k/v,
QK-norm, RoPE, score function, mask, softmax, W_O) reproduces the attention module's real
output, in float64, with padding on either side -- neuron importance relies on exactly this;
and the layer parity (``mwork.models.parity``): each layer's input, attention output and FFN
output, combined as the adapter says, give the layer's output.
"""

from __future__ import annotations

import pytest
import torch

from mwork.hooks import Site
from mwork.models.adapters import KINDS, AttentionContext, attention_mask, get_adapter
from mwork.models.parity import layer_parity
from mwork.models.tiny import TINY_ALIASES

# 43 and 41 tokens: longer than the tiny models' sliding window (8), and the shorter one's
# padding (2) is shorter than the window, so no padded query row is left with nothing to attend
# to (which would make float64 eager attention NaN, see ``tiny32``).
TEXTS = [
    "The quick brown fox jumps over the lazy dog. Le renard brun saute par-dessus le chien.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
]


@pytest.fixture(scope="module", params=TINY_ALIASES)
def alias(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def tiny64(alias, tiny_models):
    return tiny_models.shared(alias, torch.float64)


@pytest.fixture(scope="module")
def tiny32(alias, tiny_models):
    """float32, for left padding: in float64, eager attention casts the float64 mask minimum to
    float32 for its softmax (-inf), so padded query rows with nothing to attend to become NaN
    and leak into every token through 0 * NaN in the next layer (a transformers limitation)."""
    return tiny_models.shared(alias, torch.float32)


def _batch(tok, side: str) -> dict[str, torch.Tensor]:
    tok.padding_side = side
    return dict(tok(TEXTS, return_tensors="pt", padding=True))


def test_resolves_every_component(tiny64):
    model, _ = tiny64
    ad = get_adapter(model)
    D, H, Hkv, d = ad.hidden_size, ad.num_heads, ad.num_kv_heads, ad.head_dim
    assert ad.num_layers == len(ad.layers) > 0
    assert H % Hkv == 0 and ad.kv_group_size == H // Hkv
    for module in (ad.embed, ad.final_norm, ad.lm_head, ad.body):
        assert isinstance(module, torch.nn.Module)
    assert isinstance(ad.embed_site, Site) and ad.embed_site.module in list(model.modules())
    assert ad.block in ("sequential", "parallel")
    assert ad.body is not model and not hasattr(ad.body, "lm_head")
    counts = ad.neuron_counts()
    assert counts == {"ffn": ad.ffn_size, "q": H * d, "k": Hkv * d, "v": Hkv * d}
    assert ad.total_neurons() == ad.num_layers * sum(counts.values())
    for i in range(ad.num_layers):
        assert ad.down_weight(i).shape == (D, ad.ffn_size)
        assert ad.o_weight(i).shape == (D, H * d)
        assert ad.attention(i) in list(ad.layers[i].modules())
        for module in (ad.mlp_down(i), ad.o_proj(i)):
            assert module in list(ad.layers[i].modules())
        for kind in KINDS:
            site = ad.channel_site(i, kind)
            assert site.index.shape == (counts[kind],)
            assert site.index.unique().numel() == counts[kind]  # no channel counted twice
            assert site.on_input == (kind == "ffn")
        fused = [ad.channel_site(i, k) for k in ("q", "k", "v")]
        if fused[0].module is fused[1].module:  # one fused projection: q, k, v disjoint
            assert torch.cat([s.index for s in fused]).unique().numel() == sum(s.index.numel() for s in fused)
        ffn_in = ad.ffn_in_sites(i)
        assert set(ffn_in) in ({"up"}, {"gate", "up"}) and set(ffn_in) == set(ad.ffn_in_modules(i))
        for cs in ffn_in.values():
            assert cs.index.shape == (ad.ffn_size,)
        if len(ffn_in) == 2 and ffn_in["gate"].module is ffn_in["up"].module:  # fused gate_up: disjoint halves
            assert torch.cat([cs.index for cs in ffn_in.values()]).unique().numel() == 2 * ad.ffn_size
        assert ad.scaling(i) > 0
        assert 0 <= ad.rotary_dim(i) <= d and ad.rotary_dim(i) % 2 == 0
        assert (ad.rotary_dim(i) > 0) == ad.uses_rope(i)
        assert ad.qk_norm_scope(i) in ("head", "projection")
        window = ad.sliding_window(i)
        assert window is None or window > 0
        qn, kn = ad.qk_norms(i)
        assert (qn is None) == (kn is None) == (ad.qk_norm_eps(i) is None)
    fp = ad.fingerprint()
    assert fp["neurons_per_layer"] == counts


def test_body_gives_the_last_hidden_state(tiny64):
    model, tok = tiny64
    ad = get_adapter(model)
    batch = _batch(tok, "right")
    kw = ad.forward_kwargs(batch["attention_mask"])
    with torch.no_grad():
        full = model(**batch, **kw, output_hidden_states=True)
        body = ad.body(**batch, **kw)
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(body.last_hidden_state[valid], full.hidden_states[-1][valid], rtol=0, atol=0)


def _capture_layer(model, batch, layer):
    """Run the model; return the attention context, raw q/k/v per kind and the real o_proj output."""
    ad = get_adapter(model)
    got: dict = {}
    handles = []

    def pre(module, args, kwargs):
        got["ctx"] = ad.attention_context(layer, args, kwargs)

    def keep(name):
        def hook(module, args, output):
            got[name] = output

        return hook

    try:
        handles.append(ad.attention(layer).register_forward_pre_hook(pre, with_kwargs=True))
        for kind in ("q", "k", "v"):
            handles.append(ad.channel_site(layer, kind).module.register_forward_hook(keep(kind)))
        handles.append(ad.o_proj(layer).register_forward_hook(keep("o")))
        with torch.no_grad():
            ad.body(**batch, **ad.forward_kwargs(batch["attention_mask"]))
    finally:
        for h in handles:
            h.remove()
    return got


def _heads(ad, raw: torch.Tensor, kind: str, layer: int) -> torch.Tensor:
    site = ad.channel_site(layer, kind)
    B, L, _ = raw.shape
    return raw[..., site.index].view(B, L, -1, ad.head_dim).transpose(1, 2)


@pytest.mark.parametrize("side", ["right", "left"])
def test_recomputed_attention_matches_the_model(tiny64, tiny32, side):
    model, tok = tiny64 if side == "right" else tiny32
    tol = 1e-6 if side == "right" else 1e-4  # float64 (softmax in float32 inside eager) | float32
    ad = get_adapter(model)
    batch = _batch(tok, side)
    am = batch["attention_mask"]
    assert am.shape[1] > 8 + 4  # longer than the tiny models' sliding window
    valid = am.bool()
    for layer in range(ad.num_layers):
        got = _capture_layer(model, batch, layer)
        ctx: AttentionContext = got["ctx"]
        q, k, v = (_heads(ad, got[kind], kind, layer) for kind in ("q", "k", "v"))
        q, k, v = (ad.apply_qk_norm(layer, which, x) for which, x in enumerate((q, k, v)))
        q, k = ad.apply_rope(q, ctx), ad.apply_rope(k, ctx)
        s = ad.scores(layer, q, k, ctx)
        mask = attention_mask(am, ad.sliding_window(layer))
        p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
        o = p @ v.repeat_interleave(ad.kv_group_size, dim=1)
        B, H, L, d = o.shape
        out = ad.o_proj(layer)(o.transpose(1, 2).reshape(B, L, H * d))
        # eager attention takes its softmax in float32 even for float64 models: 1e-6, not 1e-12
        torch.testing.assert_close(out[valid], got["o"][valid], rtol=tol, atol=tol)

        # one KV group at a time (what importance does) gives the same scores
        G = ad.kv_group_size
        for g in range(ad.num_kv_heads):
            heads = slice(g * G, (g + 1) * G)
            sg = ad.scores(layer, q[:, heads], k[:, g : g + 1], ctx, heads=heads)
            torch.testing.assert_close(sg, s[:, heads], rtol=0, atol=0)


def test_layer_parts_add_up_to_the_layer_output(tiny64):
    """layer.out == combine(layer.in, o.out, ffn.out) in every layer (sequential, parallel,
    post-norm, multiplier variants), the layer-0 input is the embedding site's value, and the
    final norm reads the last layer's output."""
    model, tok = tiny64
    errors = layer_parity(model, _batch(tok, "right"))
    assert len(errors) == get_adapter(model).num_layers + 2
    bad = {k: v for k, v in errors.items() if not v <= 1e-12}
    assert not bad, bad


def test_embed_site_is_the_first_hidden_state(tiny64):
    from mwork.hooks import Hooks

    model, tok = tiny64
    ad = get_adapter(model)
    batch = _batch(tok, "right")
    got = {}
    with torch.no_grad(), Hooks().read(ad.embed_site, lambda h: got.__setitem__("h", h.clone())):
        states = model(**batch, output_hidden_states=True).hidden_states
    torch.testing.assert_close(got["h"], states[0], rtol=0, atol=0)


def test_padding_side_does_not_change_hidden_states(tiny32):
    model, tok = tiny32
    ad = get_adapter(model)
    states = {}
    for side in ("left", "right"):
        batch = _batch(tok, side)
        with torch.no_grad():
            h = ad.body(**batch, **ad.forward_kwargs(batch["attention_mask"])).last_hidden_state
        states[side] = [h[b][batch["attention_mask"][b].bool()] for b in range(h.shape[0])]
    for left, right in zip(states["left"], states["right"]):
        torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-4)
