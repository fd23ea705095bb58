"""Neuron importance against brute force, on a tiny model of every supported family, in float64.

Brute force = what Eq. 1 says, the slow way: zero ONE channel with a hook (rows of one batch
zero different channels), rerun the model, and measure the change of the block output
(FFN: the down projection's output; V: the attention output) or, for Q and K, of the
attention probabilities, recomputed in float64 from the q/k the rerun model produced with the
channel zeroed. Documents run unpadded here, so padding handling is checked too.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from mwork.models.adapters import KINDS, attention_mask, get_adapter
from mwork.models.tiny import TINY_ALIASES
from mwork.neurons.brute_force import brute_force
from mwork.neurons.importance import importance, qk_paths, spearman, top_overlap
from mwork.neurons.qk_kernel import ChannelChange, GroupScores, native_library, prob_change

# 43 and 25 tokens: longer than the tiny models' sliding window (8), different lengths
TEXTS = [
    "The quick brown fox jumps over the lazy dog. Le renard brun saute par-dessus le chien.",
    "Быстрая коричневая лиса прыгает.",
]
TOL = 1e-6
# families whose QK-norm is not of a form the exact Q/K path handles (a LayerNorm one): generic
GENERIC_QK = {"persimmon"}
# MPT's own attention adds an ALiBi table offset by the batch's length and takes its softmax in
# float32: a document alone and in a longer batch differ in the model itself by ~1e-7
BATCH_LENGTH_DEPENDENT = {"mpt"}


@pytest.fixture(scope="module", params=TINY_ALIASES)
def case(request, tiny_models):
    """(model, tokenizer, left-padded batch, brute-force importances per (doc, layer, kind))."""
    model, tok = tiny_models.shared(request.param, torch.float64)
    tok.padding_side = "left"
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    ad = get_adapter(model)
    brute = {}
    for b, text in enumerate(TEXTS):
        ids = torch.tensor(tok(text).input_ids)
        for layer in range(ad.num_layers):
            for kind in KINDS:
                brute[b, layer, kind] = brute_force(model, ids, layer, kind)
    return model, tok, batch, brute


def _check(result: dict[str, torch.Tensor], brute: dict, kinds=KINDS) -> None:
    for (b, layer, kind), want in brute.items():
        if kind not in kinds:
            continue
        got = result[kind][b, layer]
        err = float((got - want).abs().max() / want.abs().max())
        assert err <= TOL, f"{kind} layer {layer} doc {b}: relative error {err:.2e}"


def test_exact_matches_brute_force(case):
    model, tok, batch, brute = case
    ad = get_adapter(model)
    paths = qk_paths(model)
    generic = model.config.model_type in GENERIC_QK
    assert all(p.startswith("generic (") for p in paths.values()) if generic else set(paths.values()) == {"exact"}, paths
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = importance(model, batch)
    # the fast path applies to every family but the documented ones, which warn and say why
    warned = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert bool(warned) == generic and all("generic path" in w for w in warned), warned
    assert result.qk_paths == paths
    counts = ad.neuron_counts()
    assert set(result) == set(KINDS)
    for kind in KINDS:
        assert result[kind].shape == (len(TEXTS), ad.num_layers, counts[kind])
        assert result[kind].dtype == torch.float64 and result[kind].device.type == "cpu"
    assert int(batch["attention_mask"].sum(1).min()) > 8  # longer than the sliding windows
    _check(result, brute)


def test_generic_and_torch_paths_match_brute_force(case):
    model, tok, batch, brute = case
    _check(importance(model, batch, kinds=("q", "k"), method="generic", chunk_size=7), brute, ("q", "k"))
    _check(importance(model, batch, kinds=("q", "k"), backend="torch", chunk_size=5), brute, ("q", "k"))


def test_padding_side_and_kind_subsets_do_not_change_results(case):
    model, tok, batch, _ = case
    left = importance(model, batch)
    tok.padding_side = "right"
    right = importance(model, tok(TEXTS, return_tensors="pt", padding=True))
    single = importance(model, tok(TEXTS[1:], return_tensors="pt"), kinds=("v", "k"))
    for kind in KINDS:
        torch.testing.assert_close(left[kind], right[kind], rtol=1e-12, atol=0)
    assert set(single) == {"v", "k"}
    rtol = 1e-6 if model.config.model_type in BATCH_LENGTH_DEPENDENT else 1e-10
    for kind in ("v", "k"):
        torch.testing.assert_close(single[kind][0], left[kind][1], rtol=rtol, atol=1e-14)


# ---- the Q/K kernel on its own, including its exact double-precision redo path ----------------


def _kernel_case(kind: str, n: int, d: int, G: int, dtype, cap, window, scale: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    s = rnd(G, n, n) * 2
    t = cap * torch.tanh(s / cap) if cap else s
    i = torch.arange(n)
    lo = (i - window + 1).clamp(min=0) if window else torch.zeros(n, dtype=torch.long)
    hi = i + 1
    visible = (i[None] >= lo[:, None]) & (i[None] < hi[:, None])
    lse = torch.logsumexp(t.masked_fill(~visible, float("-inf")), -1)
    p = torch.exp(t - lse[..., None]).masked_fill(~visible, 0)
    coef_shape = (G, n, d) if kind == "q" else (n, d)
    U = torch.rand(*coef_shape, generator=g, dtype=torch.float64) * 0.1 * min(1.0, scale)
    A, B, W = rnd(*coef_shape) * scale, rnd(*coef_shape) * scale, 1 + U
    X = rnd(n, d) if kind == "q" else rnd(G, n, d)
    partner = torch.randperm(d, generator=g)
    args = [x.to(dtype) for x in (s, t if cap else s, p, lse)] + [lo, hi] + [x.to(dtype) for x in (A, B, U, W, X)] + [partner]
    if not cap:
        args[1] = args[0]  # "t is s" without capping
    return args, visible


def _kernel_brute(kind: str, args, visible, cap) -> torch.Tensor:
    s, t, p, lse, lo, hi, A, B, U, W, X, partner = args
    s, A, B, U, W, X = (x.double() for x in (s, A, B, U, W, X))
    G, n, _ = s.shape
    out = torch.zeros(G, len(partner), n, dtype=torch.float64)
    before = torch.softmax((cap * torch.tanh(s / cap) if cap else s).masked_fill(~visible, float("-inf")), -1)
    for h in range(G):
        for c in range(len(partner)):
            pc = partner[c]
            if kind == "q":
                d = U[h][:, c, None] * s[h] + W[h][:, c, None] * (A[h][:, c, None] * X[None, :, c] + B[h][:, c, None] * X[None, :, pc])
            else:
                d = U[None, :, c] * s[h] + W[None, :, c] * (A[None, :, c] * X[h][:, c, None] + B[None, :, c] * X[h][:, pc, None])
            new = s[h] - d
            new = cap * torch.tanh(new / cap) if cap else new
            after = torch.softmax(new.masked_fill(~visible, float("-inf")), -1)
            out[h, c] = (after - before[h]).square().sum(-1)
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["q", "k"])
@pytest.mark.parametrize("cap", [None, 5.0])
# 0.01 / 0.3: small changes (the kernel's polynomial-only tiers), 40: large enough for the exact redo
@pytest.mark.parametrize("scale", [0.01, 0.3, 40.0])
def test_kernel_matches_brute_force(dtype, kind, cap, scale):
    args, visible = _kernel_case(kind, 37, 6, 2, dtype, cap, window=8 if kind == "k" else None, scale=scale)
    want = _kernel_brute(kind, args, visible, cap)
    tol = 1e-9 if dtype == torch.float64 else 3e-3
    backends = ["torch"] + (["native"] if native_library() is not None else [])
    for backend in backends:
        for redo in (False, True) if backend == "native" else (False,):
            got = prob_change(GroupScores(*args[:6], cap=cap), ChannelChange(kind, *args[6:]), backend=backend,
                              force_redo=redo, chunk=4)
            err = float(((got.double() - want).abs() / want.clamp(min=1e-300)).max())
            assert err < tol, f"{backend} redo={redo}: relative error {err:.1e}"


# ---- contract details -----------------------------------------------------------------------


def test_bad_input_is_a_clear_error(shared_tiny):
    model, tok = shared_tiny("tiny-random-llama")
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="kinds"):
        importance(model, batch, kinds=("mlp",))
    with pytest.raises(ValueError, match="method"):
        importance(model, batch, method="fast")
    empty = dict(batch, attention_mask=batch["attention_mask"].clone())
    empty["attention_mask"][1] = 0
    with pytest.raises(ValueError, match="document 1 .* no tokens"):
        importance(model, empty)
    holes = dict(batch, attention_mask=torch.ones_like(batch["input_ids"]))
    holes["attention_mask"][0, 3] = 0
    with pytest.raises(ValueError, match="holes"):
        importance(model, holes)


def test_bfloat16_model_reduces_in_float32(shared_tiny):
    model, tok = shared_tiny("tiny-random-gemma3", torch.bfloat16)
    ref, _ = shared_tiny("tiny-random-gemma3", torch.float32)
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    got, want = importance(model, batch), importance(ref, batch)
    for kind in KINDS:
        assert got[kind].dtype == torch.float32 and torch.isfinite(got[kind]).all()
        assert spearman(got[kind], want[kind]) > 0.95


def test_approx_ranks_like_exact(shared_tiny):
    model, tok = shared_tiny("tiny-random-llama", torch.float64)
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    exact = importance(model, batch, kinds=("q", "k"))
    approx = importance(model, batch, kinds=("q", "k"), method="approx")
    for kind in ("q", "k"):
        assert spearman(approx[kind], exact[kind]) > 0.98
        assert top_overlap(approx[kind], exact[kind], 20) >= 0.8


# ---- the reference code's scores (comparison only) -----------------------------------------------


@pytest.mark.parametrize("alias", ["tiny-random-llama", "tiny-random-qwen3", "tiny-random-gemma2", "tiny-random-bloom"])
def test_reference_scores_match_the_reference_way(alias, shared_tiny):
    from mwork.neurons.reference import reference_importance, reference_way

    model, tok = shared_tiny(alias, torch.float64)
    ad = get_adapter(model)
    tok.padding_side = "left"
    got = reference_importance(model, tok(TEXTS, return_tensors="pt", padding=True))
    G = ad.kv_group_size
    for b, text in enumerate(TEXTS):
        want = reference_way(model, tok(text, return_tensors="pt").input_ids)
        for layer in range(ad.num_layers):
            ref = {k: torch.tensor(want[k][layer], dtype=torch.float64) for k in KINDS}
            torch.testing.assert_close(got["ffn"][b, layer], ref["ffn"], rtol=1e-10, atol=0)
            torch.testing.assert_close(got["q"][b, layer], ref["q"], rtol=1e-5, atol=1e-9)  # float32 softmax there
            torch.testing.assert_close(got["k"][b, layer], ref["k"].reshape(-1, G, ad.head_dim).sum(1).reshape(-1),
                                       rtol=1e-5, atol=1e-9)
            torch.testing.assert_close(got["v"][b, layer], ref["v"].reshape(-1, G, ad.head_dim).sum(1).reshape(-1),
                                       rtol=1e-10, atol=0)


def test_bench_reports_every_field(tmp_path):
    from mwork.neurons.bench import BenchConfig, run_bench

    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    out = run_bench(BenchConfig(model="tiny-random-gemma3", seq_len=20, docs=3, batch_size=2, texts=str(texts),
                                repeats=1, memory=False), log=lambda msg: None)
    for key in ("forward_s", "importance_s", "ffn_v_s", "reference_s", "overhead", "speedup_vs_reference",
                "peak_mem_forward_mb", "peak_mem_importance_mb", "approx_q_spearman", "approx_k_top1pct_overlap"):
        assert key in out
    assert out["reference_status"] == "measured" and out["reference_s"] > 0 and out["importance_s"] > 0


def test_bench_cli_prints_json_last(capsys):
    from mwork.cli import main

    assert main(["bench", "detect", "--model", "tiny-random-llama", "--seq-len", "16", "--docs", "2",
                 "--repeats", "1", "--no-memory", "--no-approx"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["seq_len"] == 16 and result["overhead"] > 0 and result["speedup_vs_reference"] > 0
    assert main(["bench", "detect", "--model", "tiny-random-llama", "--seq-len", "1"]) == 2  # a clear error


@pytest.mark.parametrize("alias", ["tiny-random-llama", "tiny-random-qwen3"])
def test_approx_is_the_first_order_formula(alias, shared_tiny):
    """method="approx" = ||P * (D - rowsum(P * D))||^2 with D the exact score change of each
    zeroed channel (computed here by recomputing the scores), summed over the heads it feeds."""
    from mwork.models.adapters import AttentionContext

    model, tok = shared_tiny(alias, torch.float64)
    ad = get_adapter(model)
    ids = tok(TEXTS[1], return_tensors="pt").input_ids
    n, layer = ids.shape[1], 1
    approx = importance(model, {"input_ids": ids}, kinds=("q", "k"), method="approx")
    got: dict = {}
    handles = [ad.attention(layer).register_forward_pre_hook(
        lambda m, a, kw: got.update(ctx=ad.attention_context(layer, a, kw)), with_kwargs=True)]
    for k in ("q", "k"):
        handles.append(ad.channel_site(layer, k).module.register_forward_hook(lambda m, a, o, k=k: got.update({k: o})))
    try:
        with torch.no_grad():
            ad.body(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    ctx: AttentionContext = got["ctx"]
    raw = {k: got[k][..., ad.channel_site(layer, k).index].view(1, n, -1, ad.head_dim).transpose(1, 2) for k in ("q", "k")}
    mask = attention_mask(torch.ones(1, n, dtype=torch.long), ad.sliding_window(layer))

    def scores(q, k):
        qn, kn = ad.qk_norms(layer)
        if qn is not None:
            q, k = qn(q), kn(k)
        with torch.no_grad():
            return ad.scores(layer, ad.apply_rope(q, ctx), ad.apply_rope(k, ctx), ctx).masked_fill(~mask, 0)

    S = scores(raw["q"], raw["k"])
    P = torch.softmax(S.masked_fill(~mask, float("-inf")), -1)
    for kind in ("q", "k"):
        want = []
        for c in range(ad.neuron_counts()[kind]):
            zq, zk = raw["q"].clone(), raw["k"].clone()
            target = zq if kind == "q" else zk
            target[:, c // ad.head_dim, :, c % ad.head_dim] = 0
            D = S - scores(zq, zk)
            dP = P * (D - (P * D).sum(-1, keepdim=True))
            want.append(dP.square().sum())
        torch.testing.assert_close(approx[kind][0, layer], torch.stack(want).sqrt(), rtol=1e-6, atol=1e-12)


def test_long_documents_take_heads_in_chunks(monkeypatch, shared_tiny):
    import mwork.neurons.qk_paths as imp

    model, tok = shared_tiny("tiny-random-llama", torch.float64)  # 2 heads per KV group
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    whole = importance(model, batch, kinds=("q", "k"))
    monkeypatch.setattr(imp, "SCORE_ELEMENTS", 1)  # one query head at a time
    chunked = importance(model, batch, kinds=("q", "k"))
    for kind in ("q", "k"):
        torch.testing.assert_close(chunked[kind], whole[kind], rtol=1e-12, atol=0)
