"""One cell of the control experiment measured: greedy generations of every item of a pair (both
splits, every item set, in one batched pass per stop rule) inside the lever's context, then,
with the model unchanged, what each output is worth apart from its meaning:

* ``language``: the sentence-level identifier's label (``mwork.control.detect_languages``);
* ``distinct_2``: distinct token bigrams over all bigrams of the output's tokens (the steering
  sweep's ``distinct_n``; None below two tokens);
* ``nll`` / ``tokens``: the unsteered model's negative log-likelihood (nats) of the output's
  tokens after the prompt, and how many there are (``mwork.tasks.generation.loglikelihood``),
  from which a row's perplexity is pooled.

The output is the generation cut at the prompt's stop strings (``mwork.tasks.generation.generate``);
it is scored as it continues the prompt: after a space unless the prompt ends in one or the
output starts with a character of a script written without spaces (CJK, kana, Thai).
"""

from __future__ import annotations

import unicodedata
from typing import Any, ContextManager, Sequence

from mwork.control.score import detect_languages
from mwork.experiments.control.prompts import Prompt
from mwork.experiments.steering.metrics import distinct_n
from mwork.tasks.generation import encode_pair, generate, loglikelihood


def _joined(prompt: str, output: str) -> str:
    """The continuation as it follows the prompt (module docstring)."""
    if not output or (prompt and prompt[-1].isspace()):
        return output
    first = output[0]
    wide = unicodedata.east_asian_width(first) in ("W", "F") or "\u0e00" <= first <= "\u0e7f"
    return output if wide else " " + output


def generate_outputs(model: Any, tokenizer: Any, prompts: Sequence[Prompt], edit: ContextManager[Any], *,
                     max_new_tokens: int, batch_size: int) -> list[str]:
    """The outputs of ``prompts`` generated inside ``edit``, in the order of ``prompts`` (one
    batched ``generate`` per distinct set of stop strings)."""
    outputs: list[str] = [""] * len(prompts)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p.stop, []).append(i)
    with edit:
        for stop, rows in groups.items():
            texts = generate(model, tokenizer, [prompts[i].text for i in rows], max_new_tokens=max_new_tokens,
                             stop=stop, batch_size=batch_size, progress=False)
            for i, text in zip(rows, texts):
                outputs[i] = text
    return outputs


def fluency(model: Any, tokenizer: Any, prompts: Sequence[Prompt], outputs: Sequence[str], *,
            batch_size: int) -> list[dict[str, Any]]:
    """``distinct_2``, ``nll`` and ``tokens`` of each output under the model as it is now (module
    docstring); an empty output has ``tokens`` 0 and None for the others."""
    todo = [i for i, out in enumerate(outputs) if out.strip()]
    pairs = [(prompts[i].text, _joined(prompts[i].text, outputs[i])) for i in todo]
    scored = loglikelihood(model, tokenizer, pairs, batch_size=batch_size, progress=False) if pairs else []
    out: list[dict[str, Any]] = [{"distinct_2": None, "nll": None, "tokens": 0} for _ in outputs]
    for i, (context, continuation), (logp, n) in zip(todo, pairs, scored):
        ids = encode_pair(tokenizer, context, continuation)[1]
        out[i] = {"distinct_2": distinct_n(ids, 2), "nll": -logp, "tokens": n}
    return out


def measure_cell(model: Any, tokenizer: Any, prompts: Sequence[Prompt], edit: ContextManager[Any], *,
                 max_new_tokens: int, batch_size: int) -> list[dict[str, Any]]:
    """Per prompt: ``output``, ``language``, ``distinct_2``, ``nll``, ``tokens`` (module docstring)."""
    outputs = generate_outputs(model, tokenizer, prompts, edit, max_new_tokens=max_new_tokens,
                               batch_size=batch_size)
    measures = fluency(model, tokenizer, prompts, outputs, batch_size=batch_size)
    languages = detect_languages(outputs)
    return [{"output": out, "language": lang, **m} for out, lang, m in zip(outputs, languages, measures)]
