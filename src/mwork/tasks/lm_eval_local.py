"""Local lm-eval tasks built from data on disk (XQuAD, MGSM), so that lm-eval runs offline:
hub tasks need the network, these read JSON Lines files (``dataset_path: json``).

``make_local_tasks(out, data)`` writes, per language, ``data/<task>.jsonl`` and ``<task>.yaml``
under ``out``; pass ``out`` to lm-eval as ``--include_path`` (``mwork eval --include-path``):

* ``mwork_xquad_mc_<lang>`` (multiple choice, Belebele-like reading comprehension): an XQuAD
  paragraph and question, four candidate answers: the gold and three answers to other questions
  of the same article (picked by position, so the languages get parallel items; the gold's slot
  too), ``acc`` / ``acc_norm``. Articles 24-47 by default (0-23 are for neuron detection).
* ``mwork_xquad_mc_sentence_<lang>`` (with ``sentences=True``): the same items with only the
  sentence of the paragraph that holds the gold answer as the passage: prompts of tens of tokens
  instead of hundreds, for CPUs (lm-eval's HFLM computes the logits of every position).
* ``mwork_mgsm_direct_<lang>`` (generation): lm-eval's ``mgsm_direct_<lang>`` prompt, stop strings,
  flexible-extract filter and exact match, on the local MGSM TSV.

Data: ``data`` is a folder holding ``xquad/xquad.<lang>.json`` and/or ``mgsm/mgsm_<lang>.tsv``
(the layout of the released files, as ``$MWORK_DATA`` holds them); languages default to every
file found.
"""

from __future__ import annotations

import json
import random
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from mwork.files import make_folder, parse_names, write_text
from mwork.texts import EVALUATION_ARTICLES

XQUAD_MC = "mwork_xquad_mc_{lang}"
XQUAD_MC_SENTENCE = "mwork_xquad_mc_sentence_{lang}"
MGSM_DIRECT = "mwork_mgsm_direct_{lang}"
TAG = "mwork_local"
N_CHOICES = 4


def _jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def _yaml(path: Path, config: dict[str, Any]) -> None:
    write_text(path, "# written by mwork.tasks.lm_eval_local.make_local_tasks\n"
               + yaml.safe_dump(config, allow_unicode=True, sort_keys=False))


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")


def answer_sentence(context: str, start: int, length: int) -> str:
    """The sentence(s) of ``context`` that hold the characters ``start .. start + length``."""
    ends = [0] + [m.end() for m in _SENTENCE_END.finditer(context)] + [len(context)]
    begin = max(e for e in ends if e <= start)
    stop = min((e for e in ends if e >= start + length), default=len(context))
    return context[begin:stop].strip() or context


def xquad_mc_rows(squad_json: str | Path, articles: Sequence[int], sentences: bool = False) -> list[dict[str, Any]]:
    """Multiple-choice items of the chosen articles (module docstring); ``sentences``: the passage
    is the answer's sentence only. A question with no answer (SQuAD 2.0's unanswerable ones) has no
    gold to offer: it is skipped (a warning counts them), the other items unchanged."""
    from mwork.texts import _squad_articles

    data = _squad_articles(squad_json)
    missing = [a for a in articles if not 0 <= a < len(data)]
    if missing:
        have = f"articles 0-{len(data) - 1}" if data else "no articles"
        why = " (the held-out XQuAD ones; 0-23 are for detection)" if list(articles) == list(EVALUATION_ARTICLES) else ""
        raise ValueError(f"{squad_json} has {have}; the local tasks need articles {_span(articles)}{why}: missing "
                         f"{_span(missing)}. Use the full XQuAD file")
    rows, unanswered = [], 0
    for a in articles:
        try:
            qas = [(p["context"], qa) for p in data[a]["paragraphs"] for qa in p["qas"]]
            answers = [qa["answers"][0]["text"] if qa["answers"] else None for _, qa in qas]
            absent = next((repr(k) for _, qa in qas for k in ("id", "question") if k not in qa), None)
            if absent:
                raise KeyError(absent)
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(f"{squad_json}, article {a}: not SQuAD format (missing {err}); each article needs "
                             "paragraphs of context and qas (id, question, answers)") from None
        for i, (context, qa) in enumerate(qas):
            rng = random.Random(f"xquad-mc-{a}-{i}")  # by position: the same in every language
            gold = answers[i]
            if gold is None:
                unanswered += 1
                continue
            others = [j for j in rng.sample(range(len(qas)), len(qas)) if j != i]
            distractors: list[str] = []
            for j in others:
                text = answers[j]
                if text is None:
                    continue
                if text.strip().lower() != gold.strip().lower() and text not in distractors:
                    distractors.append(text)
                if len(distractors) == N_CHOICES - 1:
                    break
            if len(distractors) < N_CHOICES - 1:
                continue
            label = rng.randrange(N_CHOICES)
            choices = distractors[:label] + [gold] + distractors[label:]
            if sentences:
                ans = qa["answers"][0]
                at = ans.get("answer_start", -1)
                at = at if 0 <= at and context[at:at + len(gold)] == gold else context.find(gold)
                context = answer_sentence(context, at, len(gold)) if at >= 0 else context
            rows.append({"id": qa["id"], "article": a, "context": context, "question": qa["question"],
                         "choices": choices, "label": label})
    if unanswered:
        warnings.warn(f"{squad_json}: skipped {unanswered} question(s) with no answer (unanswerable, as in SQuAD "
                      "2.0): a multiple-choice item needs a gold answer")
    return rows


def _span(numbers: Sequence[int]) -> str:
    """``[24, 25, ..., 47]`` -> ``"24-47"``; otherwise the list."""
    numbers = list(numbers)
    if numbers and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{numbers[0]}-{numbers[-1]}" if len(numbers) > 1 else str(numbers[0])
    return ", ".join(map(str, numbers))


def mgsm_rows(tsv: str | Path) -> list[dict[str, Any]]:
    from mwork.tasks.mgsm import read_tsv

    return [{"id": e.id, "question": e.fields["question"], "answer_number": int(e.target)
             if float(e.target).is_integer() else e.target} for e in read_tsv(tsv, Path(tsv).stem.split("_")[-1])]


def _xquad_config(name: str, data_file: Path) -> dict[str, Any]:
    return {
        "task": name, "tag": TAG, "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test", "output_type": "multiple_choice",
        "doc_to_text": "P: {{context}}\nQ: {{question}}\nA:",
        "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "source": "XQuAD (Artetxe et al., 2020), CC BY-SA 4.0"},
    }


def _mgsm_config(name: str, data_file: Path, lang: str) -> dict[str, Any]:
    from lm_eval.tasks.mgsm.utils import LANGUAGES  # lm-eval's own per-language prompt words

    words = LANGUAGES.get(lang, LANGUAGES["en"])
    return {
        "task": name, "tag": TAG, "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test", "output_type": "generate_until",
        "doc_to_text": f'{{{{"{words["QUESTION"]} "+question+"\\n{words["DIRECT"]}"}}}}',
        "doc_to_target": "{{answer_number|string}}", "target_delimiter": "",
        "generation_kwargs": {"until": [words["QUESTION"], "</s>", "<|im_end|>"], "do_sample": False,
                              "max_gen_toks": 32},
        "filter_list": [
            {"name": "remove_whitespace", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]},
            {"name": "flexible-extract", "filter": [
                {"function": "regex", "group_select": -1, "regex_pattern": r"(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                {"function": "take_first"}]},
        ],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": True}],
        "metadata": {"version": 1.0, "source": "MGSM (Shi et al., 2022), CC BY 4.0"},
    }


def make_local_tasks(out: str | Path, data: str | Path, *, langs: Sequence[str] | None = None,
                     articles: Sequence[int] = EVALUATION_ARTICLES, limit: int | None = None,
                     sentences: bool = False) -> list[str]:
    """Write the local tasks (module docstring) under ``out`` from the data folder ``data``;
    return their names. ``limit``: at most this many items per task (first ones); ``sentences``:
    also the ``mwork_xquad_mc_sentence_<lang>`` variant."""
    if limit is not None and limit < 1:
        raise ValueError(f"the item limit (--local-limit) must be at least 1, got {limit}")
    if langs is not None:
        langs = parse_names(langs)  # each names task files: a bad code fails before anything is written
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"no data folder at {data}: give the folder holding xquad/xquad.<lang>.json and/or "
                                "mgsm/mgsm_<lang>.tsv (--data FOLDER or $MWORK_DATA)")
    out = make_folder(out)
    rows_dir = make_folder(out / "data")
    found = {"xquad": sorted(p.name[len("xquad."):-len(".json")] for p in (data / "xquad").glob("xquad.*.json")),
             "mgsm": sorted(p.stem[len("mgsm_"):] for p in (data / "mgsm").glob("mgsm_*.tsv"))}
    wanted = list(langs) if langs is not None else sorted(set(found["xquad"]) | set(found["mgsm"]))
    missing = [lang for lang in wanted if lang not in found["xquad"] and lang not in found["mgsm"]]
    if missing:
        raise FileNotFoundError(f"no XQuAD or MGSM file for {', '.join(missing)} under {data}")
    names = []
    for lang in wanted:
        if lang in found["xquad"]:
            name = XQUAD_MC.format(lang=lang)
            rows = xquad_mc_rows(data / "xquad" / f"xquad.{lang}.json", list(articles))[:limit]
            _jsonl(rows_dir / f"{name}.jsonl", rows)
            _yaml(out / f"{name}.yaml", _xquad_config(name, (rows_dir / f"{name}.jsonl").resolve()))
            names.append(name)
            if sentences:
                name = XQUAD_MC_SENTENCE.format(lang=lang)
                rows = xquad_mc_rows(data / "xquad" / f"xquad.{lang}.json", list(articles), sentences=True)[:limit]
                _jsonl(rows_dir / f"{name}.jsonl", rows)
                _yaml(out / f"{name}.yaml", _xquad_config(name, (rows_dir / f"{name}.jsonl").resolve()))
                names.append(name)
        if lang in found["mgsm"]:
            name = MGSM_DIRECT.format(lang=lang)
            _jsonl(rows_dir / f"{name}.jsonl", mgsm_rows(data / "mgsm" / f"mgsm_{lang}.tsv")[:limit])
            _yaml(out / f"{name}.yaml", _mgsm_config(name, (rows_dir / f"{name}.jsonl").resolve(), lang))
            names.append(name)
    return names
