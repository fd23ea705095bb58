"""The hook layer: every hook mwork puts on a model is registered, placed and removed here.

**Sites.** An adapter names where things are (``Adapter.site(name, layer)``, the names in
:data:`SITES`): a site is a module, a port (its input or its output) and, for the neuron sites,
which features hold channel c (fused q/k/v projections are split this way). Reading a site's
value and writing it back is done here, once, for every family: the input is the module's first
positional argument (or its keyword, e.g. ``hidden_states``), the output is the returned tensor
(or the first element of a returned tuple).

**Verbs.** ``Hooks.read(site, fn)`` calls ``fn(value)`` on every forward call, ``Hooks.edit(site,
fn)`` replaces the value with ``fn(value)`` (with ``call=True`` at an output, ``fn(input, value)``
gets the module's input too, e.g. to add ``x @ W.T`` to a projection's output). ``mwork.capture``
(:mod:`mwork.capturing`, a client above the adapters) keeps values for the caller.
Every edit of activations by units (deactivation, steering, mean-patching: neurons, directions
or any unit kind) is placed by one client, the intervention primitive ``mwork.units.edit``;
deltas, importance, the reference scores, brute force, the lens and the log-likelihood
functions are the other clients.

**Order.** At one point (a module's input or output) there is one torch hook, whatever the
number of clients: it applies every edit in registration order, then gives every reader the
edited value. So a capture sees what the model computes, under any deactivation or delta active
at the same time, however the contexts are nested. Hooks are removed on exit, even after an
exception: the model then computes bit-identically to before.

**Computed points.** Some values clients need are no module's input or output: the hidden
states of the experts of a mixture-of-experts layer live inside one module's forward. There
an adapter gives a :class:`Computation`: that module's forward written as a function of the
module's inputs, with named internal points, op for op as the module computes. A site with a
``computation`` is such a point (its ``module`` is the computed module). When a client reads or
edits one, a forward hook on the module (run before any other hook there) computes the forward
again from the module's inputs, calling :class:`Taps` at each point -- the clients' edits,
then their reads, as at any other point -- and, when something was edited, returns that
computation's output in place of the module's. With readers only, the module's own output
stands, and the computation stops once every point read was reached. So a hooked block is
computed twice (the module's forward, then the computation): that is the cost of reading or
editing its internal points.

**Devices.** :func:`module_device` is where a module computes (accelerate's execution device
under a ``device_map``, even when its weights are offloaded to the meta device); clients put
their per-call tensors there once, not per call (:class:`DeviceCache`).

**Padding.** Two policies, used by every client that batches documents of different lengths:

* *packed* (:func:`pack_left`, :func:`packed_ids`): each row's real tokens first, run with an
  all-ones mask. A causal model never lets a token see what lies to its right, so every real
  token computes what it would alone, whatever the padding side of the input; no query row is
  fully masked (which makes float64 eager attention NaN). Importance, brute force and
  perplexity use it.
* *masked* (:func:`zero_padding`): left-padded rows with their attention mask, as generation
  needs; the hidden states of padding positions are set to zero before every decoder layer, so
  a fully masked padding row cannot turn into NaN and leak into real tokens through 0 * NaN.
  The lens uses it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

#: Site names and what they hold; ``Adapter.site`` resolves them in a model.
SITES: dict[str, str] = {
    "layer.in": "input hidden states of decoder layer i (layer 0: the embedding output)",
    "layer.out": "output hidden states of decoder layer i",
    "attn.in": "the attention block's call: its input (after the pre-norm), RoPE tables, ALiBi",
    "attn.out": "the attention block's output",
    "q.out": "raw query channels (W_Q's output, before QK-norm and RoPE)",
    "k.out": "raw key channels",
    "v.out": "raw value channels",
    "attn.ctx": "the o-projection's input: heads' outputs concatenated, head-major",
    "o.out": "the o-projection's output",
    "ffn.up.out": "the FFN input projection's output (W_up x, before any activation)",
    "ffn.act": "the FFN activation's output (act(W_gate x) in gated MLPs)",
    "ffn.in": "the FFN hidden state: the down projection's input (FFN neurons)",
    "ffn.out": "the down projection's output",
    "final_norm.in": "the final norm's input (the last hidden state before the LM head)",
}

#: Where the neurons of each kind live.
NEURON_SITES: dict[str, str] = {"ffn": "ffn.in", "q": "q.out", "k": "k.out", "v": "v.out"}

#: Sites only mixture-of-experts layers have (besides every site of :data:`SITES`, whose FFN
#: sites there give (batch, tokens, experts x expert channels), see ``mwork.models.families.moe``).
MOE_SITES: dict[str, str] = {
    "ffn.route": "the router's choice for every token: experts, their weights, the router logits (a Routing)",
    "ffn.gate.out": "the experts' gate projections' outputs (W_gate x, before the activation), per expert channel",
}


@dataclass(frozen=True, eq=False)
class Site:
    """One place in a model: ``module``'s input (``port="in"``) or output (``"out"``).

    ``index``: channel c of this site is feature ``index[c]`` of the module's tensor (fused
    projections); None: channel c is feature c. ``arg``: the keyword the input may be passed
    by. ``context``: for sites read as a whole call (``attn.in``), turns ``(args, kwargs)`` into
    the object readers get. ``tokens_from``: the model runs this module on (batch * tokens,
    features) (OPT's FFN); clients still get (batch, tokens, features), the shape of that
    site's value. ``computation``: this site is a point inside ``module``'s forward, named
    ``name`` (see :class:`Computation`); ``width``: the number of features of its tensor where the
    module cannot say (a computed point)."""

    name: str
    layer: int | None
    module: nn.Module
    port: str
    index: torch.Tensor | None = None
    arg: str | None = None
    context: Callable[[tuple, dict], Any] | None = None
    tokens_from: "Site | None" = None
    computation: "Computation | None" = None
    width: int | None = None

    def features(self, channels: torch.Tensor) -> torch.Tensor:
        """Feature indices in the module's tensor of the given channels."""
        return channels if self.index is None else self.index[channels]

    def channels(self, x: torch.Tensor) -> torch.Tensor:
        """This site's channels of the module's tensor ``x`` (..., features), in channel order."""
        if self.index is None:
            return x
        start = int(self.index[0])
        if torch.equal(self.index, torch.arange(start, start + len(self.index))):  # a plain slice: no gather
            return x[..., start:start + len(self.index)]
        return x[..., self.index.to(x.device)]

    def __repr__(self) -> str:
        where = f"[{self.layer}]" if self.layer is not None else ""
        port = "computed" if self.computation is not None else self.port
        return f"Site({self.name}{where}: {type(self.module).__name__}.{port})"


def module_site(module: nn.Module, port: str = "out", name: str = "module") -> Site:
    """A site for any module (e.g. a projection a delta trains), outside the named ones."""
    return Site(name, None, module, port)


# ---- one torch hook per point ---------------------------------------------------------------


@dataclass(eq=False)
class _Entry:
    verb: str  # "edit" | "read"
    site: Site
    fn: Callable
    call: bool  # fn gets (module input, value)


def _input_value(site: Site, args: tuple, kwargs: dict) -> tuple[Any, str | int]:
    """The module input and where it sits: a position in args or a keyword."""
    if site.arg is not None and site.arg in kwargs:
        return kwargs[site.arg], site.arg
    if args:
        return args[0], 0
    if len(kwargs) == 1:
        (name, value), = kwargs.items()
        return value, name
    raise TypeError(f"mwork hooks: cannot find the input of {type(site.module).__name__} "
                    f"(no positional argument, keywords {sorted(kwargs)})")


class _Placed:
    """The entries behind one torch hook, which is removed with the last of them."""

    entries: list[_Entry]
    handle: Any

    def remove(self, entry: _Entry) -> None:
        self.entries = [e for e in self.entries if e is not entry]
        if not self.entries and self.handle is not None:
            self.handle.remove()
            self.handle = None


class _Point(_Placed):
    """All hooks at one module port, behind one torch hook (edits first, then reads)."""

    def __init__(self, module: nn.Module, port: str):
        self.module, self.port = module, port
        self.entries: list[_Entry] = []
        self.handle: Any = None

    def add(self, entry: _Entry) -> None:
        if self.handle is None:
            if self.port == "in":
                self.handle = self.module.register_forward_pre_hook(self._pre, with_kwargs=True)
            else:
                self.handle = self.module.register_forward_hook(self._post, with_kwargs=True)
        self.entries.append(entry)

    def _apply(self, args: tuple, kwargs: dict, value: Any) -> tuple[Any, bool]:
        changed = False
        for e in self.entries:
            if e.verb == "edit":
                if not isinstance(value, torch.Tensor):
                    raise TypeError(f"mwork hooks: expected a tensor at {e.site!r}, got {type(value).__name__}")
                value = e.fn(_input_value(e.site, args, kwargs)[0], value) if e.call else e.fn(value)
                changed = True
        for e in self.entries:
            if e.verb == "read":
                if e.site.context is not None:
                    e.fn(e.site.context(args, kwargs))
                else:
                    e.fn(_input_value(e.site, args, kwargs)[0], value) if e.call else e.fn(value)
        return value, changed

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict):
        value, where = _input_value(self.entries[0].site, args, kwargs)
        value, changed = self._apply(args, kwargs, value)
        if not changed:
            return None
        if isinstance(where, int):
            return (value, *args[1:]), kwargs
        return args, {**kwargs, where: value}

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any):
        is_seq = isinstance(output, (tuple, list))
        value = output[0] if is_seq else output
        value, changed = self._apply(args, kwargs, value)
        if not changed:
            return None
        return type(output)((value, *output[1:])) if is_seq else value


# ---- computed points: values inside a module's forward ---------------------------------------


class Computation:
    """A module's forward written out with named internal points (an adapter gives one where a
    value clients need lives inside one module's forward, e.g. the experts of a
    mixture-of-experts layer). ``run`` must compute what the module computes, op for op (with
    no edit, its output equals the module's bit for bit), calling ``taps(name, value, input)``
    at each point of ``points`` and going on with what it returns. It may return None early
    once ``taps.done`` (nothing edited, every point read reached): the module's output stands."""

    module: nn.Module
    points: tuple[str, ...] = ()

    def run(self, args: tuple, kwargs: dict, taps: "Taps") -> Any:
        raise NotImplementedError


class Taps:
    """The clients' entries at the points of one call of a :class:`Computation`.

    ``taps(name, value, input)`` applies the edits at ``name`` in registration order, then gives
    the readers the edited value, and returns it; ``input`` is a zero-argument callable giving
    what ``call=True`` clients get as the point's input (only called if one is there).
    ``wants(name)``: some client is at ``name`` (else a computation may skip building its value);
    ``changed``: something was edited in this call;
    ``done``: nothing edits anywhere and every point read has been reached."""

    def __init__(self, entries: Sequence[_Entry]):
        self._at: dict[str, list[_Entry]] = {}
        for e in entries:
            self._at.setdefault(e.site.name, []).append(e)
        self._editing = any(e.verb == "edit" for e in entries)
        self._pending = set(self._at)
        self.changed = False

    def wants(self, name: str) -> bool:
        return name in self._at

    @property
    def done(self) -> bool:
        return not self._editing and not self._pending

    def __call__(self, name: str, value: Any, input: Callable[[], Any] | None = None) -> Any:
        entries = self._at.get(name)
        if not entries:
            return value
        self._pending.discard(name)
        needed = input is not None and any(e.call for e in entries)
        inp = input() if needed else None
        for e in entries:
            if e.verb == "edit":
                if not isinstance(value, torch.Tensor):
                    raise TypeError(f"mwork hooks: {e.site!r} holds a {type(value).__name__}, which cannot be edited")
                value = e.fn(inp, value) if e.call else e.fn(value)
                self.changed = True
        for e in entries:
            if e.verb == "read":
                e.fn(inp, value) if e.call else e.fn(value)
        return value


class _ComputedPoint(_Placed):
    """All hooks at the internal points of one module's :class:`Computation`, behind one torch
    forward hook placed before the module's other hooks (so readers and editors of the module's
    own output see the computed output)."""

    def __init__(self, computation: Computation):
        self.computation = computation
        self.module = computation.module
        self.entries: list[_Entry] = []
        self.handle: Any = None

    def add(self, entry: _Entry) -> None:
        if entry.site.name not in self.computation.points:
            raise ValueError(f"{type(self.computation).__name__} has no point {entry.site.name!r}; "
                             f"its points are {', '.join(self.computation.points)}")
        if self.handle is None:
            self.handle = self.module.register_forward_hook(self._post, with_kwargs=True, prepend=True)
        self.entries.append(entry)

    def _post(self, module: nn.Module, args: tuple, kwargs: dict, output: Any):
        taps = Taps(self.entries)
        value = self.computation.run(args, kwargs, taps)
        if not taps.changed:
            return None
        if isinstance(output, (tuple, list)):
            return type(output)((value, *output[1:]))
        return value


_POINTS: "weakref.WeakKeyDictionary[nn.Module, dict[str, _Point | _ComputedPoint]]" = weakref.WeakKeyDictionary()


def _point(site: Site) -> "_Point | _ComputedPoint":
    ports = _POINTS.setdefault(site.module, {})
    key = "computed" if site.computation is not None else site.port
    if key not in ports:
        ports[key] = _ComputedPoint(site.computation) if site.computation is not None else _Point(site.module, site.port)
    return ports[key]


def active_hooks(module: nn.Module) -> int:
    """How many mwork hook entries are registered on ``module`` (0 once every context exited)."""
    return sum(len(p.entries) for p in _POINTS.get(module, {}).values())


class Hooks:
    """A group of hooks registered together and removed together; a context manager.

    ``read`` / ``edit`` may be called before entering (attached on enter) or inside (attached
    at once). Leaving removes every entry of the group, in reverse order, even after an error."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self.active = False

    def _add(self, verb: str, site: Site, fn: Callable, call: bool) -> "Hooks":
        if site.port not in ("in", "out"):
            raise ValueError(f"site port must be 'in' or 'out', got {site.port!r}")
        if site.tokens_from is not None and not call:
            fn = self._unflatten(site, fn, verb)
        entry = _Entry(verb, site, fn, call)
        self._entries.append(entry)
        if self.active:
            _point(site).add(entry)
        return self

    def _unflatten(self, site: Site, fn: Callable, verb: str) -> Callable:
        """Give ``fn`` (batch, tokens, features) where the model flattens the tokens: the shape
        comes from ``site.tokens_from``, read earlier in the same forward call."""
        shape: list[torch.Size] = []

        def record(value: torch.Tensor) -> None:
            shape[:] = [value.shape[:-1]]

        self._add("read", site.tokens_from, record, False)

        def wrapped(value: torch.Tensor):
            if value.dim() != 2 or not shape:
                return fn(value)
            out = fn(value.reshape(*shape[0], value.shape[-1]))
            return out.reshape(value.shape) if verb == "edit" else out

        return wrapped

    def read(self, site: Site, fn: Callable, *, call: bool = False) -> "Hooks":
        """Call ``fn(value)`` at every forward call (``fn(module input, value)`` with ``call``;
        a site with a ``context``, such as ``attn.in``, gives ``fn(context)``)."""
        return self._add("read", site, fn, call)

    def edit(self, site: Site, fn: Callable, *, call: bool = False) -> "Hooks":
        """Replace the site's tensor by ``fn(value)`` (``fn(module input, value)`` with ``call``);
        ``fn`` must not modify its argument in place (autograd and other clients see it)."""
        return self._add("edit", site, fn, call)

    def __enter__(self) -> "Hooks":
        if self.active:
            raise RuntimeError("these hooks are already active; create a new Hooks to nest")
        self.active = True
        try:
            for entry in self._entries:
                _point(entry.site).add(entry)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for entry in reversed(self._entries):
                _point(entry.site).remove(entry)
        finally:
            self.active = False


# ---- devices --------------------------------------------------------------------------------------


def module_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: accelerate's execution device when it has one (under a
    device_map its weights may be offloaded, i.e. on the meta device), else its weights'."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", [hook]):  # accelerate's SequentialHook holds several
        where = getattr(h, "execution_device", None)
        if where is not None:
            return torch.device("cuda", where) if isinstance(where, int) else torch.device(where)
    for p in (*module.parameters(recurse=False), *module.parameters()):
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


class DeviceCache:
    """A tensor made once per (device, dtype) it is used with, e.g. a hook's index or scale vector."""

    def __init__(self, tensor: torch.Tensor, keep_dtype: bool = True):
        self.tensor, self.keep_dtype = tensor, keep_dtype
        self._made: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def on(self, like: torch.Tensor) -> torch.Tensor:
        dtype = self.tensor.dtype if self.keep_dtype else like.dtype
        key = (like.device, dtype)
        t = self._made.get(key)
        if t is None:
            t = self._made[key] = self.tensor.to(device=like.device, dtype=dtype)
        return t


# ---- widths ----------------------------------------------------------------------------


def site_width(site: Site) -> int:
    """Number of features of ``site``'s tensor in the module (for a fused projection: all of
    them, not only the site's channels); a computed point says it itself."""
    if site.width is not None:
        return int(site.width)
    return feature_width(site.module, site.port == "in")


def feature_width(module: nn.Module, on_input: bool) -> int:
    """Number of input (or output) features of a Linear-like module (nn.Linear or GPT-2 Conv1D)."""
    for attr in ("in_features" if on_input else "out_features", "nx" if on_input else "nf"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    w = module.weight  # fall back: Linear stores (out, in)
    return int(w.shape[1] if on_input else w.shape[0])


# ---- padding ------------------------------------------------------------------------------------


def pack_left(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """The *packed* policy for a tokenizer batch padded on either side: each document's tokens
    moved to the start of its row; returns (ids, lengths). Run it with an all-ones mask."""
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


def packed_ids(sequences: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """The *packed* policy for token lists: right-padded rows, to run with an all-ones mask."""
    ids = torch.full((len(sequences), max(len(s) for s in sequences)), pad_id, dtype=torch.long)
    for r, s in enumerate(sequences):
        ids[r, :len(s)] = torch.tensor(list(s), dtype=torch.long)
    return ids


def zero_padding(hooks: Hooks, adapter: Any, padding: Callable[[], torch.Tensor | None]) -> Hooks:
    """The *masked* policy: before every decoder layer, zero the hidden states where
    ``padding()`` (a (batch, tokens) bool mask, or None for nothing to do) is True."""

    def edit(x: torch.Tensor) -> torch.Tensor:
        pad = padding()
        return x if pad is None else x.masked_fill(pad[..., None], 0.0)

    for layer in range(adapter.num_layers):
        hooks.edit(adapter.site("layer.in", layer), edit)
    return hooks
