"""Shared test fixtures: the tiny random models of every supported family."""

from __future__ import annotations

import pytest
import torch

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
def gemma():
    """The real default model (converted once and cached). Marked tests are slow."""
    return mwork.load_model("gemma-3-270m", device="cpu")
