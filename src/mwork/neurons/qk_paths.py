"""The three ways to compute the Q/K importance of one KV group of one document (squared):
``exact_group`` (the closed-form score change, ``qk_kernel``), ``generic_group`` (the model's
score function recomputed for every zeroed channel) and ``approx_group`` (first order). See the
docstring of ``mwork.neurons.importance`` for when each is used.
"""

from __future__ import annotations

import torch

from mwork.models.adapters import Adapter, AttentionContext, attention_mask
from mwork.neurons.attention import Layout, group_scores, norm_rope
from mwork.neurons.qk_kernel import prob_change


SCORE_ELEMENTS = 2**24  # score matrices held at once: query heads of a group are taken in chunks


def exact_group(ad: Adapter, layer: int, q_raw, k_raw, heads: slice, want, lay: Layout, backend: str, chunk: int):
    """Exact Q/K importance (squared) of one KV group: {'q': (G, d), 'k': (d,)}. Zeroing raw
    channel c changes post-RoPE q_i by -r_i y_ic (alpha_ic e_c + beta_ic e_pc) and rescales the
    rest of the head by r_i = rms/rms' (1 without QK-norm), so the new scores are
    r_i (s_ij - scale y_ic (alpha_ic k_jc + beta_ic k_jpc)): see ``qk_kernel``. Long documents
    take the group's query heads a few at a time, so memory stays about 2^24 scores per matrix."""
    G, n, d = q_raw.shape
    step = max(1, min(G, SCORE_ELEMENTS // (n * n)))
    q_out, k_out = torch.zeros(G, d, dtype=q_raw.dtype), torch.zeros(d, dtype=q_raw.dtype)
    for h0 in range(0, G, step):
        part = slice(heads.start + h0, heads.start + min(G, h0 + step))
        g = group_scores(ad, layer, lay, q_raw[h0 : h0 + step], k_raw, part, pad=backend != "torch")
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


def generic_group(ad: Adapter, layer: int, q_raw, k_raw, heads: slice, want, ctx: AttentionContext, chunk: int):
    """Squared Q/K importance of one KV group by recomputing the scores with each channel zeroed
    (chunks of ``chunk`` channels: memory O(chunk * G * n^2))."""
    G, n, d = q_raw.shape
    _, Q = norm_rope(ad, layer, ctx, q_raw[None], 0)  # (1, G, n, d)
    _, K = norm_rope(ad, layer, ctx, k_raw[None], 1)  # (1, 1, n, d)
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
                _, qz = norm_rope(ad, layer, ctx, raw, 0)
                out[h, cs] = change(qz, K.expand(len(cs), -1, -1, -1))[:, h]
        res["q"] = out
    if "k" in want:
        out = torch.zeros(d, dtype=Q.dtype)
        for c0 in range(0, d, chunk):
            cs = torch.arange(c0, min(d, c0 + chunk))
            raw = k_raw[None].repeat(len(cs), 1, 1, 1)  # (C, 1, n, d)
            raw[torch.arange(len(cs)), 0, :, cs] = 0
            _, kz = norm_rope(ad, layer, ctx, raw, 1)
            out[cs] = change(Q.expand(len(cs), -1, -1, -1), kz).sum(-1)
        res["k"] = out
    return res


# ---- approximate: first order in the score change ------------------------------------------


def approx_group(ad: Adapter, layer: int, q_raw, k_raw, heads: slice, want, lay: Layout):
    """First-order Q/K importance (squared): dP = -P * (D - rowsum(P * D)), D the score change of
    each zeroed channel (the closed form of ``exact_group``; through soft-capping linearised),
    so ||dP_i||^2 = sum_j P_ij^2 D_ij^2 - 2 m_i sum_j P_ij^2 D_ij + m_i^2 sum_j P_ij^2 with
    m_i = sum_j P_ij D_ij: matmuls with P and P^2, O(l^2 d) per head, no per-channel l x l work."""
    g = group_scores(ad, layer, lay, q_raw, k_raw, heads)
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
