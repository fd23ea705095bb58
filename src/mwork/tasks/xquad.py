"""XQuAD (Artetxe et al., 2020): extractive QA on 48 Wikipedia articles (240 paragraphs, 1190
questions) translated into 12 languages. The model reads the paragraph and the question and
writes a short answer; F1 (the score) and exact match by the official rules by default (SQuAD v1.1;
MLQA's mixed segmentation for zh; characters for ja / th), or mwork's (``scoring="mwork"``).

Articles are selectable so that evaluation never sees detection text: by default articles
24-47 are evaluated and 0-23 are left for neuron detection (and few-shot examples).

Local data: ``xquad.<lang>.json`` in SQuAD format, in the given folder or its ``xquad/``
subfolder, or the file itself. Hub: ``google/xquad`` (config ``xquad.<lang>``, split
``validation``), whose rows are flattened questions in the original order: paragraphs are
recovered as runs of the same context and articles as consecutive groups of five paragraphs
(every XQuAD article has exactly five; checked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from mwork.data_sources import (  # noqa: F401  (XQuAD's articles: read below the texts and the tasks)
    N_ARTICLES, PARAGRAPHS_PER_ARTICLE, XQUAD_LANGS, load_articles, read_squad_json)
from mwork.tasks.common import Example, ScoringOption, Task, prompt_for, select
from mwork.tasks.results import TaskResult
from mwork.tasks.queries import GENERATE
from mwork.tasks.metrics import DEFAULT_SCORING, check_scoring, qa_exact, qa_f1
from mwork.texts import DETECTION_ARTICLES, EVALUATION_ARTICLES

EVAL_ARTICLES = EVALUATION_ARTICLES


def _article_set(articles: Iterable[int] | tuple[int, int] | None) -> list[int]:
    if articles is None:
        return list(range(N_ARTICLES))
    if isinstance(articles, tuple) and len(articles) == 2:
        articles = range(*articles)  # (start, stop), stop excluded; a list names articles one by one
    chosen = sorted(set(int(a) for a in articles))
    bad = [a for a in chosen if not 0 <= a < N_ARTICLES]
    if bad:
        raise ValueError(f"XQuAD articles are 0-{N_ARTICLES - 1}; got {bad}")
    return chosen


def load_paragraphs(lang: str, source: str | Path | None = None,
                    articles: Iterable[int] | tuple[int, int] | None = DETECTION_ARTICLES) -> list[str]:
    """The paragraph texts of the chosen articles (default 0-23, the detection split)."""
    data = load_articles(lang, source)
    return [p["context"] for a in _article_set(articles) for p in data[a]["paragraphs"]]


class XQuAD(ScoringOption, Task):
    name = "xquad"
    metric = "f1"
    higher_is_better = True
    hub_id = "google/xquad"
    asks = GENERATE
    default_max_new_tokens = 32

    def load(self, lang: str, source: str | Path | None = None, *,
             articles: Iterable[int] | tuple[int, int] | None = EVAL_ARTICLES, limit: int | None = None,
             start: int = 0) -> list[Example]:
        """One example per question of the chosen articles, in document order.

        ``articles``: a range or list of article indices, a ``(start, stop)`` tuple (stop
        excluded), or None for all 48; default 24-47 (the evaluation half)."""
        data = load_articles(lang, source)
        if len(data) != N_ARTICLES:
            raise ValueError(f"expected {N_ARTICLES} XQuAD articles, found {len(data)}")
        examples = []
        for a in _article_set(articles):
            for p_index, para in enumerate(data[a]["paragraphs"]):
                for qa in para["qas"]:
                    answers = [ans["text"] for ans in qa["answers"]]
                    examples.append(Example(
                        id=str(qa["id"]), lang=lang,
                        fields={"context": para["context"], "question": qa["question"]},
                        target=answers, meta={"article": a, "paragraph": a * PARAGRAPHS_PER_ARTICLE + p_index},
                    ))
        return select(examples, start, limit)

    def load_shots(self, lang: str, source: str | Path | None = None, k: int = 4) -> list[Example]:
        """Few-shot pool: the first question of each of the first ``k`` paragraphs of articles
        0-23 (never evaluation articles)."""
        pool = self.load(lang, source, articles=DETECTION_ARTICLES)
        seen, shots = set(), []
        for ex in pool:
            if ex.meta["paragraph"] not in seen:
                seen.add(ex.meta["paragraph"])
                shots.append(ex)
            if len(shots) == k:
                break
        return shots

    def build_prompts(self, examples: Sequence[Example], lang: str, *, few_shot: int = 0,
                      shots: Sequence[Example] | None = None, prompts: Any = None) -> tuple[list[str], dict[str, Any]]:
        prompt = prompt_for(self.name, lang, prompts)
        chosen = self._shots(lang, examples, few_shot, shots, prompt)
        prefix = "".join(
            prompt["template"].format(**s.fields) + prompt["target"].format(answer=s.target[0]) + prompt["shot_separator"]
            for s in chosen
        )
        return [prefix + prompt["template"].format(**e.fields) for e in examples], prompt

    def score(self, examples: Sequence[Example], outputs: Sequence[str], lang: str, *,
              scoring: str = DEFAULT_SCORING) -> TaskResult:
        """SQuAD F1 (the score) and exact match, each the max over the gold answers (``scoring``:
        official, SQuAD v1.1 / MLQA, or ``"mwork"``; see ``mwork.tasks.metrics``)."""
        check_scoring(scoring)
        records, f1s, ems = [], [], []
        for ex, out in zip(examples, outputs, strict=True):
            f1, em = qa_f1(out, ex.target, lang, scoring=scoring), qa_exact(out, ex.target, lang, scoring=scoring)
            f1s.append(f1)
            ems.append(em)
            records.append({"id": ex.id, "output": out, "answers": ex.target, "f1": f1, "exact_match": em})
        return self._result(lang, f1s, records, exact_match=sum(ems) / len(ems) if ems else float("nan"))
