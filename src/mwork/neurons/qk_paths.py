"""The three ways to compute the Q/K importance of one KV group of one document (squared):
``exact_group`` (the closed-form score change, ``qk_kernel``), ``generic_group`` (the model's
score function recomputed for every zeroed channel) and ``approx_group`` (first order). See the
docstring of ``mwork.neurons.importance`` for when each is used, and ``qk_paths`` there for
which one each layer of a model takes.
"""

from __future__ import annotations

import torch

from mwork.models.adapters import Adapter, AttentionContext, attention_mask
from mwork.neurons.attention import Layout, group_scores, norm_rope
from mwork.neurons.qk_kernel import ChannelChange, GroupScores, prob_change


SCORE_ELEMENTS = 2**24  # score matrices held at once: query heads of a group are taken in chunks


def exact_group(ad: Adapter, layer: int, prep: dict, kv: int, want, lay: Layout, backend: str, chunk: int):
    """Exact Q/K importance (squared) of one KV group (the query heads of KV head ``kv``)
    of one document (``prep``, see ``attention.prepare``): {'q': (G, d), 'k': (d,)}. Zeroing raw
    channel c changes post-RoPE q_i by -r_i y_ic (alpha_ic e_c + beta_ic e_pc) and rescales the
    rest of the head by r_i = rms/rms' (1 without an RMS QK-norm), so the new scores are
    r_i (s_ij - scale y_ic (alpha_ic k_jc + beta_ic k_jpc)): see ``qk_kernel``. Long documents
    take the group's query heads a few at a time, so memory stays about 2^24 scores per matrix.

    With an RMS norm over the whole projection (``lay.coupled``, OLMo-2), zeroing a channel also
    rescales every other head's queries (keys) by r, the change ``(1 - r) s_ij`` of a row (key)
    factor: the kernel with only its U term gives it; the result then also holds 'q_cross'
    (H * d,) and 'k_cross' (Hkv * d,), what every channel of any head changes in this group's
    heads other than its own."""
    G = ad.kv_group_size
    heads = slice(kv * G, (kv + 1) * G)
    n, d = prep["Q"].shape[1:]
    H, Hkv = prep["Q"].shape[0], prep["K"].shape[0]
    dtype = prep["Q"].dtype
    step = max(1, min(G, SCORE_ELEMENTS // (n * n)))
    q_out, k_out = torch.zeros(G, d, dtype=dtype), torch.zeros(d, dtype=dtype)
    q_cross = torch.zeros(H, d, dtype=dtype) if lay.coupled and "q" in want else None
    k_cross = torch.zeros(Hkv, d, dtype=dtype) if lay.coupled and "k" in want else None
    for h0 in range(0, G, step):
        part = slice(heads.start + h0, heads.start + min(G, h0 + step))
        g = group_scores(ad, layer, lay, prep, part, kv, pad=backend != "torch")
        al, be, pa, scale = lay.alpha, lay.beta, lay.partner, g["scale"]
        scores = GroupScores(g["s"], g["t"], g["P"], g["lse"], g["lo"], g["hi"], cap=g["cap"], top=g["top"],
                             sp2=g["sp2"], smax=g["smax"])
        kw = dict(backend=backend, chunk=chunk)
        if "q" in want:
            qy = scale * g["qy"]
            rows = prob_change(scores, ChannelChange("q", qy * al, qy * be, g["uq"], g["wq"], g["K"], pa), **kw)
            q_out[h0 : h0 + step] = rows.sum(-1).cpu()
        if "k" in want:
            ky = scale * g["ky"]
            rows = prob_change(scores, ChannelChange("k", ky * al, ky * be, g["uk"], g["wk"], g["Q"], pa), **kw)
            k_out += rows.sum(-1).sum(0).cpu()  # every query head of the group
        if q_cross is not None:  # channels of head src rescale this chunk's query rows by r_i
            Gc = part.stop - part.start
            zeros, ones = torch.zeros(Gc, n, d, dtype=dtype, device=g["s"].device), None
            ones = torch.ones_like(zeros)
            for src in range(H):
                U = prep["uq"][src][None].expand(Gc, n, d).contiguous()
                change = ChannelChange("q", zeros, zeros, U, ones, zeros[0], _identity(d, pa))
                rows = prob_change(scores, change, **kw).sum(-1)
                own = src - part.start
                if 0 <= own < Gc:
                    rows[own] = 0  # a head's own channels: the term above
                q_cross[src] += rows.sum(0).cpu()
        if k_cross is not None:  # channels of KV head src rescale the keys of other groups by r_j
            Gc = part.stop - part.start
            zeros = torch.zeros(n, d, dtype=dtype, device=g["s"].device)
            ones, X = torch.ones_like(zeros), torch.zeros(Gc, n, d, dtype=dtype, device=zeros.device)
            for src in range(Hkv):
                if src == kv:
                    continue
                change = ChannelChange("k", zeros, zeros, prep["uk"][src].contiguous(), ones, X, _identity(d, pa))
                rows = prob_change(scores, change, **kw)
                k_cross[src] += rows.sum(-1).sum(0).cpu()
    res = {k: v for k, v in (("q", q_out), ("k", k_out)) if k in want}
    if q_cross is not None:
        res["q_cross"] = q_cross.reshape(-1)
    if k_cross is not None:
        res["k_cross"] = k_cross.reshape(-1)
    return res


def _identity(d: int, like: torch.Tensor) -> torch.Tensor:
    return torch.arange(d, device=like.device, dtype=like.dtype)


# ---- exact, generic: the real score function for every zeroed channel -----------------------


def generic_group(ad: Adapter, layer: int, q_raw, k_raw, heads: slice, want, ctx: AttentionContext, chunk: int):
    """Squared Q/K importance by recomputing the scores with each channel zeroed (chunks of
    ``chunk`` channels: memory O(chunk * heads * n^2)). ``q_raw`` (Hq, n, d): the query heads
    ``heads``; ``k_raw`` (Hk, n, d): their KV heads. Returns {'q': (Hq, d), 'k': (Hk, d)}: each
    channel's change summed over the heads it feeds -- its own head (Q), its group's query heads
    (K), or, in a layer whose QK-norm spans the whole projection (``Adapter.qk_norm_scope``:
    every channel feeds every head), every head: pass them all."""
    Hq, n, d = q_raw.shape
    Hk, G = k_raw.shape[0], ad.kv_group_size
    coupled = ad.qk_norm_scope(layer) == "projection"
    if coupled and Hq != ad.num_heads:
        raise ValueError(f"layer {layer}'s QK-norm spans every head: give all {ad.num_heads} query heads, not {Hq}")
    kv_heads = slice(heads.start // G, heads.stop // G)
    _, Q = norm_rope(ad, layer, ctx, q_raw[None], 0, heads)  # (1, Hq, n, d)
    _, K = norm_rope(ad, layer, ctx, k_raw[None], 1, kv_heads)  # (1, Hk, n, d)
    mask = attention_mask(torch.ones(1, n, dtype=torch.long, device=Q.device), ad.sliding_window(layer))
    P = torch.softmax(ad.scores(layer, Q, K, ctx, heads=heads).masked_fill(~mask, float("-inf")), dim=-1)
    res: dict[str, torch.Tensor] = {}

    def change(qz, kz) -> torch.Tensor:  # (C, Hq, n, n) -> squared Frobenius norm per (C, head)
        Pz = torch.softmax(ad.scores(layer, qz, kz, ctx, heads=heads).masked_fill(~mask, float("-inf")), dim=-1)
        return (Pz - P).square().sum((-1, -2))

    if "q" in want:
        out = torch.zeros(Hq, d, dtype=Q.dtype)
        for h in range(Hq):
            for c0 in range(0, d, chunk):
                cs = torch.arange(c0, min(d, c0 + chunk))
                raw = q_raw[None].repeat(len(cs), 1, 1, 1)  # (C, Hq, n, d)
                raw[torch.arange(len(cs)), h, :, cs] = 0
                _, qz = norm_rope(ad, layer, ctx, raw, 0, heads)
                ch = change(qz, K.expand(len(cs), -1, -1, -1))
                out[h, cs] = (ch.sum(1) if coupled else ch[:, h]).cpu()
        res["q"] = out
    if "k" in want:
        out = torch.zeros(Hk, d, dtype=Q.dtype)
        for g in range(Hk):
            for c0 in range(0, d, chunk):
                cs = torch.arange(c0, min(d, c0 + chunk))
                raw = k_raw[None].repeat(len(cs), 1, 1, 1)  # (C, Hk, n, d)
                raw[torch.arange(len(cs)), g, :, cs] = 0
                _, kz = norm_rope(ad, layer, ctx, raw, 1, kv_heads)
                ch = change(Q.expand(len(cs), -1, -1, -1), kz)
                out[g, cs] = (ch.sum(1) if coupled else ch[:, g * G : (g + 1) * G].sum(1)).cpu()
        res["k"] = out
    return res


# ---- approximate: first order in the score change ------------------------------------------


def approx_group(ad: Adapter, layer: int, prep: dict, heads: slice, kv: int, want, lay: Layout):
    """First-order Q/K importance (squared): dP = -P * (D - rowsum(P * D)), D the score change of
    each zeroed channel (the closed form of ``exact_group``; through soft-capping linearised),
    so ||dP_i||^2 = sum_j P_ij^2 D_ij^2 - 2 m_i sum_j P_ij^2 D_ij + m_i^2 sum_j P_ij^2 with
    m_i = sum_j P_ij D_ij: matmuls with P and P^2, O(l^2 d) per head, no per-channel l x l work.
    With ``lay.coupled`` also 'q_cross' / 'k_cross' as in ``exact_group``, from D_ij = U_i s_ij
    (a query row rescaled) or U_j s_ij (a key rescaled)."""
    g = group_scores(ad, layer, lay, prep, heads, kv)
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
    if lay.coupled:
        res.update(_approx_cross(g, fac, heads, kv, prep, want))
    return res


def _approx_cross(g: dict, fac, heads: slice, kv: int, prep: dict, want) -> dict[str, torch.Tensor]:
    """First-order change of this group's heads when a channel of another head rescales their
    query rows (Q) or keys (K) by r: D_ij = U_i s_ij, resp. U_j s_ij."""
    s, P = g["s"], g["P"]
    out: dict[str, torch.Tensor] = {}
    if "q" in want:
        H, n, d = prep["uq"].shape
        cross = torch.zeros(H, d, dtype=s.dtype)
        U2 = prep["uq"].square()  # (H, n, d)
        for h in range(P.shape[0]):
            fs = s[h] * (fac[h] if fac is not None else 1)
            m = (P[h] * fs).sum(-1, keepdim=True)
            v = (P[h].square() * (fs - m).square()).sum(-1)  # ||dP_i||^2 = U_i^2 v_i
            add = torch.einsum("i,hic->hc", v, U2)
            add[heads.start + h] = 0  # the head's own channels: the formula above
            cross += add.cpu()
        out["q_cross"] = cross.reshape(-1)
    if "k" in want:
        Hkv, n, d = prep["uk"].shape
        cross = torch.zeros(Hkv, d, dtype=s.dtype)
        for h in range(P.shape[0]):
            fs = s[h] * (fac[h] if fac is not None else 1)
            P2 = P[h].square()
            for src in range(Hkv):
                if src == kv:
                    continue
                U = prep["uk"][src]  # (n, d), a factor per key
                m = (P[h] * fs) @ U
                per_row = (P2 * fs.square()) @ U.square() - 2 * m * ((P2 * fs) @ U) + m.square() * P2.sum(-1, keepdim=True)
                cross[src] += per_row.sum(0).cpu()
        out["k_cross"] = cross.reshape(-1)
    return out
