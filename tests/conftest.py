"""Shared test fixtures: the tiny random models of every supported family, built once a session.

Which families a test runs on -- the rule:

* ``tiny`` / ``tiny64`` (over ``tiny_alias``): EVERY dense family (``ALL_TINY``). Only for tests
  whose assertion is about each family: that an adapter names the right modules, sites and
  channels, that attention / importance / deactivation / perplexity / padding are exact for that
  family's layout. (tests/test_moe.py runs its checks on every MoE family, ``MOE_ALIASES``.)
* ``rep_tiny`` / ``rep_tiny64`` (over ``rep_alias``): the ``REPRESENTATIVE`` families, one per
  layout, a mixture of experts included. For tests of family-independent logic (how an edit
  composes, unwinds, restricts, is restored, runs under generate) that should still see each
  layout, not every family. ``rep_dense_tiny`` / ``rep_dense_tiny64`` (``REPRESENTATIVE_DENSE``):
  the same without the MoE one, for such tests whose ground truth edits dense weights.
* one named model: ``shared_tiny(alias, dtype)`` inside a test, or ``tiny_models.shared(alias,
  dtype)`` in a module-scoped fixture.

Every model is built once per (alias, dtype) a session and the SAME object is handed to every test
that asks for it (a fresh tokenizer each time: tests set ``padding_side`` and post-processors).
A test that changes a model (edits or zeroes weights in place, trains, freezes parameters, leaves
gradients, hooks or train mode behind, changes its config) must take its own copy:
``fresh_tiny(alias, dtype)``. This is checked, not trusted: after every test, each shared model
handed out in its module is compared with a pristine copy (every parameter and buffer bit for bit,
dtype, gradients, requires_grad, train mode, hooks, config); a changed one fails the test that
changed it, naming it, and is replaced by a clean copy so that later tests are unaffected.

Tiny-model tests run torch on one thread: their ops are too small to gain from more, and
thread hand-offs dominate on a busy 2-core machine. Tests of the real model get all cores back
(the ``gemma`` fixture).

Data and network: tests read data from ``TEST_DATA`` (tests/data: small XQuAD / MGSM subsets, see
its README), never from a folder outside the checkout, and never reach the network: the Hugging
Face libraries are put offline (here and in subprocesses) and any socket connection or name lookup
that is not loopback or a Unix socket is refused and fails the test that tried
(tests/test_network_guard.py)."""

from __future__ import annotations

import copy
import ipaddress
import os
import socket
from pathlib import Path
from typing import Callable

import pytest

# ---- data and the network: the tests need neither a workspace folder nor a connection ------------

#: the data subsets the tests read (XQuAD, MGSM in the released layout; tests/data/README.md)
TEST_DATA = Path(__file__).resolve().parent / "data"
_GIVEN_DATA = os.environ.pop("MWORK_DATA", None)  # taken away: product defaults never depend on the shell
#: a full data folder, when $MWORK_DATA names one: tests may run larger checks on it, none needs it
FULL_DATA = Path(_GIVEN_DATA).resolve() if _GIVEN_DATA and (Path(_GIVEN_DATA) / "xquad").is_dir() else None
#: the folders data tests run on: TEST_DATA, and FULL_DATA when there is one
DATA_ROOTS = [TEST_DATA] + ([FULL_DATA] if FULL_DATA not in (None, TEST_DATA) else [])
#: Hugging Face libraries offline, before they are imported; subprocesses inherit it
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
os.environ.update(OFFLINE_ENV)


class NetworkBlocked(ConnectionRefusedError):
    """A test tried to reach the network (anything but loopback or a Unix socket)."""


#: the blocked attempts not yet reported (the test that made them fails at its teardown)
NETWORK_ATTEMPTS: list[str] = []
_REAL_SOCKET = {"getaddrinfo": socket.getaddrinfo, "connect": socket.socket.connect,
                "connect_ex": socket.socket.connect_ex}


def is_loopback(host) -> bool:
    """Whether a host name or address is this machine (loopback, unspecified, localhost)."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    host = host.strip("[]").split("%")[0].lower()
    if host in ("", "localhost", "localhost.localdomain", "ip6-localhost") or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return ip.is_loopback or ip.is_unspecified


def _block(what: str) -> None:
    NETWORK_ATTEMPTS.append(what)
    raise NetworkBlocked(f"tests run offline: {what} blocked (tests/conftest.py); use tests/data, a fake or loopback")


def _getaddrinfo(host, *args, **kwargs):
    if not is_loopback(host):
        _block(f"getaddrinfo({host!r})")
    return _REAL_SOCKET["getaddrinfo"](host, *args, **kwargs)


def _remote(sock: socket.socket, address) -> bool:
    return sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and not is_loopback(address[0])


def _connect(self, address):
    if _remote(self, address):
        _block(f"connect to {address!r}")
    return _REAL_SOCKET["connect"](self, address)


def _connect_ex(self, address):
    if _remote(self, address):
        _block(f"connect to {address!r}")
    return _REAL_SOCKET["connect_ex"](self, address)


# socket.create_connection and asyncio resolve through socket.getaddrinfo, looked up at each call
socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex = _getaddrinfo, _connect, _connect_ex


def check_network(test: str) -> None:
    """Fail ``test`` if a network attempt was blocked since the last check (also one that the code
    under test caught and shrugged off)."""
    if NETWORK_ATTEMPTS:
        tried = "; ".join(dict.fromkeys(NETWORK_ATTEMPTS))
        NETWORK_ATTEMPTS.clear()
        pytest.fail(f"{test} tried to reach the network ({tried}); tests must pass offline", pytrace=False)


@pytest.fixture(autouse=True)
def _no_network(request):
    yield
    check_network(request.node.nodeid)


import torch  # noqa: E402  (after the offline variables)

torch.set_num_threads(1)

import mwork  # noqa: E402  (after the thread count)
from mwork.models.tiny import TINY_ALIASES  # noqa: E402

ALL_TINY = list(TINY_ALIASES)
#: one family per layout: separate q/k/v and gate/up (llama); sliding windows, QK-norm, layer types
#: (gemma3); fused qkv_proj and gate_up_proj (phi3); Conv1D and learned positions (gpt2); fused
#: per-head query_key_value and ALiBi (bloom); parallel attention + FFN, partial RoPE (gpt_neox);
#: mixture of experts with a shared expert (qwen2_moe)
REPRESENTATIVE = ["tiny-random-llama", "tiny-random-gemma3", "tiny-random-phi3", "tiny-random-gpt2",
                  "tiny-random-bloom", "tiny-random-gpt_neox", "tiny-random-qwen2_moe"]
REPRESENTATIVE_DENSE = [a for a in REPRESENTATIVE if a in TINY_ALIASES]

Pair = tuple[torch.nn.Module, object]
Builder = Callable[[], torch.nn.Module]


# transformers installs these itself, once, the first time a model is asked for its hidden states
_TRANSFORMERS_CAPTURE = "transformers.utils.output_capturing"

Key = tuple[str, torch.dtype]


class _Snapshot:
    """What a pristine model is: compared with a shared copy after each test that took it."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.cls = type(model)
        self.tensors = {f"parameter {n}": t for n, t in model.named_parameters()}
        self.tensors.update({f"buffer {n}": t for n, t in model.named_buffers()})
        self.requires_grad = {n: t.requires_grad for n, t in model.named_parameters()}
        self.config = copy.deepcopy(vars(model.config))
        self.name = getattr(model, "_mwork_name", None)

    def difference(self, model: torch.nn.Module) -> str | None:
        """What differs in ``model`` (None: nothing)."""
        if type(model) is not self.cls:
            return "its class"
        tensors = {f"parameter {n}": t for n, t in model.named_parameters()}
        tensors.update({f"buffer {n}": t for n, t in model.named_buffers()})
        if tensors.keys() != self.tensors.keys():
            return "its parameters or buffers (some added or removed)"
        for name, t in tensors.items():
            p = self.tensors[name]
            if t.dtype != p.dtype or t.shape != p.shape or t.device != p.device:
                return f"{name}'s dtype, shape or device"
            if not torch.equal(t, p):
                return f"{name}'s values"
        for name, t in model.named_parameters():
            if t.grad is not None or t.requires_grad != self.requires_grad[name]:
                return f"parameter {name}'s gradient or requires_grad"
        for m in model.modules():
            if m.training:
                return "its train mode"
            for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks):
                if any(getattr(h, "__module__", None) != _TRANSFORMERS_CAPTURE for h in hooks.values()):
                    return "its torch hooks (some were left behind)"
        if vars(model.config) != self.config:
            return "its config"
        if getattr(model, "_mwork_name", None) != self.name:
            return "its _mwork_name"
        return None


def _captures(model: torch.nn.Module) -> bool:
    """Whether transformers has installed its output-capturing hooks (a freshly loaded model has none)."""
    return bool(getattr(model, "_output_capturing_hooks_installed", False)) or any(
        getattr(h, "__module__", None) == _TRANSFORMERS_CAPTURE
        for m in model.modules() for h in m._forward_hooks.values())


class TinyModels:
    """The session's tiny models: a pristine model per (alias, dtype), never handed out, the shared
    copy tests read, and which shared copies the running module and test hold."""

    def __init__(self) -> None:
        self._pristine: dict[Key, torch.nn.Module] = {}
        self._snapshots: dict[Key, _Snapshot] = {}
        self._shared: dict[Key, torch.nn.Module] = {}
        self._tokenizer = None
        self.module_held: dict[int, tuple[Key, torch.nn.Module]] = {}  # checked after each test of the module
        self.test_held: dict[int, tuple[Key, torch.nn.Module]] = {}  # checked after the test
        self.in_test = False

    def _pristine_model(self, key: Key, build: Builder | None = None) -> torch.nn.Module:
        if key not in self._pristine:
            if build is None:
                self._pristine[key], tok = mwork.load_model(key[0], dtype=key[1], device="cpu")
                if self._tokenizer is None:
                    self._tokenizer = tok  # every tiny alias has the same tokenizer
            else:
                self._pristine[key] = build()
            self._snapshots[key] = _Snapshot(self._pristine[key])
        return self._pristine[key]

    def tokenizer(self):
        """A tokenizer of its own (the tiny tokenizer is the same for every alias)."""
        if self._tokenizer is None:
            self._pristine_model(("tiny-random-llama", torch.float32))
        return copy.deepcopy(self._tokenizer)

    def shared(self, alias: str, dtype: torch.dtype = torch.float32, build: Builder | None = None) -> Pair:
        """(the shared model, a tokenizer of its own); the test must leave the model unchanged.
        ``build``: for a model that is no alias (a variant config of the tests), what makes it
        (``alias`` is then the name it is cached under, and the tokenizer the tiny one)."""
        key = (alias, dtype)
        if key not in self._shared:
            self._shared[key] = copy.deepcopy(self._pristine_model(key, build))
        model = self._shared[key]
        (self.test_held if self.in_test else self.module_held)[id(model)] = (key, model)
        return model, self.tokenizer()

    def fresh(self, alias: str, dtype: torch.dtype = torch.float32, build: Builder | None = None) -> Pair:
        """(a model of the caller's own, equal to ``mwork.load_model(alias, dtype)``, a tokenizer)."""
        return copy.deepcopy(self._pristine_model((alias, dtype), build)), self.tokenizer()

    def _renew(self, key: Key, model: torch.nn.Module) -> None:
        if self._shared.get(key) is model:
            self._shared[key] = copy.deepcopy(self._pristine[key])

    def check(self, test: str) -> None:
        """Fail ``test`` if it changed a shared model it or its module holds, and renew that model.

        transformers' output-capturing hooks are no change of the test's; but a model that has them
        is renewed too, so that the next test gets one like a freshly loaded model. (The one it
        replaces stays checked until the module ends: a fixture of the module may hold it.)"""
        changed = []
        held = {**self.module_held, **self.test_held}
        for ident, (key, model) in held.items():
            what = self._snapshots[key].difference(model)
            if what is not None:
                changed.append(f"{key[0]} ({key[1]}): {what}")
                self.module_held.pop(ident, None)  # reported once
                self._renew(key, model)
            elif ident in self.test_held and ident not in self.module_held and _captures(model):
                self.module_held[ident] = (key, model)
                self._renew(key, model)
        self.test_held.clear()
        if changed:
            pytest.fail(f"{test} changed a shared tiny model -- " + "; ".join(changed)
                        + ". Take a model of its own with fresh_tiny(alias, dtype).", pytrace=False)

    def end_module(self) -> None:
        """Renew the module's models that transformers installed hooks on; forget what it held."""
        for key, model in self.module_held.values():
            if _captures(model):
                self._renew(key, model)
        self.module_held.clear()


_MODELS = TinyModels()


@pytest.fixture(scope="session")
def tiny_models() -> TinyModels:
    """The session's tiny models (for module-scoped fixtures: ``tiny_models.shared(alias, dtype)``)."""
    return _MODELS


@pytest.fixture(scope="module", autouse=True)
def _module_models():
    yield
    _MODELS.end_module()


@pytest.fixture(autouse=True)
def _shared_models_stay_unchanged(request):
    """Runs before every other function-scoped fixture of a test and checks after all of them."""
    _MODELS.in_test = True
    yield
    _MODELS.in_test = False
    _MODELS.check(request.node.nodeid)


@pytest.fixture
def shared_tiny() -> Callable[..., Pair]:
    """``shared_tiny(alias, dtype=torch.float32)``: (the shared model, a tokenizer), read-only."""
    return _MODELS.shared


@pytest.fixture
def fresh_tiny() -> Callable[..., Pair]:
    """``fresh_tiny(alias, dtype=torch.float32)``: (a model of the test's own, a tokenizer), for
    tests that edit weights, train, or otherwise change the model."""
    return _MODELS.fresh


@pytest.fixture(params=ALL_TINY)
def tiny_alias(request) -> str:
    return request.param


@pytest.fixture
def tiny(tiny_alias) -> Pair:
    """(model, tokenizer) of each dense tiny family, float32 (shared: do not change it)."""
    return _MODELS.shared(tiny_alias, torch.float32)


@pytest.fixture
def tiny64(tiny_alias) -> Pair:
    """(model, tokenizer) of each dense tiny family in float64, for exact comparisons (shared)."""
    return _MODELS.shared(tiny_alias, torch.float64)


@pytest.fixture(params=REPRESENTATIVE)
def rep_alias(request) -> str:
    return request.param


@pytest.fixture
def rep_tiny(rep_alias) -> Pair:
    """(model, tokenizer) of each REPRESENTATIVE family, float32 (shared: do not change it)."""
    return _MODELS.shared(rep_alias, torch.float32)


@pytest.fixture
def rep_tiny64(rep_alias) -> Pair:
    """(model, tokenizer) of each REPRESENTATIVE family in float64 (shared: do not change it)."""
    return _MODELS.shared(rep_alias, torch.float64)


@pytest.fixture(params=REPRESENTATIVE_DENSE)
def rep_dense_alias(request) -> str:
    return request.param


@pytest.fixture
def rep_dense_tiny(rep_dense_alias) -> Pair:
    """(model, tokenizer) of each dense REPRESENTATIVE family, float32, for tests whose ground truth
    edits dense weights (shared: do not change it)."""
    return _MODELS.shared(rep_dense_alias, torch.float32)


@pytest.fixture
def rep_dense_tiny64(rep_dense_alias) -> Pair:
    """(model, tokenizer) of each dense REPRESENTATIVE family in float64 (shared: do not change it)."""
    return _MODELS.shared(rep_dense_alias, torch.float64)


@pytest.fixture(scope="session")
def gemma_model():
    """The real default model (converted once and cached)."""
    return mwork.load_model("gemma-3-270m", device="cpu")


@pytest.fixture
def gemma(gemma_model):
    """(model, tokenizer) of the real default model, with every core; mark such tests slow."""
    torch.set_num_threads(os.cpu_count() or 1)
    yield gemma_model
    torch.set_num_threads(1)
