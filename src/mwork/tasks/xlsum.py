"""XLSum (Hasan et al., 2021): BBC articles with a one-sentence summary in 45 languages. The
article (truncated to a token budget) is followed by a "Summary:" cue in its language; the
greedy one-line continuation is scored by ROUGE-L F1 against the reference (``metrics.rouge_l``:
by default rouge-score with the XL-Sum authors' multilingual tokenisation, characters for
zh / ja / th, no stemming; ``scoring="mwork"`` for mwork's own tokenisation).

Local data: JSONL with ``text`` and ``summary`` (``id`` optional): the given file, or in the
given folder (or its ``xlsum/`` subfolder) ``xlsum.<lang>.jsonl`` or the release name
``<dataset name>_<split>.jsonl`` (e.g. ``english_test.jsonl``). Hub: ``csebuetnlp/xlsum``,
config = the data set's language name (``XLSUM_NAMES``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from mwork.tasks.common import Example, ScoringOption, Task, jsonl_rows, load_hub, prompt_for, resolve_source, select
from mwork.tasks.results import TaskResult
from mwork.tasks.queries import GENERATE, Generate
from mwork.tasks.metrics import DEFAULT_SCORING, check_scoring, rouge_l

XLSUM_NAMES: dict[str, str] = {
    "en": "english", "zh": "chinese_simplified", "es": "spanish", "fr": "french", "pt": "portuguese",
    "ru": "russian", "uk": "ukrainian", "tr": "turkish", "ar": "arabic", "fa": "persian", "ur": "urdu",
    "hi": "hindi", "bn": "bengali", "te": "telugu", "th": "thai", "vi": "vietnamese", "id": "indonesian",
    "sw": "swahili", "ja": "japanese", "ko": "korean",
}


def read_jsonl(path: str | Path, lang: str) -> list[Example]:
    examples = []
    for line, (where, obj) in enumerate(jsonl_rows(path)):
        if obj is None:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not isinstance(obj.get("summary"), str):
            raise ValueError(f"{where}: expected an object with string fields 'text' and 'summary'")
        examples.append(Example(id=str(obj.get("id", f"xlsum-{lang}-{line:05d}")), lang=lang,
                                fields={"text": obj["text"]}, target=obj["summary"]))
    return examples


def truncate_tokens(tokenizer: Any, text: str, max_tokens: int) -> str:
    """The first ``max_tokens`` tokens of ``text`` (decoded back), or ``text`` if it is shorter."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)


class XLSum(ScoringOption, Task):
    name = "xlsum"
    metric = "rougeL_f1"
    higher_is_better = True
    hub_id = "csebuetnlp/xlsum"
    asks = GENERATE
    default_max_new_tokens = 64
    default_batch_size = 4  # long prompts
    max_article_tokens = 512  # each article is cut to this many tokens (recorded in the result)

    def _config(self, lang: str) -> str:
        if lang not in XLSUM_NAMES:
            raise ValueError(f"no XLSum configuration known for {lang!r}; known: {', '.join(sorted(XLSUM_NAMES))} "
                             "(XLSum has no German, Italian or Dutch)")
        return XLSUM_NAMES[lang]

    def load(self, lang: str, source: str | Path | None = None, *, split: str = "test", limit: int | None = None,
             start: int = 0) -> list[Example]:
        """Article/summary pairs of ``lang``."""
        config = self._config(lang)
        path = resolve_source(source, "xlsum", [f"xlsum.{lang}.jsonl", f"{config}_{split}.jsonl"])
        if path is not None:
            return select(read_jsonl(path, lang), start, limit)
        rows = load_hub(self.hub_id, config, split)
        examples = [Example(id=str(r.get("id", i)), lang=lang, fields={"text": r["text"]}, target=r["summary"])
                    for i, r in enumerate(rows)]
        return select(examples, start, limit)

    def load_shots(self, lang: str, source: str | Path | None = None, k: int = 1) -> list[Example]:
        """Few-shot pool: the hub's ``train`` split; locally the first ``k`` items (evaluate with ``start=k``)."""
        if resolve_source(source, "xlsum", [f"xlsum.{lang}.jsonl", f"{self._config(lang)}_test.jsonl"]) is not None:
            return self.load(lang, source, limit=k)
        return self.load(lang, "hub", split="train", limit=k)

    def build_prompts(self, tokenizer: Any, examples: Sequence[Example], lang: str, *, max_article_tokens: int,
                      few_shot: int = 0, shots: Sequence[Example] | None = None,
                      prompts: Any = None) -> tuple[list[str], dict[str, Any]]:
        prompt = prompt_for(self.name, lang, prompts)
        chosen = self._shots(lang, examples, few_shot, shots, prompt)
        cut = lambda t: truncate_tokens(tokenizer, t, max_article_tokens)  # noqa: E731
        prefix = "".join(
            prompt["template"].format(text=cut(s.fields["text"])) + prompt["target"].format(summary=s.target)
            + prompt["shot_separator"] for s in chosen
        )
        return [prefix + prompt["template"].format(text=cut(e.fields["text"])) for e in examples], prompt

    def score(self, examples: Sequence[Example], outputs: Sequence[str], lang: str, *,
              scoring: str = DEFAULT_SCORING) -> TaskResult:
        """Mean ROUGE-L F1 (also mean precision and recall); ``scoring``: official (rouge-score on
        the XL-Sum authors' tokens) or ``"mwork"``."""
        check_scoring(scoring)
        records, f1s, ps, rs = [], [], [], []
        for ex, out in zip(examples, outputs, strict=True):
            r = rouge_l(out, ex.target, lang, scoring=scoring)
            f1s.append(r["f1"])
            ps.append(r["precision"])
            rs.append(r["recall"])
            records.append({"id": ex.id, "output": out, "reference": ex.target, **{f"rougeL_{k}": v for k, v in r.items()}})
        n = len(f1s)
        return self._result(lang, f1s, records, rougeL_precision=sum(ps) / n if n else float("nan"),
                            rougeL_recall=sum(rs) / n if n else float("nan"))

    def ask(self, tokenizer: Any, examples: Sequence[Example], lang: str, *, max_new_tokens: int | None = None,
            few_shot: int = 0, shots: Sequence[Example] | None = None, prompts: Any = None,
            scoring: str = DEFAULT_SCORING) -> Generate:
        """Greedy one-line summaries of the articles (cut to ``max_article_tokens``), scored by ROUGE-L F1."""
        check_scoring(scoring)
        max_article_tokens = self.max_article_tokens
        texts, prompt = self.build_prompts(tokenizer, examples, lang, max_article_tokens=max_article_tokens,
                                           few_shot=few_shot, shots=shots, prompts=prompts)
        return Generate(texts, max_new_tokens or self.default_max_new_tokens, prompt["stop"],
                        info={"few_shot": few_shot, "max_article_tokens": max_article_tokens,
                              "prompt_example": texts[0], "scoring": scoring})
