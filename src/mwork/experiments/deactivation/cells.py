"""The grid's finished cells, kept in ``cells.jsonl`` (one JSON object a line) so that a rerun
computes only what is missing, and never reuses a cell computed from other inputs.

Each record holds its :class:`~mwork.experiments.deactivation.plan.CellKey`, the measurement
and ``inputs``: a digest of the *content* it was computed from (``GridInputs``: the model's
weights, the NeuronSet of the language whose neurons are off, the evaluation's examples and
options). On resume:

* the settings (``settings.json``: languages, regions, seeds, task ...) must be the same, or the
  folder is refused: it holds another experiment;
* a cell whose inputs differ (the sets or texts were replaced, the model retrained) is
  recomputed, and the reason is said;
* a torn last line (a run killed while writing it) is dropped, said, and its cell recomputed;
  any other unreadable line is an error that names the file and line.

Data parallel: every rank reads the files, only rank 0 writes them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from mwork import distributed
from mwork.config import digest
from mwork.experiments.deactivation.plan import CellKey
from mwork.files import write_text
from mwork.fingerprints import model_digest, neurons_digest
from mwork.neurons.neuronset import NeuronSet

_VALUES = ("score", "n", "metric", "higher_is_better", "off")


def say(message: str) -> None:
    """A note for the user (rank 0, stderr)."""
    if distributed.rank() == 0:
        print(f"[mwork deactivation] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class GridInputs:
    """Content fingerprints of what the cells are computed from: the model (``model_digest``),
    each language's NeuronSet (``neurons_digest``) and each language's evaluation (the
    evaluator's ``inputs_digest``: task, options and examples; None when it cannot say)."""

    model: str
    neurons: Mapping[str, str]
    evaluation: Mapping[str, str | None]

    @classmethod
    def of(cls, model: torch.nn.Module, neuron_sets: Mapping[str, NeuronSet], evaluate: Callable[[str], Any],
           langs: Sequence[str]) -> "GridInputs":
        inputs_digest = getattr(evaluate, "inputs_digest", None)
        return cls(model_digest(model), {lang: neurons_digest(neuron_sets[lang]) for lang in langs},
                   {lang: inputs_digest(lang) if callable(inputs_digest) else None for lang in langs})

    def for_cell(self, key: CellKey) -> str:
        """The digest a cell of ``key`` must carry to be reused."""
        return digest({"model": self.model, "neurons": self.neurons[key.neurons_of] if key.neurons_of else None,
                       "evaluation": self.evaluation[key.eval_lang]})[:16]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "neurons": dict(self.neurons), "evaluation": dict(self.evaluation)}

    @classmethod
    def from_json(cls, value: Any) -> "GridInputs | None":
        try:
            return cls(value["model"], dict(value["neurons"]), dict(value["evaluation"]))
        except (KeyError, TypeError, ValueError):
            return None

    def changes_since(self, old: "GridInputs | None") -> str:
        """What differs from ``old``, in words."""
        if old is None:
            return "the model, the NeuronSets or the evaluation differ (no record of the earlier inputs)"
        what = []
        if old.model != self.model:
            what.append("the model's weights")
        sets = [lang for lang in self.neurons if old.neurons.get(lang) != self.neurons[lang]]
        if sets:
            what.append(f"the NeuronSet of {', '.join(sets)}")
        evals = [lang for lang in self.evaluation if old.evaluation.get(lang) != self.evaluation[lang]]
        if evals:
            what.append(f"the evaluation texts / examples or options of {', '.join(evals)}")
        return (" and ".join(what) + " changed") if what else "their inputs differ"


def _check_record(obj: Any) -> None:
    if not isinstance(obj, dict) or "key" not in obj or any(v not in obj for v in _VALUES):
        raise ValueError(f"a cell is an object with key, inputs, {', '.join(_VALUES)}")
    if not isinstance(obj["key"], str):  # string keys: the format before content keys
        CellKey.from_json(obj["key"])


def read_cells(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The records of ``path`` and whether the file needs rewriting (a torn or unterminated last
    line). A torn last line is dropped and said; another bad line is a ValueError naming it."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete = data.endswith(b"\n") or not data
    if lines and lines[-1] == b"":
        lines.pop()
    records: list[dict[str, Any]] = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
            _check_record(obj)
        except (UnicodeDecodeError, ValueError) as err:
            if n == len(lines) and not complete:
                say(f"{path}: the last line is incomplete (a run stopped while writing it): dropped, "
                    "its cell is recomputed")
                return records, True
            reason = "not valid JSON" if isinstance(err, (UnicodeDecodeError, json.JSONDecodeError)) else str(err)
            raise ValueError(f"{path}:{n} is not a cell of the deactivation grid ({reason}): delete that line "
                             "(or the file, to start again) or use another --out folder") from None
        records.append(obj)
    return records, not complete


def _write_lines(path: Path, records: Sequence[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))  # atomic: old file or new


class CellStore:
    """Finished cells by key (``done``), persisted in ``path`` (see the module docstring).

    ``settings`` must match the folder's ``settings.json``; ``expected`` maps every planned
    key to the inputs digest its cell must carry (``GridInputs.for_cell``)."""

    def __init__(self, path: Path, settings: Mapping[str, Any], inputs: GridInputs, expected: Mapping[CellKey, str]):
        self.path = path
        self.expected = dict(expected)
        self.done: dict[CellKey, dict[str, Any]] = {}
        fingerprint = digest(dict(settings))[:16]
        settings_path = path.with_name("settings.json")
        old: dict[str, Any] = {}
        if path.exists() and settings_path.exists():
            try:
                old = json.loads(settings_path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ValueError(f"{settings_path} is not valid JSON: delete it and cells.jsonl to start again, "
                                 "or use another --out folder") from None
            if not isinstance(old, dict) or old.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"{path.parent} holds cells of an experiment with other settings; use another --out "
                    "folder or delete cells.jsonl to start again"
                )
        records, rewrite = read_cells(path) if path.exists() else ([], False)
        kept, stale, older = [], 0, 0
        for record in records:
            if isinstance(record["key"], str):
                older += 1
                continue
            key = CellKey.from_json(record["key"])
            if key in self.expected and record.get("inputs") != self.expected[key]:
                stale += 1
                continue
            kept.append(record)
            self.done[key] = record
        if older:
            say(f"{path}: {older} cell(s) in the format of an older mwork (no record of their inputs) are recomputed")
        if stale:
            why = inputs.changes_since(GridInputs.from_json(old.get("inputs")))
            say(f"{path}: {stale} finished cell(s) were computed from other inputs ({why}): they are recomputed")
        distributed.barrier()  # every rank has read the files before rank 0 writes
        if distributed.rank() == 0:
            write_text(settings_path, json.dumps({"fingerprint": fingerprint, **settings, "inputs": inputs.to_json()},
                                                 indent=2, default=str) + "\n")
            if rewrite or stale or older:
                _write_lines(path, kept)

    def record(self, key: CellKey, value: Mapping[str, Any]) -> dict[str, Any]:
        """The ``cells.jsonl`` record of a measured cell."""
        return {"key": key.to_json(), "inputs": self.expected[key], **value}

    def add(self, record: dict[str, Any]) -> None:
        """Keep a finished cell (rank 0 appends it to the file)."""
        if distributed.rank() == 0:
            from mwork.files import append_text

            append_text(self.path, json.dumps(record) + "\n")  # a full disk: the file keeps its earlier cells
        self.done[CellKey.from_json(record["key"])] = record
