"""What a model is given for one test prompt, in the benchmark's two formats.

* **Base models** get the paper's few-shot text: each user turn as ``Q: {message}\\n``, each
  chatbot turn as ``A: {message}\\n\\n``, the test prompt as the last user turn followed by
  ``A:``, and newlines stripped from both ends of the whole. With 0 shots that is
  ``Q: {prompt}\\nA:``; the shots are the first 1 or 5 user/chatbot pairs of the benchmark's
  ``few_shot_examples.json`` for the task and language (the format of the benchmark's
  ``few_shot_prompting.py``; a base model that goes on to a next ``\\nQ:`` is cut there by the
  scorer).
* **Chat models** get the test prompt as one user turn in their tokenizer's chat template
  (:func:`mwork.chat.chat_prompt`), as they are used; the few-shot turns are the base-model format
  and are not mixed into a chat.

The ``prompt`` lever puts an instruction naming the expected language (``Reply in French.``, the
benchmark's own cross-lingual phrasing) before the test prompt, in either format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from mwork.chat import chat_prompt
from mwork.confusion.data import LANGUAGE_NAMES

USER, CHATBOT = "User", "Chatbot"


def turns_text(turns: Sequence[Mapping[str, str]]) -> str:
    """The base-model text of a conversation (module docstring): ``Q:``/``A:`` blocks, ``A:``
    after a last user turn, newlines stripped from both ends."""
    parts = []
    for turn in turns:
        if turn["role"] == USER:
            parts.append(f"Q: {turn['message']}\n")
        elif turn["role"] == CHATBOT:
            parts.append(f"A: {turn['message']}\n\n")
        else:
            raise ValueError(f"a turn's role is {USER} or {CHATBOT}, got {turn['role']!r}")
    if turns and turns[-1]["role"] == USER:
        parts.append("A:")
    return "".join(parts).strip("\n")


def few_shot_prompt(shots: Sequence[Mapping[str, str]], message: str) -> str:
    """The base-model text of ``message`` after the few-shot turns ``shots``."""
    return turns_text([*shots, {"role": USER, "message": message}])


def instruction(language: str) -> str:
    """The ``prompt`` lever's instruction: the expected language, named."""
    return f"Reply in {LANGUAGE_NAMES.get(language, language)}."


def with_instruction(message: str, language: str) -> str:
    """``message`` with the instruction naming ``language`` before it."""
    return f"{instruction(language)} {message}"


@dataclass(frozen=True)
class PromptFormat:
    """How test prompts become model input: ``chat`` (the tokenizer's chat template) or the
    base-model few-shot text with ``shots`` pairs."""

    shots: int = 0
    chat: bool = False

    def __post_init__(self) -> None:
        if self.chat and self.shots:
            raise ValueError("--chat asks the model with the prompt alone in its chat template; the few-shot turns "
                             "are the base-model format: give --shots 0 with --chat")

    def text(self, tokenizer: Any, message: str, shots: Sequence[Mapping[str, str]] = ()) -> str:
        """The model input for ``message`` (``shots``: the few-shot turns, base format only)."""
        if self.chat:
            return chat_prompt(tokenizer, message)
        return few_shot_prompt(shots, message)

    @property
    def add_special_tokens(self) -> bool:
        """Whether tokenizing the text adds the tokenizer's special tokens (a chat template writes
        its own)."""
        return not self.chat
