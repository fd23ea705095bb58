"""Perplexity as a registered task (``get_task("ppl")``): rolling log-likelihood of texts.

Its examples are texts (``Example.fields["text"]``; ``evaluate`` also takes plain strings);
the score is the token-weighted perplexity of ``mwork.tasks.perplexity`` (lower is better),
``n`` the number of scored tokens, the extras the rest of that function's result, and the
records each text's summed NLL and token count.

``load(lang, source)``: ``source`` a folder holding ``<lang>.txt`` (one text per line), a text
spec of ``mwork.texts`` (a file, ``xquad:LANG[A:B]``, ``builtin:LANG:heldout`` ...; XQuAD
articles 24-47 unless it names others), or None for the held-out texts of
``mwork.texts.heldout_texts`` (XQuAD 24-47 when a local copy exists, else the built-in
held-out paragraphs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from mwork.fingerprints import texts_digest
from mwork.tasks.common import Example, Task, select
from mwork.tasks.results import TaskResult
from mwork.tasks.queries import ROLLING, Rolling
from mwork.texts import EVALUATION_ARTICLES, heldout_texts, read_texts

_EXTRAS = ("nll", "tokens", "n_texts", "n_windows", "empty_texts", "max_length", "stride")


def as_examples(texts: Sequence[str | Example], lang: str, source: str | None = None) -> list[Example]:
    """Texts as perplexity examples (``ppl-<lang>-<index>``); Examples are passed through."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not one string")
    meta = {"source": source} if source else {}
    return [t if isinstance(t, Example) else Example(id=f"ppl-{lang}-{i:05d}", lang=lang, fields={"text": t},
                                                     target=None, meta=dict(meta))
            for i, t in enumerate(texts)]


class Perplexity(Task):
    name = "ppl"
    metric = "perplexity"
    higher_is_better = False
    hub_id = ""
    asks = ROLLING
    benchmark = False

    def load(self, lang: str, source: str | Path | None = None, *, limit: int | None = None) -> list[Example]:
        """The texts of ``lang`` (module docstring), the first ``limit`` of them."""
        if source is None or Path(source).is_dir():
            texts, where = heldout_texts(lang, source, limit)
            return as_examples(texts, lang, where)
        return select(as_examples(read_texts(source, default_articles=EVALUATION_ARTICLES), lang, str(source)),
                      0, limit)

    def languages(self) -> list[str]:
        return []  # any language: the texts decide

    def evaluate(self, model: Any, tokenizer: Any, examples: Sequence[str | Example], lang: str, *,
                 batch_size: int | None = None, progress: bool = True, **options: Any) -> TaskResult:
        """Perplexity of ``model`` on the texts (options: ``max_length`` (default 512), ``stride``)."""
        return super().evaluate(model, tokenizer, as_examples(examples, lang), lang, batch_size=batch_size,
                                progress=progress, **options)

    def ask(self, tokenizer: Any, examples: Sequence[Example], lang: str, *, max_length: int = 512,
            stride: int | None = None) -> Rolling:
        return Rolling([e.fields["text"] for e in examples], max_length=max_length, stride=stride)

    def score_answers(self, examples: Sequence[Example], query: Rolling, answers: dict[str, Any],
                      lang: str) -> TaskResult:
        records = [{"id": e.id, **t} for e, t in zip(examples, answers["per_text"], strict=True)]
        return TaskResult(task=self.name, lang=lang, metric=self.metric, higher_is_better=self.higher_is_better,
                          score=answers["ppl"], n=answers["tokens"], extra={k: answers[k] for k in _EXTRAS},
                          records=records)

    def examples_digest(self, examples: Sequence[Example]) -> str:
        """The texts' content only (``fingerprints.texts_digest``): ids and sources do not change a perplexity."""
        return texts_digest(e.fields["text"] for e in examples)
