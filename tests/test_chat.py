"""mwork.chat: a user message in a tokenizer's chat template, and a clear error when there is none."""

from __future__ import annotations

import pytest
import torch

from mwork.chat import chat_prompt, has_chat_template

#: a small template of the usual shape: turns between markers, then the assistant's opening
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture
def tokenizer(tiny_models):
    return tiny_models.tokenizer()


def test_chat_prompt_applies_the_template(tokenizer):
    tokenizer.chat_template = TEMPLATE
    assert has_chat_template(tokenizer)
    assert chat_prompt(tokenizer, "Bonjour ?") == "<|user|>Bonjour ?<|end|>\n<|assistant|>"
    assert chat_prompt(tokenizer, "Bonjour ?", system="Réponds en français.") == (
        "<|system|>Réponds en français.<|end|>\n<|user|>Bonjour ?<|end|>\n<|assistant|>")


def test_chat_prompt_feeds_a_tiny_model(shared_tiny):
    model, tokenizer = shared_tiny("tiny-random-llama")
    tokenizer.chat_template = TEMPLATE
    text = chat_prompt(tokenizer, "Wie geht's?")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    assert tokenizer.decode(ids[0]) == text
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape == (1, ids.shape[1] + 2)


def test_no_template_is_a_clear_error_naming_the_model(tokenizer):
    tokenizer.chat_template = None
    tokenizer.name_or_path = "tiny-random-llama"
    assert not has_chat_template(tokenizer)
    with pytest.raises(ValueError, match=r"tiny-random-llama has no chat template; use the few-shot/plain format "
                                         r"or a chat model"):
        chat_prompt(tokenizer, "Hello")
