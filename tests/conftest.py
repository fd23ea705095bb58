"""Shared test fixtures: the tiny random models of every supported family.

Tiny-model tests run torch on one thread: their ops are too small to gain from more, and
thread hand-offs dominate on a busy 2-core machine. Tests of the real model get all cores back
(the ``gemma`` fixture)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)

import mwork
from mwork.models.tiny import TINY_ALIASES

ALL_TINY = list(TINY_ALIASES)


@pytest.fixture(params=ALL_TINY)
def tiny_alias(request) -> str:
    return request.param


@pytest.fixture
def tiny(tiny_alias):
    """(model, tokenizer) of each tiny family, float32."""
    return mwork.load_model(tiny_alias, device="cpu")


@pytest.fixture
def tiny64(tiny_alias):
    """(model, tokenizer) of each tiny family in float64, for exact comparisons."""
    return mwork.load_model(tiny_alias, dtype=torch.float64, device="cpu")


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
