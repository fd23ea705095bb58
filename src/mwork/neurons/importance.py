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

from mwork.hooks import Hooks, pack_left
from mwork.models.adapters import KINDS, Adapter, AttentionContext, get_adapter
from mwork.models.loading import input_device
from mwork.neurons.attention import Layout, doc_context, doc_heads
from mwork.neurons.qk_paths import approx_group, exact_group, generic_group

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
    ids, lengths = pack_left(batch)
    ids = ids.to(input_device(model))
    dtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    counts = adapter.neuron_counts()
    out = {k: torch.zeros(len(lengths), adapter.num_layers, counts[k], dtype=dtype) for k in kinds}
    run = _Run(adapter, lengths, dtype, out, method, chunk_size, backend)
    hooks = Hooks()
    for layer in range(adapter.num_layers):
        run.register(hooks, layer)
    ones = torch.ones_like(ids)
    with hooks, torch.inference_mode():
        adapter.body(input_ids=ids, attention_mask=ones, use_cache=False, **adapter.forward_kwargs(ones))
    missing = sorted(run.expected - run.done)
    if missing:
        raise RuntimeError(
            f"importance: hooks did not fire for {missing[:5]} (layer, kind); the model's forward "
            "bypasses the modules its adapter names"
        )
    return out


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

    def register(self, hooks: Hooks, layer: int) -> None:
        """Readers for ``layer``: FFN at the down projection's input, V at the o-projection's
        input, Q/K from the attention call, its raw q/k, and the block's end."""
        ad, kinds = self.adapter, self.out.keys()
        if "ffn" in kinds:
            self.expected.add((layer, "ffn"))
            w = _cached(ad.mlp_down(layer).weight, ("down_norm", self.dtype),
                        lambda: ad.down_weight(layer).detach().to(self.dtype).square().sum(0).sqrt().cpu())
            hooks.read(ad.site("ffn.in", layer), lambda h, layer=layer, w=w: self._ffn(layer, h, w))
        if "v" in kinds:
            self.expected.add((layer, "v"))
            wgram = _cached(ad.o_proj(layer).weight, ("o_gram", self.dtype), lambda: _o_gram(ad, layer, self.dtype))
            hooks.read(ad.site("attn.ctx", layer), lambda z, layer=layer, g=wgram: self._v(layer, z, g))
        if "q" in kinds or "k" in kinds:
            for kind in ("q", "k"):
                if kind in kinds:
                    self.expected.add((layer, kind))

            def after(output, layer=layer):
                try:
                    self._qk(layer)
                finally:
                    self.captured.clear()

            hooks.read(ad.site("attn.in", layer), lambda ctx: self.captured.__setitem__("ctx", ctx))
            for kind in ("q", "k"):  # the projections' whole outputs: doc_heads picks the channels
                hooks.read(ad.site(f"{kind}.out", layer), lambda out, kind=kind: self.captured.__setitem__(kind, out))
            hooks.read(ad.site("attn.out", layer), after)

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
            layout = Layout.probe(ad, layer, ctx, cap["q"], cap["k"], self.dtype, self.cache)
            if layout.problem:
                if layout.problem not in self.warned:
                    self.warned.add(layout.problem)
                    warnings.warn(f"mwork.importance: {layout.problem}; using the slow generic path", stacklevel=2)
                method = "generic"
        for b, n in enumerate(self.lengths):
            dctx = doc_context(ctx, b, n, B, self.dtype)
            q_raw = doc_heads(ad, layer, "q", cap["q"], b, n, self.dtype)  # (H, n, d)
            k_raw = doc_heads(ad, layer, "k", cap["k"], b, n, self.dtype)  # (Hkv, n, d)
            lay = layout.for_document(dctx, n) if layout is not None else None
            imp = {k: torch.zeros(self.out[k].shape[-1], dtype=self.dtype) for k in want}
            for g in range(Hkv):
                heads = slice(g * G, (g + 1) * G)
                args = (ad, layer, q_raw[heads], k_raw[g : g + 1], heads, want)
                if method == "generic":
                    res = generic_group(*args, dctx, self.chunk_size)
                elif method == "exact":
                    res = exact_group(*args, lay, self.backend, self.chunk_size)
                else:
                    res = approx_group(*args, lay)
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
