"""The one place that turns a user message into a chat model's input text.

Instruction-tuned models are trained on their tokenizer's chat template; evaluating them on bare
text measures a format they never saw. Every prompt that is meant for a chat model goes through
:func:`chat_prompt`, so the template is applied the same way everywhere (``mwork confusion run
--chat``, and any other job that offers a chat format)."""

from __future__ import annotations

from typing import Any


def model_label(tokenizer: Any) -> str:
    """The name a message about ``tokenizer``'s model shows (its ``name_or_path``, else its class)."""
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template (a string, or a dict of named ones)."""
    return bool(getattr(tokenizer, "chat_template", None))


def require_chat_template(tokenizer: Any, *, model: str | None = None) -> None:
    """Raise a ValueError naming the model (``model``, else the tokenizer's name) when its
    tokenizer has no chat template."""
    if not has_chat_template(tokenizer):
        raise ValueError(f"{model or model_label(tokenizer)} has no chat template; use the few-shot/plain format or a "
                         "chat model")


def chat_prompt(tokenizer: Any, message: str, *, system: str | None = None) -> str:
    """``message`` as one user turn (after an optional ``system`` turn) in ``tokenizer``'s chat
    template, ending with the generation prompt of the assistant's turn: the text to tokenize
    (with ``add_special_tokens=False``: the template writes the special tokens itself)."""
    require_chat_template(tokenizer)
    turns = ([{"role": "system", "content": system}] if system is not None else [])
    turns.append({"role": "user", "content": message})
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
