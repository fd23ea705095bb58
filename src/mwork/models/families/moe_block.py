"""A mixture-of-experts block as a :class:`~mwork.hooks.Computation`: the block's forward from its
input, op for op as transformers' eager experts compute it, with named points.

The experts of one layer are 3-D parameters inside one module (``gate_up_proj`` (E, 2I, D) laid
out [gate | up] per expert, ``down_proj`` (E, D, I)); their hidden states are no module's input or
output, so the FFN sites of a MoE layer are points of this computation. Every point but the
route is a dense tensor over *expert channels*: channel ``e * I + k`` is channel ``k`` of expert
``e``; a shared expert (Qwen2-MoE), which every token goes through, has the last ``S`` channels.
At a token, the channels of an expert the router did not choose are zero, and what an edit
writes there is ignored (the expert does not run on that token).

Points, in the order the block computes them (``input``: what ``call=True`` clients get):

* ``ffn.route``: a :class:`Routing` (read only); input: the block's input;
* ``ffn.gate.out`` / ``ffn.up.out``: (B, T, C) outputs of the experts' gate / up projections;
  input: the block's input (B, T, D);
* ``ffn.act``: (B, T, C) act(gate); input: the gate outputs;
* ``ffn.in``: (B, T, C) the hidden states h = act(gate) * up, what the down projections read
  (the FFN neurons); input: h;
* ``ffn.out``: (B, T, D) the block's output; input: the *routed* hidden states r * h (B, T, C),
  r the routing weight of the channel's expert at that token (the shared expert's sigmoid gate
  for its channels), so that the block's output is linear in it: ``out = sum_c (r h)_c W_down[:, c]``
  (+ what the other experts write), which is how a delta on W_down columns acts.

With no edit, the output equals the module's own bit for bit when the model runs transformers'
``eager`` experts (the tiny models do); the default ``grouped_mm`` kernels sum in another order,
so there an edited block differs from the unhooked one by float rounding as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from mwork.hooks import Computation, Taps

POINTS = ("ffn.route", "ffn.gate.out", "ffn.up.out", "ffn.act", "ffn.in", "ffn.out")


@dataclass
class Routing:
    """The router's choice in one MoE layer for every token of a call: ``experts`` (B, T, k) the
    chosen experts, ``weights`` (B, T, k) their routing weights (what multiplies each expert's
    output), ``logits`` (B, T, E) the router logits; ``shared_weight`` (B, T, 1): the shared
    expert's gate (sigmoid), None without one."""

    experts: torch.Tensor
    weights: torch.Tensor
    logits: torch.Tensor
    num_experts: int
    shared_weight: torch.Tensor | None = None

    def chosen(self) -> torch.Tensor:
        """(B, T, E) bool: expert e was chosen for the token."""
        out = torch.zeros(*self.experts.shape[:-1], self.num_experts, dtype=torch.bool, device=self.experts.device)
        return out.scatter(-1, self.experts, True)

    def dense_weights(self) -> torch.Tensor:
        """(B, T, E) routing weight of every expert (0 where not chosen)."""
        out = self.weights.new_zeros(*self.experts.shape[:-1], self.num_experts)
        return out.scatter(-1, self.experts, self.weights)


@dataclass(frozen=True)
class MoeParts:
    """Where the parts of one MoE layer are: ``block`` (its input: the FFN input; its output:
    the FFN output), ``router`` (called on the (tokens, D) input, returns (logits, top-k weights,
    top-k experts)), ``experts`` (``gate_up_proj``, ``down_proj``, ``act_fn``), and optionally a
    ``shared`` gated MLP every token goes through (``gate_proj``, ``up_proj``, ``down_proj``,
    ``act_fn``) whose output is multiplied by sigmoid(``shared_gate``(x))."""

    block: nn.Module
    router: nn.Module
    experts: nn.Module
    shared: nn.Module | None = None
    shared_gate: nn.Module | None = None

    @property
    def num_experts(self) -> int:
        return int(self.experts.gate_up_proj.shape[0])

    @property
    def expert_size(self) -> int:
        return int(self.experts.down_proj.shape[2])

    @property
    def shared_size(self) -> int:
        return 0 if self.shared is None else int(self.shared.down_proj.weight.shape[1])

    @property
    def channels(self) -> int:
        return self.num_experts * self.expert_size + self.shared_size

    @property
    def top_k(self) -> int:
        return int(self.router.top_k)


class MoeComputation(Computation):
    """The forward of one MoE block (see the module docstring), for the hook layer."""

    points = POINTS

    def __init__(self, parts: MoeParts):
        self.parts = parts
        self.module = parts.block

    def run(self, args: tuple, kwargs: dict, taps: Taps) -> Any:
        p = self.parts
        x = args[0] if args else next(iter(kwargs.values()))
        B, T, D = x.shape
        flat = x.reshape(-1, D)
        E, I = p.num_experts, p.expert_size
        logits, weights, experts = p.router(flat)[:3]
        shared_weight = torch.sigmoid(p.shared_gate(flat)) if p.shared_gate is not None else None
        if taps.wants("ffn.route"):
            routing = Routing(experts.reshape(B, T, -1), weights.reshape(B, T, -1), logits.reshape(B, T, -1), E,
                              None if shared_weight is None else shared_weight.reshape(B, T, 1))
            taps("ffn.route", routing, lambda: x)
        if taps.done:
            return None

        # the experts' loop of transformers' eager experts, one stage at a time over all experts
        with torch.no_grad():
            mask = F.one_hot(experts, num_classes=E + 1).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        groups: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        for e in hit:
            e = int(e[0])
            if e == E:
                continue
            pos, tok = torch.where(mask[e])
            groups.append((e, tok, pos))
        dense = _Dense(groups, flat, (B, T), I, E * I, p.channels)

        gates, ups = [], []
        for e, tok, _ in groups:
            gate, up = F.linear(flat[tok], p.experts.gate_up_proj[e]).chunk(2, dim=-1)
            gates.append(gate)
            ups.append(up)
        s_gate = s_up = None
        if p.shared is not None:
            s_gate, s_up = p.shared.gate_proj(flat), p.shared.up_proj(flat)
        gates, s_gate = dense.tap(taps, "ffn.gate.out", gates, s_gate, lambda: x)
        ups, s_up = dense.tap(taps, "ffn.up.out", ups, s_up, lambda: x)
        if taps.done:
            return None

        acts = [p.experts.act_fn(g) for g in gates]
        s_act = p.shared.act_fn(s_gate) if p.shared is not None else None
        acts, s_act = dense.tap(taps, "ffn.act", acts, s_act, lambda: dense.build(gates, s_gate))
        hs = [a * u for a, u in zip(acts, ups)]
        s_h = s_act * s_up if p.shared is not None else None
        hs, s_h = dense.tap(taps, "ffn.in", hs, s_h, lambda: dense.build(hs, s_h))
        if taps.done:
            return None

        out = torch.zeros_like(flat)
        for (e, tok, pos), h in zip(groups, hs):
            o = F.linear(h, p.experts.down_proj[e])
            o = o * weights[tok, pos, None]
            out.index_add_(0, tok, o.to(out.dtype))
        if p.shared is not None:
            out = out + shared_weight * p.shared.down_proj(s_h)
        out = out.reshape(B, T, D)

        def routed() -> torch.Tensor:
            rh = [h * weights[tok, pos, None] for (_, tok, pos), h in zip(groups, hs)]
            return dense.build(rh, shared_weight * s_h if p.shared is not None else None)

        return taps("ffn.out", out, routed)


class _Dense:
    """Per-expert tensors (rows: the tokens routed to the expert) <-> one (B, T, C) tensor."""

    def __init__(self, groups: list, flat: torch.Tensor, bt: tuple[int, int], I: int, shared_at: int, C: int):
        self.groups, self.flat, self.bt, self.I, self.shared_at, self.C = groups, flat, bt, I, shared_at, C
        self.N = flat.shape[0]

    def build(self, parts: list[torch.Tensor], shared: torch.Tensor | None) -> torch.Tensor:
        values = parts + ([shared] if shared is not None else [])
        dtype = values[0].dtype if values else self.flat.dtype
        for t in values[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        out = torch.zeros(self.N, self.C, dtype=dtype, device=self.flat.device)
        for (e, tok, _), v in zip(self.groups, parts):
            out[tok, e * self.I:(e + 1) * self.I] = v
        if shared is not None:
            out[:, self.shared_at:] = shared
        return out.view(*self.bt, self.C)

    def tap(self, taps: Taps, name: str, parts: list[torch.Tensor], shared: torch.Tensor | None,
            input: Callable[[], Any]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The clients at ``name`` see the dense tensor; where one edited it, the experts go on
        with the edited values (of the tokens routed to them), else with their own tensors."""
        if not taps.wants(name):
            return parts, shared
        value = self.build(parts, shared)
        new = taps(name, value, input)
        if new is value:
            return parts, shared
        new = new.reshape(self.N, self.C)
        parts = [new[tok, e * self.I:(e + 1) * self.I] for e, tok, _ in self.groups]
        return parts, (new[:, self.shared_at:] if shared is not None else None)
