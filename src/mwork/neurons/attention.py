"""The attention pieces the Q/K scores share (importance, the reference scores, the benchmark):
one document's raw q/k heads and attention context, QK-norm and RoPE through the model's own
modules, the visible key range (causal and sliding window), the masked softmax, and the
structure of the score function the exact Q/K path relies on (:class:`Layout`).

Everything here works on one document of a packed batch (``mwork.hooks.pack_left``): its
tokens sit at positions 0..n-1 of its row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mwork.models.adapters import Adapter, AttentionContext, attention_mask


def doc_heads(ad: Adapter, layer: int, kind: str, raw: torch.Tensor, b: int, n: int, dtype: torch.dtype) -> torch.Tensor:
    """Raw (pre-norm, pre-RoPE) channels of ``kind`` for document ``b`` as (heads, n, d), from the
    projection's whole output ``raw`` (fused projections: the site picks this kind's features)."""
    x = ad.neuron_site(kind, layer).channels(raw[b, :n]).to(dtype)
    return x.reshape(n, -1, ad.head_dim).transpose(0, 1).contiguous()


def doc_context(ctx: AttentionContext, b: int, n: int, B: int, dtype: torch.dtype) -> AttentionContext:
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
    return AttentionContext(hidden_states=ctx.hidden_states[b : b + 1, :n], cos=pick(ctx.cos), sin=pick(ctx.sin),
                            alibi=alibi, layer=ctx.layer)


def norm_rope(ad: Adapter, layer: int, ctx: AttentionContext, x: torch.Tensor, which: int,
              heads: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (..., heads, n, d) -> (after QK-norm, after QK-norm and RoPE). ``heads``: the query
    heads (``which`` = 0) or KV heads (1) that ``x`` holds, None for all of them."""
    y = ad.apply_qk_norm(layer, which, x, heads)
    squeeze = y.dim() == 3
    y4 = y[None] if squeeze else y
    r = ad.apply_rope(y4, ctx)
    return y, (r[0] if squeeze else r)


def visible(ad: Adapter, layer: int, n: int, device, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal + sliding-window key range [lo, hi) per query row, and the (n, width) boolean mask
    (``width`` >= n pads with masked columns)."""
    window = ad.sliding_window(layer)
    mask = attention_mask(torch.ones(1, n, dtype=torch.long, device=device), window)[0, 0]
    if width is not None and width > n:
        mask = torch.nn.functional.pad(mask, (0, width - n), value=False)
    i = torch.arange(n, device=device)
    lo = (i - window + 1).clamp(min=0) if window else torch.zeros_like(i)
    return lo, i + 1, mask


def softmax_stats(t: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked softmax of (..., n, n) scores: (P, log-sum-exp per row, most attended key per row)."""
    e = t.masked_fill(~mask, float("-inf"))
    m, top = e.max(-1, keepdim=True)
    e.sub_(m).exp_()
    z = e.sum(-1, keepdim=True)
    return e.div_(z), (m + z.log()).squeeze(-1), top.squeeze(-1)


# ---- exact, fast: rank-2 updates through the closed-form score change ---------------------

PROBE_POSITIONS = 16  # positions whose RoPE the one-hot probes read the pairing from
NORM_TOKENS = 64  # tokens of the first document the QK-norm form is checked on


@dataclass
class Layout:
    """Facts of the fast path for one layer: the RoPE of channel c at token i is
    alpha[i, c] e_c + beta[i, c] e_partner[c] (a pairing read off the model's own RoPE:
    rotate-half, interleaved 2i / 2i+1, partial; pass-through channels: alpha = 1, beta = 0),
    and what the model does before RoPE ("none"; "elementwise": a function of each channel
    alone with f(0) = 0, e.g. clipping; "rms": an RMS QK-norm, which rescales the rest of a
    head -- ``scope="head"`` -- or of every head -- ``"projection"``, OLMo-2 -- exactly by
    rms / rms')."""

    alpha: torch.Tensor  # (L, d), for the batch's positions 0..L-1
    beta: torch.Tensor  # (L, d)
    partner: torch.Tensor  # (d,)
    eps: float | None  # RMS QK-norm epsilon (None: no rescaling)
    problem: str = ""
    ctx: AttentionContext | None = None  # set per document
    scope: str = "head"  # what the RMS ratio is taken over: "head" | "projection"
    norm: str = "none"  # "none" | "elementwise" | "rms"

    @property
    def coupled(self) -> bool:
        """Zeroing one channel rescales every head (an RMS norm over the whole projection)."""
        return self.eps is not None and self.scope == "projection"

    def for_document(self, ctx: AttentionContext, n: int) -> "Layout":
        return Layout(self.alpha[:n], self.beta[:n], self.partner, self.eps, self.problem, ctx, self.scope, self.norm)

    @staticmethod
    def probe(ad: Adapter, layer: int, ctx: AttentionContext, q_out: torch.Tensor, k_out: torch.Tensor, dtype, cache: dict) -> "Layout":
        """Read the RoPE pairing off the model's own RoPE (one-hot probes through
        ``adapter.apply_rope``) and check it, and the QK-norm form, on real vectors. Documents
        are packed from position 0, so every row of the batch shares the tables of row 0."""
        L, d = q_out.shape[1], ad.head_dim
        first = doc_context(ctx, 0, L, ctx.hidden_states.shape[0], dtype)
        key = ("rope", None if ctx.cos is None else (ctx.cos.data_ptr(), tuple(ctx.cos.shape)), ad.rotary_dim(layer),
               L, dtype)
        if key not in cache:
            alpha, beta, partner, problem = rope_pairs(ad, first, L, d, dtype, q_out.device)
            if not problem:  # the pairing must reproduce RoPE on real vectors, not only on the probes
                x = doc_heads(ad, layer, "q", q_out, 0, L, dtype)[:1]
                want = ad.apply_rope(x[None], first)[0]
                got = alpha * x + (beta * x)[..., partner]  # output k gets x_k and its partner's share
                tol = 1e-10 if dtype == torch.float64 else 1e-4
                if not torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max().clamp(min=1))):
                    problem = "RoPE is not a rotation of channel pairs"
            cache[key] = (alpha, beta, partner, problem, ctx.cos)  # holding cos keeps its address unique
        alpha, beta, partner, problem, _ = cache[key]
        scope = ad.qk_norm_scope(layer)
        layout = Layout(alpha, beta, partner, None, f"layer {layer}: {problem}" if problem else "", scope=scope)
        if type(ad).scores is not Adapter.scores:
            layout.problem = f"layer {layer}: the adapter has its own score function"
        if layout.problem:
            return layout
        eps = ad.qk_norm_eps(layer)
        forms = []
        for which, (kind, out) in enumerate((("q", q_out), ("k", k_out))):
            if ("norm", layer, which) not in cache:
                raw = doc_heads(ad, layer, kind, out, 0, min(L, NORM_TOKENS), dtype)
                cache["norm", layer, which] = qk_norm_form(ad, layer, which, raw, eps, scope)
            forms.append(cache["norm", layer, which])
        if "other" in forms:
            layout.problem = f"layer {layer}: QK-norm is neither elementwise nor y = g * x / sqrt(mean(x^2) + eps)"
        elif "rms" in forms:
            if forms[0] != forms[1]:
                layout.problem = f"layer {layer}: QK-norm of q and k of different forms"
            elif ad.score_bias(layer, first) is not None:
                layout.problem = f"layer {layer}: QK-norm together with a score bias"
            else:
                layout.eps, layout.norm = eps, "rms"
        elif "elementwise" in forms:
            layout.norm = "elementwise"
        return layout


def rope_pairs(ad: Adapter, ctx: AttentionContext, L: int, d: int, dtype, device) -> tuple:
    """(alpha, beta, partner, problem): RoPE as a rotation of channel pairs, read off the model's
    own RoPE. One-hot probes at the first positions find each channel's partner (the one other
    channel its rotation reaches: c + d/2 for rotate-half, c ^ 1 for interleaved RoPE, itself for
    pass-through channels); two probes over all positions then give the coefficients."""
    P = min(L, PROBE_POSITIONS)
    eye = torch.eye(d, dtype=dtype, device=device)[:, None, :].expand(d, P, d).contiguous()  # (c, P, d)
    reach = ad.apply_rope(eye[None], doc_context(ctx, 0, P, 1, dtype))[0].ne(0).any(1)  # (c, k): c reaches k
    c = torch.arange(d, device=device)
    reach[c, c] = False
    count = reach.sum(1)
    partner = torch.where(count == 1, reach.to(torch.int8).argmax(1), c)
    alpha = torch.ones(L, d, dtype=dtype, device=device)
    beta = torch.zeros(L, d, dtype=dtype, device=device)
    if bool((count > 1).any()):
        return alpha, beta, c, "RoPE mixes more than two channels"
    if not torch.equal(partner[partner], c):
        return alpha, beta, c, "RoPE pairs channels asymmetrically"
    first = partner >= c  # one member of each pair (and pass-through channels), the other below
    probes = torch.zeros(2, L, d, dtype=dtype, device=device)
    probes[0, :, first] = 1
    probes[1, :, ~first] = 1
    rotated = ad.apply_rope(probes[None], ctx)[0]  # (2, L, d)
    alpha = (rotated * probes).sum(0)
    src = torch.where(first, 0, 1)  # the probe that holds channel c
    beta = rotated[src, :, partner].T.contiguous()  # (L, d): what c sends to its partner
    beta[:, partner == c] = 0
    return alpha, beta, partner, ""


def qk_norm_form(ad: Adapter, layer: int, which: int, raw: torch.Tensor, eps: float | None, scope: str) -> str:
    """What the model does to raw q (``which`` = 0) or k channels ``raw`` (heads, tokens, d)
    before RoPE, checked on real vectors by zeroing the first channels of head 0: "none",
    "elementwise" (zeroing c only zeroes output c), "rms" (the rest rescaled by rms / rms' over
    the head, or over every head for ``scope="projection"``) or "other"."""
    if scope == "head":
        raw, heads = raw[:1], slice(0, 1)
    else:
        heads = None
    transform = lambda x: ad.apply_qk_norm(layer, which, x, heads)  # noqa: E731
    y = transform(raw)
    if y.shape == raw.shape and torch.equal(y, raw):
        return "none"
    chans = torch.arange(min(raw.shape[-1], 3))
    rows = torch.arange(len(chans))
    xz = raw[None].repeat(len(chans), 1, 1, 1)
    xz[rows, 0, :, chans] = 0
    want = transform(xz)
    yz = y[None].repeat(len(chans), 1, 1, 1)
    yz[rows, 0, :, chans] = 0
    tol = 1e-5  # norms may compute in float32 even for float64 models
    atol = tol * float(want.abs().max().clamp(min=1))
    if torch.allclose(yz, want, rtol=tol, atol=atol):
        return "elementwise"
    if eps is not None:
        r = rms_ratio_scoped(raw, eps, scope)[1][0][:, chans].T[:, None, :, None]  # (chans, 1, tokens, 1)
        if torch.allclose(r * yz, want, rtol=tol, atol=atol):
            return "rms"
    return "other"


def rms_ratio(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For (..., n, d) raw channels: (1 - r, r) with r[i, c] = rms(x_i) / rms(x_i with c zeroed)."""
    d = x.shape[-1]
    ms = x.square().mean(-1, keepdim=True) + eps
    u = x.square() / (d * ms)  # share of channel c in the mean square, < 1
    one_minus_r = -torch.expm1(-0.5 * torch.log1p(-u))
    return one_minus_r, 1 - one_minus_r


def rms_ratio_scoped(x: torch.Tensor, eps: float, scope: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``rms_ratio`` of (heads, n, d) raw channels over each head, or over all heads together
    (``scope="projection"``), returned as (heads, n, d)."""
    if scope == "head":
        return rms_ratio(x, eps)
    h, n, d = x.shape
    u, w = rms_ratio(x.transpose(0, 1).reshape(n, h * d), eps)
    return u.reshape(n, h, d).transpose(0, 1), w.reshape(n, h, d).transpose(0, 1)


def prepare(ad: Adapter, layer: int, lay: Layout, q_raw: torch.Tensor, k_raw: torch.Tensor) -> dict[str, torch.Tensor]:
    """One document's q (H, n, d) and k (Hkv, n, d) after the QK-norm (``qy``, ``ky``) and RoPE
    (``Q``, ``K``), and the QK-norm's rescaling when a channel is zeroed, 1 - r and r (``uq``,
    ``wq``, ``uk``, ``wk``; 0 and 1 without an RMS norm)."""
    qy, Q = norm_rope(ad, layer, lay.ctx, q_raw, 0)
    ky, K = norm_rope(ad, layer, lay.ctx, k_raw, 1)
    if lay.eps is not None:
        uq, wq = rms_ratio_scoped(q_raw, lay.eps, lay.scope)
        uk, wk = rms_ratio_scoped(k_raw, lay.eps, lay.scope)
    else:
        uq, wq = torch.zeros_like(q_raw), torch.ones_like(q_raw)
        uk, wk = torch.zeros_like(k_raw), torch.ones_like(k_raw)
    return dict(qy=qy, Q=Q, ky=ky, K=K, uq=uq, wq=wq, uk=uk, wk=wk)


def group_scores(ad: Adapter, layer: int, lay: Layout, prep: dict, heads: slice, kv: int, pad: bool = False):
    """Everything the closed-form paths share for the query heads ``heads`` (of KV head ``kv``)
    of one document (``prep``). ``pad``: score matrices (G, n, ld) with zero (and masked)
    columns up to ld, a multiple of 16, as the native kernel wants them (saves copies of l x l
    matrices)."""
    ctx = lay.ctx
    Q, K = prep["Q"][heads], prep["K"][kv]  # (G, n, d), (n, d)
    n, d = Q.shape[1:]
    ld = -(-n // 16) * 16 if pad else n
    KT = torch.zeros(d, ld, dtype=K.dtype, device=K.device)
    KT[:, :n] = K.T
    s = torch.matmul(Q, KT).mul_(ad.scaling(layer))  # (G, n, ld) pre-cap scores
    bias = ad.score_bias(layer, ctx, heads)
    if bias is not None:
        s[..., :n] += bias.reshape(-1, *bias.shape[-2:]).to(s.dtype)
    cap = ad.softcap(layer)
    t = cap * torch.tanh(s / cap) if cap else s
    lo, hi, mask = visible(ad, layer, n, s.device, ld)
    P, lse, top = softmax_stats(t, mask)
    return dict(qy=prep["qy"][heads], Q=Q, ky=prep["ky"][kv], K=K, s=s, t=t, cap=cap, lo=lo, hi=hi, mask=mask, P=P,
                lse=lse, uq=prep["uq"][heads], wq=prep["wq"][heads], uk=prep["uk"][kv], wk=prep["wk"][kv],
                scale=ad.scaling(layer), top=top,
                sp2=torch.linalg.vector_norm(P, dim=-1).square(), smax=torch.maximum(s.amax(-1), -s.amin(-1)))
