"""mwork's own model families: one :class:`~mwork.models.adapters.Adapter` subclass per
architecture, each answering where things live in that family's modules (registered when
``mwork.models.adapters`` is imported). Every family has a tiny seeded model in
``mwork.models.tiny`` and gets every parametrised test (attention recomputed from the named
pieces, importance against brute force, deactivation against zeroed weights, layer parity).

Families with rotary positions and separate q/k/v projections derive from
:class:`LlamaAdapter`; the others (fused projections, learned or sinusoidal positions, ALiBi)
answer each question themselves. Mixture-of-experts families (:mod:`mwork.models.families.moe`)
derive from their attention family's adapter and add the experts.
"""

from __future__ import annotations

from mwork.models.adapters import register_adapter
from mwork.models.families.fused import BloomAdapter, FalconAdapter, GPTNeoXAdapter, MptAdapter, PersimmonAdapter
from mwork.models.families.gpt import GPT2Adapter, GPTBigCodeAdapter, GPTJAdapter, OPTAdapter, XGLMAdapter
from mwork.models.families.llama import (
    CohereAdapter, GraniteAdapter, LlamaAdapter, Olmo2Adapter, OlmoAdapter, Phi3Adapter, PhiAdapter, SmolLM3Adapter,
    StableLmAdapter, StarCoder2Adapter,
)
from mwork.models.families.moe import MOE_FAMILIES

FAMILIES = (
    LlamaAdapter, OlmoAdapter, Olmo2Adapter, StarCoder2Adapter, GraniteAdapter, SmolLM3Adapter, CohereAdapter,
    StableLmAdapter, PhiAdapter, Phi3Adapter, GPTNeoXAdapter, PersimmonAdapter, BloomAdapter, FalconAdapter,
    MptAdapter, GPT2Adapter, GPTBigCodeAdapter, GPTJAdapter, OPTAdapter, XGLMAdapter, *MOE_FAMILIES,
)

for _cls in FAMILIES:
    register_adapter(_cls)

__all__ = [cls.__name__ for cls in FAMILIES]
