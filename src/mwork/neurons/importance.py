"""Neuron importance in one forward pass (PLND, Eq. 1): Imp(N | document) = ||T\\N(h) - T(h)||.

For each document of a batch and every neuron, how much the output of its block changes when
the neuron alone is zeroed, as a norm over the document's tokens (padding excluded):

* ``ffn`` neuron k: ||h_ffn[:, k]|| * ||W_down[:, k]||, exact (the down projection is linear).
  In a mixture-of-experts layer, channel k of expert e: ||r_te h_tek|| over the tokens t routed
  to e (r_te its routing weight; 0 for the others) times ||W_down[e][:, k]||, exact too: the
  block's output is linear in the routed hidden state r h (the FFN output's input, see
  ``mwork.models.families.moe_block``); a shared expert's channels have its sigmoid gate as r.
* ``v`` channel c: the change of the attention output (o_proj's output) when v[:, c] = 0,
  i.e. -sum over the query heads h of its KV group of (P_h v_c) W_O[:, h, c]; Frobenius norm
  over (tokens, hidden). ``P_h v_c`` is column c of head h's attention output, read at the
  o_proj input, so this is exact and costs no recomputation.
* ``q`` / ``k`` channel c (Eq. 8): ||softmax(S') - softmax(S)||_F over (query tokens x keys)
  of every head the channel feeds (one head for Q; every query head of the KV group for K),
  S' being the model's real scores with the channel zeroed before QK-norm and RoPE, through
  QK-norm, RoPE, scaling, ALiBi, soft-capping, causal and sliding-window masks.

Q/K, three methods. ``"exact"`` (default) uses the structure of the score function: zeroing one
raw channel changes post-RoPE q by a vector with at most two non-zeros (RoPE rotates channel
c with one partner: c + d/2 in rotate-half RoPE, c ^ 1 in GPT-J's interleaved RoPE, none for
the channels partial RoPE passes through; read off the model's own RoPE) times a per-token
factor (an RMS QK-norm rescales the rest of the head exactly by rms/rms'; an elementwise one
such as clipping changes nothing else), so S' = r * (S - rank-2 update) and each channel costs
O(l^2) (``qk_kernel``), exact up to float rounding. An RMS QK-norm over the whole projection
(OLMo-2) rescales every other head by the same r: a row (key) factor on their scores, which
the same kernel handles, at H times the cost. Learned, sinusoidal or no positions (identity
RoPE), ALiBi and multi-query attention need nothing more. Anything that breaks those
assumptions (checked numerically per layer: RoPE pairing, QK-norm form -- a LayerNorm one is
not of the RMS form --, a custom score function) falls back to ``"generic"``: the real score
function recomputed for every zeroed channel, chunked, memory O(chunk * l^2); exact and slow,
also the cross-check in the tests. :func:`qk_paths` says which path each layer takes; the
result of ``importance`` records it. ``"approx"``: the first-order
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
from mwork.neurons.attention import Layout, doc_context, doc_heads, prepare
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
) -> "Importance":
    """Imp(N | document) for every neuron of the requested ``kinds`` and every document.

    ``batch``: the tokenizer's output (``input_ids``, ``attention_mask``), padded on either
    side. Returns ``{kind: tensor (documents, layers, neurons of that kind)}`` on the CPU, in
    float32 (float64 for a float64 model), with ``.qk_paths`` saying which Q/K path each layer
    took (see :func:`qk_paths`; empty without Q/K). ``method``: ``"exact"`` | ``"generic"`` |
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
    result = Importance(out)
    result.qk_paths = dict(sorted(run.paths.items()))
    return result


class Importance(dict):
    """``importance``'s result: ``{kind: (documents, layers, neurons)}``, and ``qk_paths``
    (``{layer: "exact" | "approx" | "generic (reason)"}``), the path Q/K took in each layer."""

    qk_paths: dict[int, str]


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
        self.paths: dict[int, str] = {}  # the Q/K path each layer took (see qk_paths)

    def register(self, hooks: Hooks, layer: int) -> None:
        """Readers for ``layer``: FFN at the down projection's input, V at the o-projection's
        input, Q/K from the attention call, its raw q/k, and the block's end."""
        ad, kinds = self.adapter, self.out.keys()
        if "ffn" in kinds:
            self.expected.add((layer, "ffn"))
            w = _cached_all(list(ad.mlp_down(layer).parameters()), ("down_norm", self.dtype),
                            lambda: ad.down_weight(layer).detach().to(self.dtype).square().sum(0).sqrt().cpu())
            # what the down projection reads, as the FFN output's input: h (dense), or r * h (experts)
            hooks.read(ad.site("ffn.out", layer), lambda h, out, layer=layer, w=w: self._ffn(layer, h, w), call=True)
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

    # -- FFN: ||h_ffn[:, k]|| * ||W_down[:, k]|| (experts: ||r h_k|| over the routed tokens) --
    def _ffn(self, layer: int, h: torch.Tensor, wnorm: torch.Tensor) -> None:
        h = h.reshape(len(self.lengths), -1, h.shape[-1])  # OPT's FFN sees (batch * tokens, features)
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
        H, Hkv, G, d = ad.num_heads, ad.num_kv_heads, ad.kv_group_size, ad.head_dim
        want = [k for k in ("q", "k") if k in self.out]
        method, layout = self.method, None
        if method in ("exact", "approx"):
            layout = Layout.probe(ad, layer, ctx, cap["q"], cap["k"], self.dtype, self.cache)
            self.paths[layer] = f"generic ({layout.problem})" if layout.problem else method
            if layout.problem:
                if layout.problem not in self.warned:
                    self.warned.add(layout.problem)
                    warnings.warn(f"mwork.importance: {layout.problem}; using the slow generic path", stacklevel=2)
                method = "generic"
        else:
            self.paths[layer] = "generic"
        coupled = ad.qk_norm_scope(layer) == "projection"  # the generic path then sees every head at once
        for b, n in enumerate(self.lengths):
            dctx = doc_context(ctx, b, n, B, self.dtype)
            q_raw = doc_heads(ad, layer, "q", cap["q"], b, n, self.dtype)  # (H, n, d)
            k_raw = doc_heads(ad, layer, "k", cap["k"], b, n, self.dtype)  # (Hkv, n, d)
            imp = {k: torch.zeros(self.out[k].shape[-1], dtype=self.dtype) for k in want}
            if method == "generic" and coupled:
                res = generic_group(ad, layer, q_raw, k_raw, slice(0, H), want, dctx, self.chunk_size)
                for k in want:
                    imp[k] = res[k].reshape(-1)
            else:
                lay = layout.for_document(dctx, n) if layout is not None else None
                prep = prepare(ad, layer, lay, q_raw, k_raw) if lay is not None else None
                for g in range(Hkv):
                    heads = slice(g * G, (g + 1) * G)
                    if method == "generic":
                        res = generic_group(ad, layer, q_raw[heads], k_raw[g : g + 1], heads, want, dctx, self.chunk_size)
                    elif method == "exact":
                        res = exact_group(ad, layer, prep, g, want, lay, self.backend, self.chunk_size)
                    else:
                        res = approx_group(ad, layer, prep, heads, g, want, lay)
                    if "q" in res:
                        imp["q"][g * G * d : (g + 1) * G * d] += res["q"].reshape(-1).cpu()
                    if "k" in res:
                        imp["k"][g * d : (g + 1) * d] += res["k"].reshape(-1).cpu()
                    for k in want:  # a QK-norm over the whole projection: what other heads' channels do here
                        if f"{k}_cross" in res:
                            imp[k] += res[f"{k}_cross"]
            for k in want:
                self.out[k][b, layer] = imp[k].clamp(min=0).sqrt()
        for k in want:
            self.done.add((layer, k))


def qk_paths(model: nn.Module, batch: Mapping[str, torch.Tensor] | None = None) -> dict[int, str]:
    """Which way the exact Q/K importance takes in each layer: ``{layer: "exact"}`` where the
    closed form holds (RoPE a rotation of channel pairs, QK-norm absent, elementwise or RMS,
    the adapter's own score function), else ``"generic (reason)"``: the score function
    recomputed for every zeroed channel (exact too, and slower; ``importance`` warns).

    The checks run on real vectors: those of ``batch`` (a tokenizer output), by default a
    short document of the first token ids. One forward pass, no importance computed."""
    adapter = get_adapter(model)
    if batch is None:
        vocab = int(adapter.lm_head.weight.shape[0])
        batch = {"input_ids": (torch.arange(24) * 7 + 3).remainder(vocab)[None]}
    ids, lengths = pack_left(batch)
    ids = ids.to(input_device(model))
    dtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    captured: dict[int, dict] = {}
    hooks = Hooks()
    for layer in range(adapter.num_layers):
        store = captured.setdefault(layer, {})
        hooks.read(adapter.site("attn.in", layer), lambda ctx, st=store: st.__setitem__("ctx", ctx))
        for kind in ("q", "k"):
            hooks.read(adapter.site(f"{kind}.out", layer), lambda out, st=store, kind=kind: st.__setitem__(kind, out))
    ones = torch.ones_like(ids)
    with hooks, torch.inference_mode():
        adapter.body(input_ids=ids, attention_mask=ones, use_cache=False, **adapter.forward_kwargs(ones))
    cache: dict = {}
    paths = {}
    with torch.inference_mode():
        for layer, st in captured.items():
            layout = Layout.probe(adapter, layer, st["ctx"], st["q"], st["k"], dtype, cache)
            paths[layer] = f"generic ({layout.problem})" if layout.problem else "exact"
    return paths


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


def _cached_all(params: list[torch.Tensor], tag: tuple, compute):
    """``_cached`` for something derived from several weights (a MoE block's experts and shared
    expert): recomputed when any of them changes."""
    key = (tag, tuple((p._version, p.data_ptr()) for p in params[1:]))
    return _cached(params[0], key, compute)


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
