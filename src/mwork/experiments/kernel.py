"""The experiment kernel: plan -> cells under named-field keys -> execute -> aggregate.

Every experiment (the deactivation grid, the methods comparison, the steering sweep) is a set
of *cells*, each one measurement under a key of named fields (a frozen dataclass deriving from
:class:`CellKey`: ``region, variant, neurons_of, eval_lang`` for the grid, ``intervention,
method, size, ...`` for the comparison, ``strength, variant, ...`` for steering). The kernel
gives them one cache and resume convention:

* ``OUT/settings.json``: the settings that decide which cells exist; a folder holding another
  experiment's cells is refused;
* ``OUT/cells.jsonl``: one finished cell a line, with its key, the digest of the content it was
  computed from (model weights, unit sets, evaluation texts and options) and its measurement; a
  cell whose inputs changed is recomputed and the reason said; a torn last line (a run killed
  while writing it) is dropped, said and recomputed; any other bad line is an error naming the
  file and line;
* :func:`execute` measures the missing cells in plan order (data parallel: one cell per rank a
  round, rank 0 appends the round), so a resumed run equals an uninterrupted one.

The experiment plans its cells and aggregates the records :func:`execute` returns by key.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from mwork import distributed
from mwork.config import digest
from mwork.files import append_text, write_text
from mwork.fingerprints import model_digest, neurons_digest

_VALUES = ("score", "n", "metric", "higher_is_better", "off")
_KEY_TYPES = (str, int, float, type(None))


@dataclass(frozen=True)
class CellKey:
    """What one cell measures, as named fields (strings, numbers or None); subclasses declare
    the fields. ``from_older`` may read the keys an older mwork wrote for the same cells."""

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, value: Any) -> "CellKey":
        """The key of a ``cells.jsonl`` record; a ValueError when it is not one."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(value, dict) or set(value) != set(names):
            raise ValueError(f"a cell key is an object with exactly {', '.join(names)}; got {value!r}")
        if not all(isinstance(value[n], _KEY_TYPES) and not isinstance(value[n], bool) for n in names):
            raise ValueError(f"cell key fields must be strings, numbers or null; got {value!r}")
        return cls(**value)

    @classmethod
    def from_older(cls, value: Any) -> "CellKey | None":
        """This key from a key of an older mwork (None: not one)."""
        return None

    def inputs_of(self) -> tuple[str | None, str]:
        """Whose unit set and whose evaluation the cell reads (for :meth:`CellInputs.for_cell`)."""
        return getattr(self, "neurons_of", None), getattr(self, "eval_lang")

    def __str__(self) -> str:
        return "|".join(str(v) for v in self.to_json().values() if v is not None)


@dataclass(frozen=True, eq=False)
class Cell:
    """A planned cell: its key and what it needs to be measured: the units it switches off and
    the lever it applies (both None for the unmodified model)."""

    key: CellKey
    off: Any = None
    lever: Any = None


@dataclass(frozen=True)
class CellInputs:
    """Content fingerprints of what the cells are computed from: the model (``model_digest``),
    each unit set by name (``neurons_digest`` or another digest) and each evaluation by name
    (the evaluator's ``inputs_digest``: task, options and examples; None when it cannot say)."""

    model: str
    neurons: Mapping[str, str]
    evaluation: Mapping[str, str | None]

    @classmethod
    def of(cls, model: torch.nn.Module, neuron_sets: Mapping[str, Any], evaluate: Callable[[str], Any],
           langs: Sequence[str]) -> "CellInputs":
        inputs_digest = getattr(evaluate, "inputs_digest", None)
        return cls(model_digest(model), {lang: neurons_digest(neuron_sets[lang]) for lang in langs},
                   {lang: inputs_digest(lang) if callable(inputs_digest) else None for lang in langs})

    def for_cell(self, key: CellKey) -> str:
        """The digest a cell of ``key`` must carry to be reused."""
        neurons_of, eval_lang = key.inputs_of()
        return digest({"model": self.model, "neurons": self.neurons[neurons_of] if neurons_of else None,
                       "evaluation": self.evaluation[eval_lang]})[:16]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "neurons": dict(self.neurons), "evaluation": dict(self.evaluation)}

    @classmethod
    def from_json(cls, value: Any) -> "CellInputs | None":
        try:
            return cls(value["model"], dict(value["neurons"]), dict(value["evaluation"]))
        except (KeyError, TypeError, ValueError):
            return None

    def changes_since(self, old: "CellInputs | None") -> str:
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


class CellStore:
    """Finished cells by key (``done``), persisted in ``path`` (see the module docstring).

    ``settings`` must match the folder's ``settings.json``; ``expected`` maps every planned key
    to the inputs digest its cell must carry; ``key_type`` reads the keys back; ``name`` says
    what the cells are of in messages (``the deactivation grid``), ``label`` prefixes them."""

    def __init__(self, path: Path, settings: Mapping[str, Any], inputs: CellInputs, expected: Mapping[CellKey, str],
                 *, key_type: type[CellKey], name: str, label: str):
        self.path, self.key_type, self.name, self.label = path, key_type, name, label
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
                raise ValueError(f"{path.parent} holds cells of an experiment with other settings; use another --out "
                                 "folder or delete cells.jsonl to start again")
        records, rewrite = self._read() if path.exists() else ([], False)
        kept, stale, older = [], 0, 0
        for record in records:
            key = self._key(record["key"])
            if key is None:
                older += 1
                continue
            record = {**record, "key": key.to_json()}
            if key in self.expected and record.get("inputs") != self.expected[key]:
                stale += 1
                continue
            kept.append(record)
            self.done[key] = record
        if older:
            self.say(f"{path}: {older} cell(s) in the format of an older mwork (no record of their inputs) are "
                     "recomputed")
        if stale:
            why = inputs.changes_since(CellInputs.from_json(old.get("inputs")))
            self.say(f"{path}: {stale} finished cell(s) were computed from other inputs ({why}): they are recomputed")
        distributed.barrier()  # every rank has read the files before rank 0 writes
        if distributed.rank() == 0:
            write_text(settings_path, json.dumps({"fingerprint": fingerprint, **settings, "inputs": inputs.to_json()},
                                                 indent=2, default=str) + "\n")
            if rewrite or stale or older or any(r["key"] != o["key"] for r, o in zip(kept, records)):
                _write_lines(path, kept)

    def say(self, message: str) -> None:
        """A note for the user (rank 0, stderr)."""
        if distributed.rank() == 0:
            print(f"[mwork {self.label}] {message}", file=sys.stderr, flush=True)

    def _key(self, value: Any) -> CellKey | None:
        """The key of a record; None for a key of an older mwork that cannot be read as today's."""
        if isinstance(value, str):  # string keys: the format before content keys
            return None
        try:
            return self.key_type.from_json(value)
        except ValueError:
            return self.key_type.from_older(value)

    def _check(self, obj: Any) -> None:
        if not isinstance(obj, dict) or "key" not in obj or any(v not in obj for v in _VALUES):
            raise ValueError(f"a cell is an object with key, inputs, {', '.join(_VALUES)}")
        if not isinstance(obj["key"], str) and self.key_type.from_older(obj["key"]) is None:
            self.key_type.from_json(obj["key"])

    def _read(self) -> tuple[list[dict[str, Any]], bool]:
        """The records of the file and whether it needs rewriting (a torn or unterminated last
        line). A torn last line is dropped and said; another bad line is a ValueError naming it."""
        data = self.path.read_bytes()
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
                self._check(obj)
            except (UnicodeDecodeError, ValueError) as err:
                if n == len(lines) and not complete:
                    self.say(f"{self.path}: the last line is incomplete (a run stopped while writing it): dropped, "
                             "its cell is recomputed")
                    return records, True
                reason = "not valid JSON" if isinstance(err, (UnicodeDecodeError, json.JSONDecodeError)) else str(err)
                raise ValueError(f"{self.path}:{n} is not a cell of {self.name} ({reason}): delete that line "
                                 "(or the file, to start again) or use another --out folder") from None
            records.append(obj)
        return records, not complete

    def record(self, key: CellKey, value: Mapping[str, Any]) -> dict[str, Any]:
        """The ``cells.jsonl`` record of a measured cell."""
        return {"key": key.to_json(), "inputs": self.expected[key], **value}

    def add(self, record: dict[str, Any]) -> None:
        """Keep a finished cell (rank 0 appends it to the file)."""
        if distributed.rank() == 0:
            append_text(self.path, json.dumps(record) + "\n")  # a full disk: the file keeps its earlier cells
        self.done[self.key_type.from_json(record["key"])] = record


def _write_lines(path: Path, records: Sequence[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))  # atomic: old file or new


def execute(cells: Sequence[Cell], store: CellStore, measure: Callable[[Cell], dict[str, Any]], *,
            progress: bool = True) -> dict[CellKey, dict[str, Any]]:
    """Every cell's record (reused from ``store`` or measured with ``measure``), in plan order.

    Data parallel (``mwork.distributed``): the missing cells are dealt out in rounds of one cell
    per rank; each rank computes its cell alone (``local()``: the evaluation does not shard), so
    every cell is the single process's number; after each round every rank has all the round's
    cells and rank 0 appends them (a crash loses one round at most)."""
    todo = [cell for cell in cells if cell.key not in store.done]
    world, rank = distributed.world_size(), distributed.rank()
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc=f"{store.label} cells",
               disable=not progress or rank != 0, unit="cell")
    for start in range(0, len(todo), world):
        round_ = todo[start:start + world]
        bar.set_postfix_str(str(round_[0].key)[:40])
        mine = {}
        if rank < len(round_):
            cell = round_[rank]
            with distributed.local():
                mine[rank] = store.record(cell.key, measure(cell))
        for record in distributed.gather_in_order(len(round_), mine):
            store.add(record)
        bar.update(len(round_))
    bar.close()
    return {cell.key: store.done[cell.key] for cell in cells}
