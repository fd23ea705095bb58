"""The benchmark's own files, from the folder a user names (``--lcb-dir``): the test sets
(``test_sets/<task>/<dataset>/<lang>.csv``, a ``prompt`` column, ``source`` and ``language`` as
released) and the paper's few-shot turns (``few_shot_examples.json``: ``{task: {lang: [{role:
User|Chatbot, message}, ...]}}``, five user/chatbot pairs per language). Everything is read and
checked here, before a model loads, so a wrong folder, task or language is one clear sentence."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mwork.confusion.tables import read_csv_rows

#: the benchmark's two tasks: asked in L to answer in L, and asked in English to answer in L
TASKS: tuple[str, ...] = ("monolingual", "crosslingual")
#: the benchmark's 15 languages and the English names its cross-lingual prompts use
LANGUAGE_NAMES: dict[str, str] = {
    "ar": "Arabic", "de": "German", "en": "English", "es": "Spanish", "fr": "French", "hi": "Hindi",
    "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean", "pt": "Portuguese", "ru": "Russian",
    "tr": "Turkish", "vi": "Vietnamese", "zh": "Chinese"}
#: the shot counts of the paper (0: the prompt alone; 1 and 5: that many user/chatbot pairs first)
SHOTS: tuple[int, ...] = (0, 1, 5)
FEW_SHOT_FILE = "few_shot_examples.json"
ROLES = ("User", "Chatbot")


@dataclass(frozen=True)
class LcbPrompt:
    """One test prompt: its task, source (as the released completions name it), expected
    language, text, and its row in its file (``number``, from 0)."""

    task: str
    source: str
    language: str
    prompt: str
    number: int


def parse_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """The tasks, checked (known, no repeats)."""
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown task {bad[0]!r} in --tasks: the benchmark's tasks are {', '.join(TASKS)}")
    if not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"--tasks must name each task once (one or both of {', '.join(TASKS)}), got {list(tasks)}")
    return tuple(tasks)


def parse_languages(langs: Sequence[str]) -> tuple[str, ...]:
    """The languages, checked (the benchmark's, no repeats)."""
    bad = [x for x in langs if x not in LANGUAGE_NAMES]
    if bad:
        raise ValueError(f"unknown language {bad[0]!r} in --langs: the benchmark's languages are "
                         f"{', '.join(sorted(LANGUAGE_NAMES))}")
    if not langs or len(set(langs)) != len(langs):
        raise ValueError(f"--langs must name each language once, got {list(langs)}")
    return tuple(langs)


def check_shots(shots: int) -> int:
    if shots not in SHOTS:
        raise ValueError(f"--shots must be one of {', '.join(map(str, SHOTS))} (the paper's few-shot settings), "
                         f"got {shots}")
    return shots


class LcbFolder:
    """The benchmark's folder (``--lcb-dir``): its test sets and few-shot turns."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"--lcb-dir {self.path} is not a folder; give the Language Confusion Benchmark's "
                                    "folder (test_sets/ and few_shot_examples.json, from for-ai/language-confusion)")
        self.test_sets = self.path / "test_sets"
        if not self.test_sets.is_dir():
            raise FileNotFoundError(f"--lcb-dir {self.path} has no test_sets/ folder (the benchmark's "
                                    "test_sets/<task>/<dataset>/<lang>.csv; unzip the repository's test_sets.zip there)")

    def files(self, task: str, language: str) -> list[Path]:
        """``test_sets/<task>/<dataset>/<language>.csv`` of every dataset that has the language,
        by dataset name."""
        folder = self.test_sets / task
        if not folder.is_dir():
            return []
        return sorted(p / f"{language}.csv" for p in folder.iterdir() if (p / f"{language}.csv").is_file())

    def plan(self, tasks: Sequence[str], langs: Sequence[str]) -> tuple[dict[str, tuple[str, ...]], list[str]]:
        """The languages each task is run in, and notes on the pairs the folder has no test set
        for (English has no cross-lingual set). A language with a test set in none of the tasks
        is an error."""
        plan: dict[str, tuple[str, ...]] = {}
        notes = []
        for task in tasks:
            have = tuple(lang for lang in langs if self.files(task, lang))
            missing = [lang for lang in langs if lang not in have]
            if missing:
                notes.append(f"{self.test_sets / task} has no test set in {', '.join(missing)}: {task} is run in "
                             f"{', '.join(have) or 'no language'}")
            plan[task] = have
        for lang in langs:
            if not any(lang in have for have in plan.values()):
                raise ValueError(f"{self.test_sets} has no {' or '.join(tasks)} test set in {lang} "
                                 f"(test_sets/<task>/<dataset>/{lang}.csv); choose other --langs or --tasks")
        return plan, notes

    def prompts(self, task: str, language: str, limit: int | None = None) -> list[LcbPrompt]:
        """The first ``limit`` prompts (all: None) of each of the task's test sets in ``language``,
        dataset by dataset, in file order."""
        out: list[LcbPrompt] = []
        for path in self.files(task, language):
            rows = read_csv_rows(path, ("prompt",), "the test set",
                                 "a test set is the benchmark's CSV with a prompt column (and source, language)")
            for i, row in enumerate(rows[:limit] if limit is not None else rows):
                text = row["prompt"]
                if not text.strip():
                    raise ValueError(f"{path}: data row {i + 1} has an empty prompt")
                lang = row.get("language", "").strip() or language
                if lang != language:
                    raise ValueError(f"{path}: data row {i + 1} is labelled {lang!r}, not {language!r}")
                source = row.get("source", "").strip() or path.parent.name
                out.append(LcbPrompt(task, source, language, text, i))
        return out

    def few_shot(self, task: str, language: str, shots: int) -> list[dict[str, str]]:
        """The paper's first ``shots`` user/chatbot pairs for ``task`` in ``language`` (the
        turns as released: ``{role, message}``)."""
        check_shots(shots)
        if shots == 0:
            return []
        turns = self._few_shot_turns(task, language)
        need = 2 * shots
        if len(turns) < need:
            raise ValueError(f"{self.path / FEW_SHOT_FILE} has {len(turns) // 2} {task} example(s) for {language}, "
                             f"fewer than --shots {shots}")
        return turns[:need]

    def _few_shot_turns(self, task: str, language: str) -> list[dict[str, str]]:
        path = self.path / FEW_SHOT_FILE
        data = _read_json(path)
        turns = data.get(task, {}).get(language) if isinstance(data.get(task), dict) else None
        if turns is None:
            raise ValueError(f"{path} has no {task} few-shot turns for {language}; use --shots 0 or the benchmark's "
                             "file")
        if not isinstance(turns, list) or not all(
                isinstance(t, dict) and isinstance(t.get("message"), str) and t.get("role") == ROLES[i % 2]
                for i, t in enumerate(turns)):
            raise ValueError(f"{path}: the {task} turns for {language} must be a list of {{role, message}} objects "
                             "alternating User and Chatbot, starting with User")
        return [{"role": t["role"], "message": t["message"]} for t in turns]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: the few-shot turns are the benchmark's {FEW_SHOT_FILE} "
                                "(give --shots 0 to run without them)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable JSON file ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold an object {{task: {{language: turns}}}}")
    return data
