"""An optional judge: a causal language model that rates how relevant each output is to its item,
0 (something else, or nothing), 1 (part of it) or 2 (the same content), as CLaS-Bench's relevance
is rated; here the rating is in [0, 1] (half the expected digit).

The judge is any causal LM the user names (``--judge``; the model under test itself too). It is
read, not sampled: after the rating prompt (:data:`PROMPTS`, in English, the item's source text
or question and the output quoted), the judge's log-likelihoods of the three answers ``0``, ``1``
and ``2`` (``mwork.tasks.generation.loglikelihood``) are normalised over the three, and the
relevance is ``(p1 + 2 p2) / 2``: deterministic, and defined however the judge would have
phrased a free answer. A judge with a chat template is asked in it (one user turn, the digit as
the start of its reply); a base model reads the plain prompt. An empty output is 0 without a
question. A small judge is a weak one: the ratings of a model of a few hundred million
parameters say little, which is why this is an option for users with a large model (and a GPU).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from mwork.control.items import ParallelItem

#: kind of item -> the rating prompt ({text}: the item's source text or question; {output})
PROMPTS: dict[str, str] = {
    "text": ("Rate whether the response says the same thing as the text, in any language.\n"
             "2: the same content. 1: part of the content. 0: something else, or nothing.\n\n"
             "Text: {text}\nResponse: {output}\n\nRating (0, 1 or 2):"),
    "qa": ("Rate whether the response answers the question, in any language.\n"
           "2: a relevant answer. 1: partly relevant. 0: unrelated, or nothing.\n\n"
           "Question: {text}\nResponse: {output}\n\nRating (0, 1 or 2):"),
}
RATINGS: tuple[str, ...] = ("0", "1", "2")


def rating_prompt(item: ParallelItem, output: str, tokenizer: Any = None) -> str:
    """The judge's prompt for ``output`` of ``item`` (through ``tokenizer``'s chat template when it
    has one)."""
    text = item.fields["question"] if item.kind == "qa" else item.fields["text"]
    prompt = PROMPTS[item.kind].format(text=text.strip(), output=output.strip())
    if tokenizer is not None:
        from mwork.chat import has_chat_template
        from mwork.experiments.control.prompts import chat_text

        if has_chat_template(tokenizer):
            return chat_text(tokenizer, prompt)
    return prompt


def relevance(model: Any, tokenizer: Any, items: Sequence[ParallelItem], outputs: Sequence[str], *,
              batch_size: int = 8) -> list[float]:
    """Each output's relevance to its item, in [0, 1] (module docstring)."""
    from mwork.chat import has_chat_template
    from mwork.tasks.generation import loglikelihood

    if len(items) != len(outputs):
        raise ValueError(f"{len(items)} items but {len(outputs)} outputs")
    chat = has_chat_template(tokenizer)
    todo = [i for i, out in enumerate(outputs) if out.strip()]
    answers = RATINGS if chat else tuple(f" {r}" for r in RATINGS)
    requests = [(rating_prompt(items[i], outputs[i], tokenizer), a) for i in todo for a in answers]
    scored = loglikelihood(model, tokenizer, requests, batch_size=batch_size, progress=False) if requests else []
    out = [0.0] * len(outputs)
    for k, i in enumerate(todo):
        logps = [scored[3 * k + r][0] for r in range(3)]
        top = max(logps)
        weights = [math.exp(v - top) for v in logps]
        total = sum(weights)
        out[i] = (weights[1] + 2 * weights[2]) / (2 * total)
    return out
