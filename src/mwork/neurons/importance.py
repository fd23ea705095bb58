"""Neuron importance in one forward pass (PLND, Eq. 1): Imp(N | document) = ||T\\N(h) - T(h)||.

For each document of a batch and every neuron, how much the output of its block changes when
the neuron alone is zeroed, as a norm over the document's tokens (padding excluded):

* ``ffn`` neuron k: ||h_ffn[:, k]|| * ||W_down[:, k]||, exact (the down projection is linear).
* ``v`` channel c: the change of the attention output (o_proj's output) when v[:, c] = 0,
  i.e. -sum over the query heads h of its KV group of (P_h v_c) W_O[:, h, c]; Frobenius norm
  over (tokens, hidden). ``P_h v_c`` is column c of head h's attention output, read at the
  o_proj input, so this is exact and costs no recomputation.
* ``q`` / ``k`` channel c (Eq. 8): ||softmax(S') - softmax(S)||_F over (query tokens x keys)
  of every head the channel feeds (one head for Q; every query head of the KV group for K),
  S' being the model's real scores with the channel zeroed before QK-norm and RoPE, through
  QK-norm, RoPE, scaling, ALiBi, soft-capping, causal and sliding-window masks.

Q/K, three methods. ``"exact"`` (default) uses the structure of the score function: zeroing one
raw channel changes post-RoPE q by a vector with at most two non-zeros (rotate-half RoPE pairs
channel c with one partner) times a per-token factor (RMS QK-norm rescales the rest of the
head exactly by rms/rms'), so S' = r * (S - rank-2 update) and each channel costs O(l^2)
(``qk_kernel``), exact up to float rounding. Anything that breaks those assumptions (checked
numerically per layer: RoPE pairing, QK-norm form, a custom score function) falls back to
``"generic"``: the real score function recomputed for every zeroed channel, chunked, memory
O(chunk * l^2); exact and slow, also the cross-check in the tests. ``"approx"``: the first-order
change dP = -P * (D - rowsum(P * D)), cheap matmuls with P^2; agreement with exact is measured
by the benchmark.

Reductions run in float32 (float64 for float64 models), whatever the model's dtype. Documents
are packed to the left of their row and run with an all-ones mask: a causal model never lets a
token see what lies to its right, so this equals the padded batch for every real token, makes
the result independent of the padding side, and avoids the NaN that fully masked padded rows
give in float64 eager attention.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mwork.models.adapters import KINDS, Adapter, AttentionContext, attention_mask, get_adapter
from mwork.models.loading import input_device
from mwork.neurons.qk_kernel import prob_change

METHODS = ("exact", "generic", "approx")


def importance(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    kinds: Sequence[str] = KINDS,
    *,
    method: str = "exact",
    chunk_size: int = 16,
    backend: str = "auto",
) -> dict[str, torch.Tensor]:
    """Imp(N | document) for every neuron of the requested ``kinds`` and every document.

    ``batch``: the tokenizer's output (``input_ids``, ``attention_mask``), padded on either
    side. Returns ``{kind: tensor (documents, layers, neurons of that kind)}`` on the CPU, in
    float32 (float64 for a float64 model). ``method``: ``"exact"`` | ``"generic"`` |
    ``"approx"`` for Q/K (see the module docstring); ``chunk_size``: channels per chunk of the
    torch and generic paths; ``backend``: ``"auto"`` | ``"native"`` | ``"torch"`` for the exact
    Q/K kernel. The LM head never runs.
    """
    kinds = tuple(dict.fromkeys(kinds))
    if not kinds or set(kinds) - set(KINDS):
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    adapter = get_adapter(model)
    ids, lengths = _pack(batch)
    ids = ids.to(input_device(model))
    dtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    counts = adapter.neuron_counts()
    out = {k: torch.zeros(len(lengths), adapter.num_layers, counts[k], dtype=dtype) for k in kinds}
    run = _Run(adapter, lengths, dtype, out, method, chunk_size, backend)
    handles = []
    try:
        for layer in range(adapter.num_layers):
            handles += run.register(layer)
        ones = torch.ones_like(ids)
        with torch.inference_mode():
            adapter.body(input_ids=ids, attention_mask=ones, use_cache=False, **adapter.forward_kwargs(ones))
    finally:
        for h in handles:
            h.remove()
    missing = sorted(run.expected - run.done)
    if missing:
        raise RuntimeError(
            f"importance: hooks did not fire for {missing[:5]} (layer, kind); the model's forward "
            "bypasses the modules its adapter names"
        )
    return out


def _pack(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """Each document's tokens moved to the start of its row; returns (ids, lengths)."""
    if "input_ids" not in batch:
        raise ValueError("batch must hold 'input_ids' (and 'attention_mask'): pass the tokenizer's output")
    ids = torch.as_tensor(batch["input_ids"])
    if ids.dim() == 1:
        ids = ids[None]
    mask = batch.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask).reshape(ids.shape)
    mask = mask.bool().cpu()
    packed = torch.zeros_like(ids)
    lengths = []
    for b in range(ids.shape[0]):
        where = mask[b].nonzero().flatten()
        if where.numel() == 0:
            raise ValueError(f"document {b} of the batch has no tokens (its attention_mask is all zero)")
        n = int(where.numel())
        if int(where[-1] - where[0]) + 1 != n:
            raise ValueError(f"document {b}: its attention_mask has holes; pad on the left or the right only")
        packed[b, :n] = ids[b, where.to(ids.device)]
        lengths.append(n)
    return packed[:, : max(lengths)], lengths


# ---- per-layer work, driven by hooks ------------------------------------------------------


@dataclass
class _Run:
    adapter: Adapter
    lengths: list[int]
    dtype: torch.dtype
    out: dict[str, torch.Tensor]
    method: str
    chunk_size: int
    backend: str

    def __post_init__(self) -> None:
        self.expected: set[tuple[int, str]] = set()
        self.done: set[tuple[int, str]] = set()
        self.captured: dict[str, object] = {}
        self.warned: set[str] = set()
        self.cache: dict = {}  # RoPE tables and QK-norm checks shared by layers and documents

    def register(self, layer: int) -> list:
        ad, kinds, handles = self.adapter, self.out.keys(), []
        if "ffn" in kinds:
            self.expected.add((layer, "ffn"))
            w = _cached(ad.mlp_down(layer).weight, ("down_norm", self.dtype),
                        lambda: ad.down_weight(layer).detach().to(self.dtype).square().sum(0).sqrt().cpu())

            def ffn(module, args, layer=layer, w=w):
                self._ffn(layer, args[0], w)

            handles.append(ad.mlp_down(layer).register_forward_pre_hook(ffn))
        if "v" in kinds:
            self.expected.add((layer, "v"))
            wgram = _cached(ad.o_proj(layer).weight, ("o_gram", self.dtype), lambda: _o_gram(ad, layer, self.dtype))

            def v(module, args, layer=layer, wgram=wgram):
                self._v(layer, args[0], wgram)

            handles.append(ad.o_proj(layer).register_forward_pre_hook(v))
        if "q" in kinds or "k" in kinds:
            for kind in ("q", "k"):
                if kind in kinds:
                    self.expected.add((layer, kind))

            def ctx_hook(module, args, kwargs, layer=layer):
                self.captured["ctx"] = ad.attention_context(layer, args, kwargs)

            def after(module, args, output, layer=layer):
                try:
                    self._qk(layer)
                finally:
                    self.captured.clear()

            handles.append(ad.attention(layer).register_forward_pre_hook(ctx_hook, with_kwargs=True))
            for kind in ("q", "k"):
                module = ad.channel_site(layer, kind).module

                def keep(module, args, output, kind=kind):
                    self.captured[kind] = output

                handles.append(module.register_forward_hook(keep))
            handles.append(ad.attention(layer).register_forward_hook(after))
        return handles

    # -- FFN: ||h_ffn[:, k]|| * ||W_down[:, k]|| --
    def _ffn(self, layer: int, h: torch.Tensor, wnorm: torch.Tensor) -> None:
        for b, n in enumerate(self.lengths):
            self.out["ffn"][b, layer] = h[b, :n].to(self.dtype).square().sum(0).sqrt().cpu() * wnorm
        self.done.add((layer, "ffn"))

    # -- V: ||sum_h (P_h v_c) W_O[:, h, c]||_F from the o_proj input --
    def _v(self, layer: int, o_in: torch.Tensor, wgram: torch.Tensor) -> None:
        ad = self.adapter
        Hkv, G, d = ad.num_kv_heads, ad.kv_group_size, ad.head_dim
        for b, n in enumerate(self.lengths):
            z = o_in[b, :n].to(self.dtype).reshape(n, Hkv, G, d)
            imp2 = torch.zeros(Hkv, d, dtype=self.dtype, device=z.device)
            for r in range(G):  # sum over head pairs (r, s) of (z_r . z_s over tokens) (w_r . w_s)
                for s in range(r, G):
                    zz = (z[:, :, r] * z[:, :, s]).sum(0)
                    imp2 += (1 if r == s else 2) * wgram[:, :, r, s].to(z.device) * zz
            imp2 = imp2.clamp(min=0)
            self.out["v"][b, layer] = imp2.sqrt().reshape(-1).cpu()
        self.done.add((layer, "v"))

    # -- Q/K --
    def _qk(self, layer: int) -> None:
        ad, cap = self.adapter, self.captured
        if "ctx" not in cap or any(k not in cap for k in ("q", "k")):
            raise RuntimeError(f"layer {layer}: the attention inputs or the q/k projections were not captured")
        ctx: AttentionContext = cap["ctx"]  # type: ignore[assignment]
        B = ctx.hidden_states.shape[0]
        Hkv, G, d = ad.num_kv_heads, ad.kv_group_size, ad.head_dim
        want = [k for k in ("q", "k") if k in self.out]
        method, layout = self.method, None
        if method in ("exact", "approx"):
            layout = _Layout.probe(ad, layer, ctx, cap["q"], cap["k"], self.dtype, self.cache)
            if layout.problem:
                if layout.problem not in self.warned:
                    self.warned.add(layout.problem)
                    warnings.warn(f"mwork.importance: {layout.problem}; using the slow generic path", stacklevel=2)
                method = "generic"
        for b, n in enumerate(self.lengths):
            dctx = _doc_context(ctx, b, n, B, self.dtype)
            q_raw = _heads(ad, layer, "q", cap["q"], b, n, self.dtype)  # (H, n, d)
            k_raw = _heads(ad, layer, "k", cap["k"], b, n, self.dtype)  # (Hkv, n, d)
            lay = layout.for_document(dctx, n) if layout is not None else None
            imp = {k: torch.zeros(self.out[k].shape[-1], dtype=self.dtype) for k in want}
            for g in range(Hkv):
                heads = slice(g * G, (g + 1) * G)
                args = (ad, layer, q_raw[heads], k_raw[g : g + 1], heads, want)
                if method == "generic":
                    res = _generic_group(*args, dctx, self.chunk_size)
                elif method == "exact":
                    res = _exact_group(*args, lay, self.backend, self.chunk_size)
                else:
                    res = _approx_group(*args, lay)
                if "q" in res:
                    imp["q"][g * G * d : (g + 1) * G * d] = res["q"].reshape(-1).cpu()
                if "k" in res:
                    imp["k"][g * d : (g + 1) * d] = res["k"].cpu()
            for k in want:
                self.out[k][b, layer] = imp[k].clamp(min=0).sqrt()
        for k in want:
            self.done.add((layer, k))


def _gram(x: torch.Tensor) -> torch.Tensor:
    """x (rows, Hkv, G, d) -> (Hkv * d, G, G): for each KV channel, the Gram matrix over rows of
    the G query heads' columns."""
    rows, Hkv, G, d = x.shape
    x = x.permute(1, 3, 2, 0).reshape(Hkv * d, G, rows)
    return torch.bmm(x, x.transpose(1, 2))


def _o_gram(ad: Adapter, layer: int, dtype: torch.dtype) -> torch.Tensor:
    """(Hkv, d, G, G): dot products of the W_O columns that one V channel writes through."""
    w = ad.o_weight(layer).detach().to(dtype)
    gram = _gram(w.reshape(w.shape[0], ad.num_kv_heads, ad.kv_group_size, ad.head_dim))
    return gram.reshape(ad.num_kv_heads, ad.head_dim, ad.kv_group_size, ad.kv_group_size).cpu()


_WEIGHT_CACHE: dict[int, dict] = {}  # id(weight) -> {key: value}; entries die with the weight


def _cached(param: torch.Tensor, tag: tuple, compute):
    """Something derived from a weight, recomputed only when the weight changes (its version)."""
    if id(param) not in _WEIGHT_CACHE:
        _WEIGHT_CACHE[id(param)] = {}
        weakref.finalize(param, _WEIGHT_CACHE.pop, id(param), None)
    entry = _WEIGHT_CACHE[id(param)]
    key = (tag, param._version, param.data_ptr())
    if key not in entry:
        if len(entry) > 8:
            entry.clear()
        entry[key] = compute()
    return entry[key]


def _heads(ad: Adapter, layer: int, kind: str, raw: torch.Tensor, b: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Raw (pre-norm, pre-RoPE) channels of ``kind`` for document ``b`` as (heads, n, d)."""
    index = ad.channel_site(layer, kind).index
    start = int(index[0])
    if torch.equal(index, torch.arange(start, start + len(index))):  # a plain slice: no gather
        x = raw[b, :n, start : start + len(index)].to(dtype)
    else:
        x = raw[b, :n][:, index.to(raw.device)].to(dtype)
    return x.reshape(n, -1, ad.head_dim).transpose(0, 1).contiguous()


def _doc_context(ctx: AttentionContext, b: int, n: int, B: int, dtype: torch.dtype) -> AttentionContext:
    """The attention context of one document's first ``n`` tokens, as a batch of one."""

    def pick(x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None:
            return None
        x = x[b : b + 1] if x.shape[0] == B else x
        return x[:, :n].to(dtype)

    alibi = None
    if ctx.alibi is not None:  # (B * H, 1, L) -> (H, 1, n)
        a = ctx.alibi.reshape(B, -1, *ctx.alibi.shape[1:])[b]
        alibi = a[..., :n].to(dtype).contiguous()
    return AttentionContext(hidden_states=ctx.hidden_states[b : b + 1, :n], cos=pick(ctx.cos), sin=pick(ctx.sin), alibi=alibi)


def _norm_rope(ad: Adapter, layer: int, ctx: AttentionContext, x: torch.Tensor, which: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (..., heads, n, d) -> (after QK-norm, after QK-norm and RoPE)."""
    norm = ad.qk_norms(layer)[which]
    y = norm(x) if norm is not None else x
    squeeze = y.dim() == 3
    y4 = y[None] if squeeze else y
    r = ad.apply_rope(y4, ctx)
    return y, (r[0] if squeeze else r)


def _visible(ad: Adapter, layer: int, n: int, device, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal + sliding-window key range [lo, hi) per query row, and the (n, width) boolean mask
    (``width`` >= n pads with masked columns)."""
    window = ad.sliding_window(layer)
    mask = attention_mask(torch.ones(1, n, dtype=torch.long, device=device), window)[0, 0]
    if width is not None and width > n:
        mask = torch.nn.functional.pad(mask, (0, width - n), value=False)
    i = torch.arange(n, device=device)
    lo = (i - window + 1).clamp(min=0) if window else torch.zeros_like(i)
    return lo, i + 1, mask


def _softmax_stats(t: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked softmax of (..., n, n) scores: (P, log-sum-exp per row, most attended key per row)."""
    e = t.masked_fill(~mask, float("-inf"))
    m, top = e.max(-1, keepdim=True)
    e.sub_(m).exp_()
    z = e.sum(-1, keepdim=True)
    return e.div_(z), (m + z.log()).squeeze(-1), top.squeeze(-1)


# ---- exact, fast: rank-2 updates through the closed-form score change ---------------------


@dataclass
class _Layout:
    """Facts of the fast path for one layer: the RoPE of channel c at token i is
    alpha[i, c] e_c + beta[i, c] e_partner[c] (rotate-half pairs; pass-through channels:
    alpha = 1, beta = 0), and RMS QK-norm rescales the rest of a head exactly by rms / rms'."""

    alpha: torch.Tensor  # (L, d), for the batch's positions 0..L-1
    beta: torch.Tensor  # (L, d)
    partner: torch.Tensor  # (d,)
    eps: float | None  # QK-norm epsilon (None: no QK-norm)
    problem: str = ""
    ctx: AttentionContext | None = None  # set per document

    def for_document(self, ctx: AttentionContext, n: int) -> "_Layout":
        return _Layout(self.alpha[:n], self.beta[:n], self.partner, self.eps, self.problem, ctx)

    @staticmethod
    def probe(ad: Adapter, layer: int, ctx: AttentionContext, q_out: torch.Tensor, k_out: torch.Tensor, dtype, cache: dict) -> "_Layout":
        """Read the RoPE pairing off the model's own RoPE (probe vectors through
        ``adapter.apply_rope``) and check it, and the QK-norm form, on real vectors. Documents
        are packed from position 0, so every row of the batch shares the tables of row 0."""
        L, d = q_out.shape[1], ad.head_dim
        rot = ad.rotary_dim(layer) if ad.position_encoding == "rope" else 0
        first = _doc_context(ctx, 0, L, ctx.hidden_states.shape[0], dtype)
        key = ("rope", None if ctx.cos is None else (ctx.cos.data_ptr(), tuple(ctx.cos.shape)), rot, L, dtype)
        if key not in cache:
            half = rot // 2
            c = torch.arange(d)
            partner = torch.where(c < half, c + half, torch.where(c < rot, c - half, c))
            dev = q_out.device
            partner = partner.to(dev)
            probes = torch.zeros(3, L, d, dtype=dtype, device=dev)
            probes[0, :, :half] = 1
            probes[1, :, half:rot] = 1
            probes[2, :, rot:] = 1
            rotated = ad.apply_rope(probes[None], first)[0]  # (3, L, d)
            alpha = (rotated * probes).sum(0)
            beta = torch.zeros(L, d, dtype=dtype, device=dev)
            beta[:, :half] = rotated[0][:, half:rot]
            beta[:, half:rot] = rotated[1][:, :half]
            # the pairing must reproduce RoPE on real vectors, not only on the probes
            x = _heads(ad, layer, "q", q_out, 0, L, dtype)[:1]
            want = ad.apply_rope(x[None], first)[0]
            got = alpha * x + (beta * x)[..., partner]  # output k gets x_k and its partner's share
            tol = 1e-10 if dtype == torch.float64 else 1e-4
            ok = torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max().clamp(min=1)))
            problem = "" if ok else f"layer {layer}: RoPE is not rotate-half pairs"
            cache[key] = (alpha, beta, partner, problem, ctx.cos)  # holding cos keeps its address unique
        alpha, beta, partner, problem, _ = cache[key]
        layout = _Layout(alpha, beta, partner, ad.qk_norm_eps(layer), problem)
        if type(ad).scores is not Adapter.scores:
            layout.problem = f"layer {layer}: the adapter has its own score function"
        norms = ad.qk_norms(layer)
        if norms[0] is not None and not layout.problem:
            if layout.eps is None:
                layout.problem = f"layer {layer}: QK-norm of unknown epsilon"
            elif ad.score_bias(layer, first) is not None:
                layout.problem = f"layer {layer}: QK-norm together with a score bias"
            else:
                for which, (kind, out) in enumerate((("q", q_out), ("k", k_out))):
                    if ("norm", id(norms[which])) not in cache:
                        raw = _heads(ad, layer, kind, out, 0, min(L, 4), dtype)[0]
                        cache["norm", id(norms[which])] = _norm_is_rms(norms[which], raw, layout.eps, dtype)
                    if not cache["norm", id(norms[which])]:
                        layout.problem = f"layer {layer}: QK-norm is not y = g * x / sqrt(mean(x^2) + eps)"
        return layout


def _norm_is_rms(norm: nn.Module, x: torch.Tensor, eps: float, dtype) -> bool:
    """Whether zeroing channel c of x (tokens, d) gives norm(x') = (rms / rms') * (norm(x) with
    channel c zeroed), checked on the first channels."""
    chans = torch.arange(min(x.shape[-1], 3))
    xz = x[None].repeat(len(chans), 1, 1)
    xz[torch.arange(len(chans)), :, chans] = 0
    want = norm(xz)
    y = norm(x)[None].repeat(len(chans), 1, 1)
    y[torch.arange(len(chans)), :, chans] = 0
    r = _rms_ratio(x, eps)[1][:, chans].T[..., None]  # (chans, tokens, 1)
    tol = 1e-5  # norms may compute in float32 even for float64 models
    return torch.allclose(r * y, want, rtol=tol, atol=tol * float(want.abs().max().clamp(min=1)))


def _rms_ratio(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For (..., n, d) raw channels: (1 - r, r) with r[i, c] = rms(x_i) / rms(x_i with c zeroed)."""
    d = x.shape[-1]
    ms = x.square().mean(-1, keepdim=True) + eps
    u = x.square() / (d * ms)  # share of channel c in the mean square, < 1
    one_minus_r = -torch.expm1(-0.5 * torch.log1p(-u))
    return one_minus_r, 1 - one_minus_r


def _group_scores(ad: Adapter, layer: int, lay: _Layout, q_raw, k_raw, heads: slice, pad: bool = False):
    """Everything the closed-form paths share for one KV group of one document. ``pad``: score
    matrices (G, n, ld) with zero (and masked) columns up to ld, a multiple of 16, as the
    native kernel wants them (saves copies of l x l matrices)."""
    ctx = lay.ctx
    qy, Q = _norm_rope(ad, layer, ctx, q_raw, 0)  # (G, n, d) after QK-norm; after RoPE too
    ky, K = _norm_rope(ad, layer, ctx, k_raw, 1)  # (1, n, d)
    n, d = Q.shape[1:]
    ld = -(-n // 16) * 16 if pad else n
    KT = torch.zeros(d, ld, dtype=K.dtype, device=K.device)
    KT[:, :n] = K[0].T
    s = torch.matmul(Q, KT).mul_(ad.scaling(layer))  # (G, n, ld) pre-cap scores
    bias = ad.score_bias(layer, ctx, heads)
    if bias is not None:
        s[..., :n] += bias.reshape(-1, *bias.shape[-2:]).to(s.dtype)
    cap = ad.softcap(layer)
    t = cap * torch.tanh(s / cap) if cap else s
    lo, hi, mask = _visible(ad, layer, n, s.device, ld)
    P, lse, top = _softmax_stats(t, mask)
    if lay.eps is not None:
        uq, wq = _rms_ratio(q_raw, lay.eps)
        uk, wk = _rms_ratio(k_raw[0], lay.eps)
    else:
        uq, wq = torch.zeros_like(q_raw), torch.ones_like(q_raw)
        uk, wk = torch.zeros_like(k_raw[0]), torch.ones_like(k_raw[0])
    return dict(qy=qy, Q=Q, ky=ky[0], K=K[0], s=s, t=t, cap=cap, lo=lo, hi=hi, mask=mask, P=P, lse=lse,
                uq=uq, wq=wq, uk=uk, wk=wk, scale=ad.scaling(layer), top=top,
                sp2=torch.linalg.vector_norm(P, dim=-1).square(), smax=torch.maximum(s.amax(-1), -s.amin(-1)))


_SCORE_ELEMENTS = 2**24  # score matrices held at once: query heads of a group are taken in chunks


def _exact_group(ad: Adapter, layer: int, q_raw, k_raw, heads: slice, want, lay: _Layout, backend: str, chunk: int):
    """Exact Q/K importance (squared) of one KV group: {'q': (G, d), 'k': (d,)}. Zeroing raw
    channel c changes post-RoPE q_i by -r_i y_ic (alpha_ic e_c + beta_ic e_pc) and rescales the
    rest of the head by r_i = rms/rms' (1 without QK-norm), so the new scores are
    r_i (s_ij - scale y_ic (alpha_ic k_jc + beta_ic k_jpc)): see ``qk_kernel``. Long documents
    take the group's query heads a few at a time, so memory stays about 2^24 scores per matrix."""
    G, n, d = q_raw.shape
    step = max(1, min(G, _SCORE_ELEMENTS // (n * n)))
    q_out, k_out = torch.zeros(G, d, dtype=q_raw.dtype), torch.zeros(d, dtype=q_raw.dtype)
    for h0 in range(0, G, step):
        part = slice(heads.start + h0, heads.start + min(G, h0 + step))
        g = _group_scores(ad, layer, lay, q_raw[h0 : h0 + step], k_raw, part, pad=backend != "torch")
        al, be, pa, scale = lay.alpha, lay.beta, lay.partner, g["scale"]
        common = (g["s"], g["t"], g["P"], g["lse"], g["lo"], g["hi"])
        kw = dict(cap=g["cap"], backend=backend, chunk=chunk, top=g["top"], sp2=g["sp2"], smax=g["smax"])
        if "q" in want:
            qy = scale * g["qy"]
            rows = prob_change("q", *common, qy * al, qy * be, g["uq"], g["wq"], g["K"], pa, **kw)
            q_out[h0 : h0 + step] = rows.sum(-1).cpu()
        if "k" in want:
            ky = scale * g["ky"]
            rows = prob_change("k", *common, ky * al, ky * be, g["uk"], g["wk"], g["Q"], pa, **kw)
            k_out += rows.sum(-1).sum(0).cpu()  # every query head of the group
    return {k: v for k, v in (("q", q_out), ("k", k_out)) if k in want}


# ---- exact, generic: the real score function for every zeroed channel -----------------------


def _generic_group(ad: Adapter, layer: int, q_raw, k_raw, heads: slice, want, ctx: AttentionContext, chunk: int):
    """Squared Q/K importance of one KV group by recomputing the scores with each channel zeroed
    (chunks of ``chunk`` channels: memory O(chunk * G * n^2))."""
    G, n, d = q_raw.shape
    _, Q = _norm_rope(ad, layer, ctx, q_raw[None], 0)  # (1, G, n, d)
    _, K = _norm_rope(ad, layer, ctx, k_raw[None], 1)  # (1, 1, n, d)
    mask = attention_mask(torch.ones(1, n, dtype=torch.long, device=Q.device), ad.sliding_window(layer))
    P = torch.softmax(ad.scores(layer, Q, K, ctx, heads=heads).masked_fill(~mask, float("-inf")), dim=-1)
    res: dict[str, torch.Tensor] = {}

    def change(qz, kz) -> torch.Tensor:  # (C, G, n, n) -> squared Frobenius norm per (C, head)
        Pz = torch.softmax(ad.scores(layer, qz, kz, ctx, heads=heads).masked_fill(~mask, float("-inf")), dim=-1)
        return (Pz - P).square().sum((-1, -2))

    if "q" in want:
        out = torch.zeros(G, d, dtype=Q.dtype)
        for h in range(G):
            for c0 in range(0, d, chunk):
                cs = torch.arange(c0, min(d, c0 + chunk))
                raw = q_raw[None].repeat(len(cs), 1, 1, 1)  # (C, G, n, d)
                raw[torch.arange(len(cs)), h, :, cs] = 0
                _, qz = _norm_rope(ad, layer, ctx, raw, 0)
                out[h, cs] = change(qz, K.expand(len(cs), -1, -1, -1))[:, h]
        res["q"] = out
    if "k" in want:
        out = torch.zeros(d, dtype=Q.dtype)
        for c0 in range(0, d, chunk):
            cs = torch.arange(c0, min(d, c0 + chunk))
            raw = k_raw[None].repeat(len(cs), 1, 1, 1)  # (C, 1, n, d)
            raw[torch.arange(len(cs)), 0, :, cs] = 0
            _, kz = _norm_rope(ad, layer, ctx, raw, 1)
            out[cs] = change(Q.expand(len(cs), -1, -1, -1), kz).sum(-1)
        res["k"] = out
    return res


# ---- approximate: first order in the score change ------------------------------------------


def _approx_group(ad: Adapter, layer: int, q_raw, k_raw, heads: slice, want, lay: _Layout):
    """First-order Q/K importance (squared): dP = -P * (D - rowsum(P * D)), D the score change of
    each zeroed channel (the closed form of ``_exact_group``; through soft-capping linearised),
    so ||dP_i||^2 = sum_j P_ij^2 D_ij^2 - 2 m_i sum_j P_ij^2 D_ij + m_i^2 sum_j P_ij^2 with
    m_i = sum_j P_ij D_ij: matmuls with P and P^2, O(l^2 d) per head, no per-channel l x l work."""
    g = _group_scores(ad, layer, lay, q_raw, k_raw, heads)
    s, P, Q, K, scale = g["s"], g["P"], g["Q"], g["K"], g["scale"]
    G, _, d = Q.shape
    cap = g["cap"]
    fac = (1 - torch.tanh(s / cap).square()) if cap else None  # d(capped score) / d(score)
    pa, al, be = lay.partner, lay.alpha, lay.beta
    norm = lay.eps is not None
    res: dict[str, torch.Tensor] = {}

    def mm(M: torch.Tensor, cols: list[torch.Tensor]) -> list[torch.Tensor]:
        """M @ each matrix of ``cols``, as one matmul."""
        return list((M @ torch.cat(cols, dim=1)).split([c.shape[1] for c in cols], dim=1))

    for kind in [k for k in ("q", "k") if k in want]:
        out = torch.zeros((G, d) if kind == "q" else (d,), dtype=s.dtype)
        for h in range(G):
            Ph, f = P[h], (fac[h] if fac is not None else torch.ones_like(P[h]))
            P2, fs = Ph.square(), f * s[h]
            if kind == "q":
                # D_ij = U_i s_ij + r1_i K_jc + r2_i K_jpc: the partner's columns are a permutation,
                # so every product with K[:, pa] is the product with K, permuted
                y = scale * g["qy"][h] * g["wq"][h]
                r1, r2 = y * al, y * be
                lin = lambda X: r1 * X + r2 * X[:, pa]  # noqa: E731
                (a,) = mm(Ph * f, [K])
                m1 = lin(a)
                (a,) = mm(P2 * f, [K])
                p1 = lin(a)
                a, b = mm(P2 * f.square(), [K.square(), K * K[:, pa]])
                p2 = r1.square() * a + 2 * r1 * r2 * b + r2.square() * a[:, pa]
                if norm:  # + U_i s_ij, a row factor
                    U = g["uq"][h]
                    m1 = m1 + U * (Ph * fs).sum(-1, keepdim=True)
                    p1 = p1 + U * (P2 * fs).sum(-1, keepdim=True)
                    (a,) = mm(P2 * f * fs, [K])
                    p2 = p2 + U.square() * (P2 * fs.square()).sum(-1, keepdim=True) + 2 * U * lin(a)
            else:
                # D_ij = U_j s_ij + Q_ic c1_jc + Q_ipc c2_jc: the key factors sit in the columns
                y = scale * g["ky"] * g["wk"]
                c1, c2, q1, q2 = y * al, y * be, Q[h], Q[h][:, pa]
                a, b = mm(Ph * f, [c1, c2])
                m1 = q1 * a + q2 * b
                a, b = mm(P2 * f, [c1, c2])
                p1 = q1 * a + q2 * b
                a, b, c = mm(P2 * f.square(), [c1.square(), c1 * c2, c2.square()])
                p2 = q1.square() * a + 2 * q1 * q2 * b + q2.square() * c
                if norm:  # + U_j s_ij, a key factor
                    U = g["uk"]
                    m1 = m1 + (Ph * fs) @ U
                    p1 = p1 + (P2 * fs) @ U
                    a, b = mm(P2 * f * fs, [c1 * U, c2 * U])
                    p2 = p2 + (P2 * fs.square()) @ U.square() + 2 * (q1 * a + q2 * b)
            per_row = p2 - 2 * m1 * p1 + m1.square() * P2.sum(-1, keepdim=True)  # (n, d)
            if kind == "q":
                out[h] = per_row.sum(0)
            else:
                out += per_row.sum(0)
        res[kind] = out
    return res


def top_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    """Share of the top-``k`` entries of ``a`` that are also in the top-``k`` of ``b``."""
    k = min(k, a.numel())
    ta = set(a.flatten().topk(k).indices.tolist())
    tb = set(b.flatten().topk(k).indices.tolist())
    return len(ta & tb) / max(k, 1)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two equally shaped tensors (no tie correction)."""
    ra = a.flatten().double().argsort().argsort().double()
    rb = b.flatten().double().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / math.sqrt(float((ra * ra).sum() * (rb * rb).sum()) or 1.0))
