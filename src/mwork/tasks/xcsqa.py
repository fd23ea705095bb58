"""X-CSQA (Lin et al., 2021): CommonsenseQA translated into 16 languages; five choices per
question. Each choice is scored by its log-likelihood as the continuation of the prompt; the
highest sum of token log-probabilities is the prediction (``accuracy``, the score). Also
reported: ``accuracy_norm``, the same with the log-likelihood divided by the choice's length in
UTF-8 bytes (as lm-evaluation-harness's ``acc_norm``), which removes the bias toward short choices.

Data, one JSON object per line as released (``{"id", "lang", "question": {"stem", "choices":
[{"label", "text"}]}, "answerKey"}``; the hub's column form ``choices: {"label": [...], "text":
[...]}`` is read too). Local: the given JSONL file, or in the given folder (or its ``xcsqa/``
subfolder) ``xcsqa.<lang>.jsonl``, ``X-CSQA-<lang>.jsonl`` or the release layout
``<code>/dev.jsonl`` (``test.jsonl`` for split="test"). Hub: ``INK-USC/xcsr``, config
``X-CSQA-<code>``, split ``validation`` (the test split's answers are hidden). The data set
writes Japanese as ``jap``; mwork uses ``ja`` and maps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from mwork.tasks.common import Example, Task, jsonl_rows, load_hub, prompt_for, resolve_source, select
from mwork.tasks.results import TaskResult
from mwork.tasks.queries import LOGLIKELIHOOD, Loglikelihood

XCSQA_LANGS: tuple[str, ...] = ("en", "zh", "de", "es", "fr", "it", "ja", "nl", "pl", "pt", "ru", "ar", "vi", "hi", "sw", "ur")
_DATASET_CODE = {"ja": "jap"}


def _choices(question: dict[str, Any]) -> tuple[list[str], list[str]]:
    choices = question["choices"]
    if isinstance(choices, dict):  # hub column form
        return list(choices["label"]), list(choices["text"])
    return [c["label"] for c in choices], [c["text"] for c in choices]


def parse_record(obj: dict[str, Any], lang: str, where: str) -> Example:
    """One X-CSQA record as an Example (target: index of the right choice)."""
    try:
        question = obj["question"]
        labels, texts = _choices(question)
        stem = question["stem"]
    except (KeyError, TypeError) as err:
        raise ValueError(f"{where}: not an X-CSQA record (needs question.stem and question.choices; missing {err})") from None
    key = obj.get("answerKey")
    if not key:
        raise ValueError(f"{where}: no answerKey (the test split hides its answers: use split='validation')")
    if key not in labels:
        raise ValueError(f"{where}: answerKey {key!r} is not one of the choice labels {labels}")
    return Example(id=str(obj.get("id", where)), lang=lang, fields={"question": stem, "choices": texts, "labels": labels},
                   target=labels.index(key))


def read_jsonl(path: str | Path, lang: str) -> list[Example]:
    return [parse_record(obj, lang, where) for where, obj in jsonl_rows(path) if obj is not None]


class XCSQA(Task):
    name = "xcsqa"
    metric = "accuracy"
    higher_is_better = True
    hub_id = "INK-USC/xcsr"
    asks = LOGLIKELIHOOD

    def load(self, lang: str, source: str | Path | None = None, *, split: str = "validation",
             limit: int | None = None, start: int = 0) -> list[Example]:
        """X-CSQA questions of ``lang``."""
        if lang not in XCSQA_LANGS:
            raise ValueError(f"X-CSQA has no language {lang!r}; it has {', '.join(XCSQA_LANGS)}")
        code = _DATASET_CODE.get(lang, lang)
        release_name = "dev.jsonl" if split == "validation" else f"{split}.jsonl"
        path = resolve_source(source, "xcsqa", [f"xcsqa.{lang}.jsonl", f"X-CSQA-{code}.jsonl", f"{code}/{release_name}"])
        if path is not None:
            return select(read_jsonl(path, lang), start, limit)
        rows = load_hub(self.hub_id, f"X-CSQA-{code}", split)
        examples = [parse_record(dict(r), lang, f"{self.hub_id} X-CSQA-{code} {split} row {i}") for i, r in enumerate(rows)]
        return select(examples, start, limit)

    def build_requests(self, examples: Sequence[Example], lang: str, *, few_shot: int = 0,
                       shots: Sequence[Example] | None = None, prompts: Any = None) -> list[tuple[str, str]]:
        """(prompt, choice) pairs, all choices of the first example first."""
        prompt = prompt_for(self.name, lang, prompts)
        chosen = self._shots(lang, examples, few_shot, shots, prompt)
        prefix = "".join(
            prompt["template"].format(question=s.fields["question"])
            + prompt["choice"].format(choice=s.fields["choices"][s.target]) + prompt["shot_separator"]
            for s in chosen
        )
        return [
            (prefix + prompt["template"].format(question=e.fields["question"]), prompt["choice"].format(choice=c))
            for e in examples for c in e.fields["choices"]
        ]

    def score(self, examples: Sequence[Example], loglik: Sequence[float], choice_bytes: Sequence[int],
              lang: str) -> TaskResult:
        """Accuracy from per-choice log-likelihoods (flat, in ``build_requests`` order)."""
        records, acc, acc_norm, i = [], [], [], 0
        for ex in examples:
            n = len(ex.fields["choices"])
            ll, nb = list(loglik[i:i + n]), list(choice_bytes[i:i + n])
            i += n
            norm = [x / max(b, 1) for x, b in zip(ll, nb)]
            pred, pred_norm = ll.index(max(ll)), norm.index(max(norm))
            acc.append(float(pred == ex.target))
            acc_norm.append(float(pred_norm == ex.target))
            records.append({"id": ex.id, "loglik": ll, "prediction": pred, "prediction_norm": pred_norm,
                            "target": ex.target, "correct": pred == ex.target})
        if i != len(loglik):
            raise ValueError(f"{len(loglik)} log-likelihoods for {i} choices")
        return self._result(lang, acc, records, accuracy_norm=sum(acc_norm) / len(acc_norm),
                            chance=sum(1 / len(e.fields["choices"]) for e in examples) / len(examples))

    def ask(self, tokenizer: Any, examples: Sequence[Example], lang: str, *, max_new_tokens: int | None = None,
            few_shot: int = 0, shots: Sequence[Example] | None = None, prompts: Any = None) -> Loglikelihood:
        """Log-likelihood multiple choice (``max_new_tokens`` is ignored: nothing is generated)."""
        requests = self.build_requests(examples, lang, few_shot=few_shot, shots=shots, prompts=prompts)
        return Loglikelihood(requests, info={"few_shot": few_shot, "prompt_example": requests[0][0] + requests[0][1]})

    def score_answers(self, examples: Sequence[Example], query: Loglikelihood, answers: Sequence[tuple[float, int]],
                      lang: str) -> TaskResult:
        choice_bytes = [len(cont.strip().encode("utf-8")) for _, cont in query.pairs]
        return self.score(examples, [s for s, _ in answers], choice_bytes, lang)
