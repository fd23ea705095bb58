"""Tiny seeded random models of every supported family, built from configs with no download.

They are for tests and quick tries: small enough to run brute-force checks in float64, and
shaped to exercise every feature the adapters handle (GQA and MQA, QK-norm per head and over
the whole projection, sliding windows, soft-capping, partial and interleaved RoPE, NoPE
layers, ALiBi, learned and sinusoidal positions, fused projections, parallel blocks,
post-norms, embedding / residual / logit multipliers; mixture-of-experts blocks with and
without a shared expert, renormalised or not). The same alias always gives the same weights and
the same tokenizer.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SEED = 0
VOCAB_SIZE = 512

# A few sentences per language, so the tiny tokenizer has multi-byte merges for each script.
_TOKENIZER_TEXT = """
The quick brown fox jumps over the lazy dog. Language models read and write many languages.
Le renard brun saute par-dessus le chien paresseux. Les modèles de langue lisent le français.
El rápido zorro marrón salta sobre el perro perezoso. Los modelos leen muchas lenguas.
Der schnelle braune Fuchs springt über den faulen Hund. Sprachmodelle lesen viele Sprachen.
Быстрая коричневая лиса прыгает через ленивую собаку. Модели читают много языков.
敏捷的棕色狐狸跳过了懒狗。语言模型可以阅读和书写多种语言。
素早い茶色の狐が怠け者の犬を飛び越える。言語モデルは多くの言語を読む。
빠른 갈색 여우가 게으른 개를 뛰어넘는다. 언어 모델은 많은 언어를 읽는다.
Quick numbers: 1, 2, 3, 10, 42, 100, 2024. Questions? Answers! (yes) [no] {maybe}.
"""


def _common(**kw: Any) -> dict[str, Any]:
    base = dict(vocab_size=VOCAB_SIZE, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    base.update(kw)
    return base


_LLAMA_SHAPE = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=1024,
)



def _rope(**kw: Any) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": 10000.0, **kw}


# alias suffix -> (config class name, config kwargs); the mixture-of-experts ones are added below
TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", _common(**_LLAMA_SHAPE)),
    "mistral": ("MistralConfig", _common(**_LLAMA_SHAPE, sliding_window=8)),
    "qwen2": ("Qwen2Config", _common(**_LLAMA_SHAPE)),
    "qwen3": ("Qwen3Config", _common(**_LLAMA_SHAPE)),
    "gemma": ("GemmaConfig", _common(**_LLAMA_SHAPE, hidden_activation="gelu_pytorch_tanh")),
    "gemma2": (
        "Gemma2Config",
        _common(
            **_LLAMA_SHAPE,
            sliding_window=8,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=30.0,
            query_pre_attn_scalar=16,
        ),
    ),
    "gemma3": (
        "Gemma3TextConfig",
        _common(
            **_LLAMA_SHAPE,
            sliding_window=8,
            query_pre_attn_scalar=16,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        ),
    ),
    "gpt2": ("GPT2Config", _common(n_embd=64, n_layer=3, n_head=4, n_positions=1024, n_inner=96)),
    "bloom": ("BloomConfig", _common(hidden_size=64, n_layer=3, n_head=4)),
    "gpt_neox": (
        "GPTNeoXConfig",
        _common(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        ),
    ),
    # learned / sinusoidal positions added outside any module; q scaled inside the attention;
    # OPT: project_in / project_out between a narrower embedding and the hidden size
    "opt": ("OPTConfig", _common(hidden_size=64, num_hidden_layers=3, ffn_dim=96, num_attention_heads=4,
                                 word_embed_proj_dim=48, max_position_embeddings=1024)),
    "xglm": ("XGLMConfig", _common(d_model=64, num_layers=3, attention_heads=4, ffn_dim=96,
                                   max_position_embeddings=1024, scale_embedding=True)),
    # partial RoPE (rotate-half), parallel attention + FFN, GQA
    "phi": ("PhiConfig", _common(**_LLAMA_SHAPE, rope_parameters=_rope(partial_rotary_factor=0.5))),
    # fused qkv_proj and gate_up_proj, partial RoPE (as Phi-4-mini), a sliding window everywhere
    "phi3": ("Phi3Config", _common(**_LLAMA_SHAPE, sliding_window=8, rope_parameters=_rope(partial_rotary_factor=0.75))),
    # interleaved RoPE, parallel blocks, logit_scale; Cohere-2: sliding local layers with RoPE, global NoPE
    "cohere": ("CohereConfig", _common(**_LLAMA_SHAPE, logit_scale=0.25)),
    "cohere2": ("Cohere2Config", _common(**_LLAMA_SHAPE, logit_scale=0.25, sliding_window=8,
                                         layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
    # OLMo: clip_qkv clamps the projections in place; OLMo-2: QK-norm over the whole projection, post-norms
    "olmo": ("OlmoConfig", _common(**_LLAMA_SHAPE, clip_qkv=0.2)),
    "olmo2": ("Olmo2Config", _common(**_LLAMA_SHAPE)),
    # OLMo-3: OLMo-2's projection-wide QK-norm, sliding local layers, a RoPE table per layer type
    "olmo3": ("Olmo3Config", _common(**_LLAMA_SHAPE, sliding_window=8,
                                     layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                     rope_parameters={"sliding_attention": _rope(),
                                                      "full_attention": _rope(rope_theta=500000.0)})),
    # partial RoPE on a quarter of each head, q/k/v biases, LayerNorms
    "stablelm": ("StableLmConfig", _common(**_LLAMA_SHAPE, use_qkv_bias=True, rope_parameters=_rope(partial_rotary_factor=0.25))),
    # new_decoder_architecture: fused query_key_value per KV group (GQA), two LayerNorms in parallel
    "falcon": ("FalconConfig", _common(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_kv_heads=2,
                                       new_decoder_architecture=True, ffn_hidden_size=96, bias=True,
                                       max_position_embeddings=1024)),
    # interleaved RoPE on the first 8 of 16 channels per head, parallel blocks, biased LM head
    "gptj": ("GPTJConfig", _common(n_embd=64, n_layer=3, n_head=4, rotary_dim=8, n_inner=96, n_positions=1024)),
    "starcoder2": ("Starcoder2Config", _common(**_LLAMA_SHAPE, sliding_window=8, use_bias=True)),
    # embedding / attention / residual multipliers and logits scaling
    "granite": ("GraniteConfig", _common(**_LLAMA_SHAPE, embedding_multiplier=6.0, attention_multiplier=0.0625,
                                         residual_multiplier=0.5, logits_scaling=4.0)),
    # layer 1 uses no positions (NoPE), a sliding window on the others
    "smollm3": ("SmolLM3Config", _common(**_LLAMA_SHAPE, no_rope_layers=[1, 0, 1], use_sliding_window=True,
                                         sliding_window=8, layer_types=["sliding_attention", "full_attention",
                                                                        "sliding_attention"])),
    # multi-query attention: c_attn laid out [Q | k | v], learned positions
    "gpt_bigcode": ("GPTBigCodeConfig", _common(n_embd=64, n_layer=3, n_head=4, n_inner=96, n_positions=1024,
                                                multi_query=True)),
    # ALiBi from MPT's key-only table, fused Wqkv
    "mpt": ("MptConfig", _common(d_model=64, n_heads=4, n_layers=3, max_seq_len=1024)),
    # LayerNorm QK-norm (not of the RMS form: the generic Q/K path), fused per-head qkv, partial RoPE
    "persimmon": ("PersimmonConfig", _common(hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                             num_attention_heads=4, max_position_embeddings=1024)),
}

# Mixture-of-experts families: 4 experts of 16 channels, top-2 (C = 64 FFN channels per layer).
_MOE_SHAPE = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=1024)
MOE_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    # softmax top-2 renormalised, a sliding window on every layer
    "mixtral": ("MixtralConfig", _common(**_MOE_SHAPE, intermediate_size=16, num_local_experts=4,
                                         num_experts_per_tok=2, sliding_window=8)),
    # a shared expert of 24 channels behind a sigmoid gate (C = 88), routing weights not renormalised,
    # q/k/v biases, a sliding window on layer 0 only
    "qwen2_moe": ("Qwen2MoeConfig", _common(**_MOE_SHAPE, intermediate_size=96, moe_intermediate_size=16,
                                            shared_expert_intermediate_size=24, num_experts=4, num_experts_per_tok=2,
                                            norm_topk_prob=False, use_sliding_window=True, sliding_window=8,
                                            max_window_layers=1)),
    # per-head QK-norm, renormalised top-2
    "qwen3_moe": ("Qwen3MoeConfig", _common(**_MOE_SHAPE, intermediate_size=96, moe_intermediate_size=16,
                                            num_experts=4, num_experts_per_tok=2, norm_topk_prob=True)),
    # QK-norm over the whole projection, routing weights not renormalised
    "olmoe": ("OlmoeConfig", _common(**_MOE_SHAPE, intermediate_size=16, num_experts=4, num_experts_per_tok=2,
                                     norm_topk_prob=False)),
    # LayerNorms, biased attention and LM head, sparsemixer top-2
    "phimoe": ("PhimoeConfig", _common(**_MOE_SHAPE, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2,
                                       attention_bias=True, lm_head_bias=True)),
    # Granite's multipliers; softmax over the chosen experts' logits
    "granitemoe": ("GraniteMoeConfig", _common(**_MOE_SHAPE, intermediate_size=16, num_local_experts=4,
                                               num_experts_per_tok=2, embedding_multiplier=6.0,
                                               attention_multiplier=0.0625, residual_multiplier=0.5,
                                               logits_scaling=4.0)),
}

#: the dense families' aliases (every parametrised test of the dense families runs on them)
TINY_ALIASES: tuple[str, ...] = tuple(f"tiny-random-{name}" for name in TINY_CONFIGS)
#: the mixture-of-experts families' aliases (tests/test_moe.py runs every check on them)
MOE_ALIASES: tuple[str, ...] = tuple(f"tiny-random-{name}" for name in MOE_CONFIGS)
TINY_CONFIGS.update(MOE_CONFIGS)


def tiny_model_types() -> dict[str, str]:
    """``{tiny alias: model_type}`` (from the config classes; no model is built)."""
    return {f"tiny-random-{name}": getattr(transformers, cls_name).model_type
            for name, (cls_name, _) in TINY_CONFIGS.items()}


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained (deterministically) on a short multilingual text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TOKENIZER_TEXT.strip().splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", padding_side="right"
    )


def tiny_model(arch: str, dtype: torch.dtype = torch.float32) -> transformers.PreTrainedModel:
    """The tiny random model of family ``arch`` (a key of TINY_CONFIGS), seeded."""
    cls_name, kwargs = TINY_CONFIGS[arch]
    return build_tiny(cls_name, kwargs, dtype)


def build_tiny(cls_name: str, kwargs: dict[str, Any], dtype: torch.dtype = torch.float32) -> transformers.PreTrainedModel:
    """A seeded random causal LM from ``transformers.<cls_name>(**kwargs)``, eager attention,
    norms and biases moved away from their initial values (the tiny aliases and their variants
    in the tests)."""
    config = getattr(transformers, cls_name)(**kwargs)
    # eager attention: exact in float64 and no kernel-dependent rounding in brute-force tests
    config._attn_implementation = "eager"
    if getattr(config, "num_experts_per_tok", None):
        # eager experts too: the hook layer's computation of a MoE block is then bit-identical to the model's
        config._experts_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        # random init leaves norms at identity; perturb them so tests see their effect
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln" in name):
                p.data.add_(0.1 * torch.randn_like(p))
            if name.endswith("bias"):
                p.data.add_(0.05 * torch.randn_like(p))
    model = model.to(dtype).eval()
    if config.model_type == "xglm" and dtype == torch.float64:
        _default_dtype_in_forward(model.model, dtype)
    return model


def _default_dtype_in_forward(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Run ``module``'s forward with ``dtype`` as torch's default dtype. transformers' XGLM
    attention clamps its scores with ``torch.full((), finfo(scores.dtype).min)``, a tensor of the
    default dtype (float32), which overflows for float64 scores; only the float64 tiny model
    needs this, for the exact float64 checks of the tests. (A subclass, not a patched method:
    copies of the model keep it, and compute with their own weights.)"""
    base = type(module)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        before = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            return base.forward(self, *args, **kwargs)
        finally:
            torch.set_default_dtype(before)

    module.__class__ = type(base.__name__, (base,), {"forward": forward, "__module__": base.__module__})


def tiny_alias_builder(alias: str) -> Callable[[torch.dtype], transformers.PreTrainedModel] | None:
    prefix = "tiny-random-"
    if alias.startswith(prefix) and alias[len(prefix):] in TINY_CONFIGS:
        arch = alias[len(prefix):]
        return lambda dtype: tiny_model(arch, dtype)
    return None
