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
from torch import nn

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
    return AttentionContext(hidden_states=ctx.hidden_states[b : b + 1, :n], cos=pick(ctx.cos), sin=pick(ctx.sin), alibi=alibi)


def norm_rope(ad: Adapter, layer: int, ctx: AttentionContext, x: torch.Tensor, which: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (..., heads, n, d) -> (after QK-norm, after QK-norm and RoPE)."""
    norm = ad.qk_norms(layer)[which]
    y = norm(x) if norm is not None else x
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


@dataclass
class Layout:
    """Facts of the fast path for one layer: the RoPE of channel c at token i is
    alpha[i, c] e_c + beta[i, c] e_partner[c] (rotate-half pairs; pass-through channels:
    alpha = 1, beta = 0), and RMS QK-norm rescales the rest of a head exactly by rms / rms'."""

    alpha: torch.Tensor  # (L, d), for the batch's positions 0..L-1
    beta: torch.Tensor  # (L, d)
    partner: torch.Tensor  # (d,)
    eps: float | None  # QK-norm epsilon (None: no QK-norm)
    problem: str = ""
    ctx: AttentionContext | None = None  # set per document

    def for_document(self, ctx: AttentionContext, n: int) -> "Layout":
        return Layout(self.alpha[:n], self.beta[:n], self.partner, self.eps, self.problem, ctx)

    @staticmethod
    def probe(ad: Adapter, layer: int, ctx: AttentionContext, q_out: torch.Tensor, k_out: torch.Tensor, dtype, cache: dict) -> "Layout":
        """Read the RoPE pairing off the model's own RoPE (probe vectors through
        ``adapter.apply_rope``) and check it, and the QK-norm form, on real vectors. Documents
        are packed from position 0, so every row of the batch shares the tables of row 0."""
        L, d = q_out.shape[1], ad.head_dim
        rot = ad.rotary_dim(layer) if ad.position_encoding == "rope" else 0
        first = doc_context(ctx, 0, L, ctx.hidden_states.shape[0], dtype)
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
            x = doc_heads(ad, layer, "q", q_out, 0, L, dtype)[:1]
            want = ad.apply_rope(x[None], first)[0]
            got = alpha * x + (beta * x)[..., partner]  # output k gets x_k and its partner's share
            tol = 1e-10 if dtype == torch.float64 else 1e-4
            ok = torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max().clamp(min=1)))
            problem = "" if ok else f"layer {layer}: RoPE is not rotate-half pairs"
            cache[key] = (alpha, beta, partner, problem, ctx.cos)  # holding cos keeps its address unique
        alpha, beta, partner, problem, _ = cache[key]
        layout = Layout(alpha, beta, partner, ad.qk_norm_eps(layer), problem)
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
                        raw = doc_heads(ad, layer, kind, out, 0, min(L, 4), dtype)[0]
                        cache["norm", id(norms[which])] = norm_is_rms(norms[which], raw, layout.eps, dtype)
                    if not cache["norm", id(norms[which])]:
                        layout.problem = f"layer {layer}: QK-norm is not y = g * x / sqrt(mean(x^2) + eps)"
        return layout


def norm_is_rms(norm: nn.Module, x: torch.Tensor, eps: float, dtype) -> bool:
    """Whether zeroing channel c of x (tokens, d) gives norm(x') = (rms / rms') * (norm(x) with
    channel c zeroed), checked on the first channels."""
    chans = torch.arange(min(x.shape[-1], 3))
    xz = x[None].repeat(len(chans), 1, 1)
    xz[torch.arange(len(chans)), :, chans] = 0
    want = norm(xz)
    y = norm(x)[None].repeat(len(chans), 1, 1)
    y[torch.arange(len(chans)), :, chans] = 0
    r = rms_ratio(x, eps)[1][:, chans].T[..., None]  # (chans, tokens, 1)
    tol = 1e-5  # norms may compute in float32 even for float64 models
    return torch.allclose(r * y, want, rtol=tol, atol=tol * float(want.abs().max().clamp(min=1)))


def rms_ratio(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For (..., n, d) raw channels: (1 - r, r) with r[i, c] = rms(x_i) / rms(x_i with c zeroed)."""
    d = x.shape[-1]
    ms = x.square().mean(-1, keepdim=True) + eps
    u = x.square() / (d * ms)  # share of channel c in the mean square, < 1
    one_minus_r = -torch.expm1(-0.5 * torch.log1p(-u))
    return one_minus_r, 1 - one_minus_r


def group_scores(ad: Adapter, layer: int, lay: Layout, q_raw, k_raw, heads: slice, pad: bool = False):
    """Everything the closed-form paths share for one KV group of one document. ``pad``: score
    matrices (G, n, ld) with zero (and masked) columns up to ld, a multiple of 16, as the
    native kernel wants them (saves copies of l x l matrices)."""
    ctx = lay.ctx
    qy, Q = norm_rope(ad, layer, ctx, q_raw, 0)  # (G, n, d) after QK-norm; after RoPE too
    ky, K = norm_rope(ad, layer, ctx, k_raw, 1)  # (1, n, d)
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
    lo, hi, mask = visible(ad, layer, n, s.device, ld)
    P, lse, top = softmax_stats(t, mask)
    if lay.eps is not None:
        uq, wq = rms_ratio(q_raw, lay.eps)
        uk, wk = rms_ratio(k_raw[0], lay.eps)
    else:
        uq, wq = torch.zeros_like(q_raw), torch.ones_like(q_raw)
        uk, wk = torch.zeros_like(k_raw[0]), torch.ones_like(k_raw[0])
    return dict(qy=qy, Q=Q, ky=ky[0], K=K[0], s=s, t=t, cap=cap, lo=lo, hi=hi, mask=mask, P=P, lse=lse,
                uq=uq, wq=wq, uk=uk, wk=wk, scale=ad.scaling(layer), top=top,
                sp2=torch.linalg.vector_norm(P, dim=-1).square(), smax=torch.maximum(s.amax(-1), -s.amin(-1)))
