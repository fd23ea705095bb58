"""MGSM (Shi et al., 2022): grade-school maths problems in 11 languages; greedy step-by-step
answer in the problem's language; the last number of the answer is compared with the gold.

Local data: ``mgsm_<lang>.tsv`` (``question<TAB>answer_number``, no header), in the given
folder or its ``mgsm/`` subfolder, or the file itself. Hub: ``juletxara/mgsm`` (config =
language code; ``test`` has the 250 problems, ``train`` 8 worked exemplars).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from mwork.tasks.common import Example, ScoringOption, Task, load_hub, prompt_for, resolve_source, select
from mwork.tasks.results import TaskResult
from mwork.tasks.queries import GENERATE
from mwork.tasks.metrics import DEFAULT_SCORING, check_scoring, format_number, last_number, mgsm_correct, parse_number

MGSM_LANGS: tuple[str, ...] = ("en", "es", "fr", "de", "ru", "zh", "ja", "th", "sw", "bn", "te")


def read_tsv(path: str | Path, lang: str) -> list[Example]:
    """Every problem of an MGSM TSV file (ids ``mgsm-<lang>-<line index>``, shared across languages)."""
    path = Path(path)
    examples = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        if "\t" not in line:
            raise ValueError(f"{path}:{n + 1}: expected 'question<TAB>answer_number'")
        question, answer = line.rsplit("\t", 1)
        try:
            target = parse_number(answer, "en")
        except ValueError:
            raise ValueError(f"{path}:{n + 1}: answer {answer!r} is not a number") from None
        examples.append(Example(id=f"mgsm-{lang}-{n:04d}", lang=lang, fields={"question": question.strip()}, target=target))
    return examples


def _strip_label(text: str, label: str) -> str:
    """Drop a leading prompt label (the hub's train split writes 'Question: ...')."""
    text = text.strip()
    return text[len(label):].strip() if label and text.startswith(label) else text


class MGSM(ScoringOption, Task):
    name = "mgsm"
    metric = "accuracy"
    higher_is_better = True
    hub_id = "juletxara/mgsm"
    asks = GENERATE
    default_max_new_tokens = 256

    def _check_lang(self, lang: str) -> None:
        if lang not in MGSM_LANGS:
            raise ValueError(f"MGSM has no language {lang!r}; it has {', '.join(MGSM_LANGS)}")

    def load(self, lang: str, source: str | Path | None = None, *, split: str = "test", limit: int | None = None,
             start: int = 0) -> list[Example]:
        """MGSM problems of ``lang`` (``start``/``limit`` slice them in file order)."""
        self._check_lang(lang)
        path = resolve_source(source, "mgsm", [f"mgsm_{lang}.tsv"])
        if path is not None:
            return select(read_tsv(path, lang), start, limit)
        rows = load_hub(self.hub_id, lang, split)
        examples = [
            Example(id=f"mgsm-{lang}-{split}-{i:04d}" if split != "test" else f"mgsm-{lang}-{i:04d}", lang=lang,
                    fields={"question": r["question"]}, target=float(r["answer_number"]))
            for i, r in enumerate(rows)
        ]
        return select(examples, start, limit)

    def load_shots(self, lang: str, source: str | Path | None = None, k: int = 4) -> list[Example]:
        """Few-shot pool: the hub's ``train`` split (worked solutions); locally the first ``k``
        problems (answer only: evaluate with ``start=k``)."""
        self._check_lang(lang)
        if resolve_source(source, "mgsm", [f"mgsm_{lang}.tsv"]) is not None:
            return self.load(lang, source, limit=k)
        prompt = prompt_for(self.name, lang)
        q_label = prompt["template"].split("{question}")[0].strip()
        a_label = prompt["template"].split("{question}")[1].strip()
        rows = load_hub(self.hub_id, lang, "train")
        return [
            Example(id=f"mgsm-{lang}-train-{i:04d}", lang=lang,
                    fields={"question": _strip_label(r["question"], q_label),
                            "solution": _strip_label(r["answer"], a_label) if r.get("answer") else None},
                    target=float(r["answer_number"]))
            for i, r in enumerate(rows)
        ][:k]

    def render_shot(self, shot: Example, prompt: dict[str, Any]) -> str:
        solution = shot.fields.get("solution") or prompt["answer_phrase"].format(answer=format_number(shot.target))
        return prompt["template"].format(**shot.fields) + prompt["target"].format(solution=solution)

    def build_prompts(self, examples: Sequence[Example], lang: str, *, few_shot: int = 0,
                      shots: Sequence[Example] | None = None, prompts: Any = None) -> tuple[list[str], dict[str, Any]]:
        prompt = prompt_for(self.name, lang, prompts)
        chosen = self._shots(lang, examples, few_shot, shots, prompt)
        prefix = "".join(self.render_shot(s, prompt) + prompt["shot_separator"] for s in chosen)
        return [prefix + prompt["template"].format(question=e.fields["question"]) for e in examples], prompt

    def score(self, examples: Sequence[Example], outputs: Sequence[str], lang: str, *,
              scoring: str = DEFAULT_SCORING) -> TaskResult:
        """Accuracy of the answer number of each output (``scoring``: official, lm-eval's
        extraction and exact match, or ``"mwork"``, the last number read with ``lang``'s
        conventions; see ``metrics``)."""
        check_scoring(scoring)
        records, scores = [], []
        for ex, out in zip(examples, outputs, strict=True):
            pred = last_number(out, lang, scoring=scoring)
            correct = mgsm_correct(out, ex.target, lang, scoring=scoring)
            scores.append(float(correct))
            records.append({"id": ex.id, "output": out, "prediction": pred, "target": ex.target, "correct": correct})
        return self._result(lang, scores, records)
