"""The experiment kernel (mwork.experiments.kernel) with a key of its own, as a new experiment
would use it: plan, execute, resume (nothing recomputed), changed inputs recomputed, older keys
read as today's, and the methods comparison's and the steering sweep's keys of older folders."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from mwork.experiments.kernel import Cell, CellInputs, CellKey, CellStore, execute
from mwork.experiments.methods.tables import MethodsKey
from mwork.experiments.steering.sweep import SteerKey


@dataclass(frozen=True)
class LeverKey(CellKey):
    lever: str
    strength: float | None
    neurons_of: str | None
    eval_lang: str

    @classmethod
    def from_older(cls, value: Any) -> "LeverKey | None":
        if isinstance(value, dict) and set(value) == {"name", "lang"}:
            lever, _, strength = value["name"].partition("@")
            return cls(lever, float(strength), value["lang"], value["lang"])
        return None


INPUTS = CellInputs("model", {"fr": "set-fr"}, {"fr": "texts-fr", "de": "texts-de"})
PLAN = [Cell(LeverKey("none", None, None, "fr")),
        *[Cell(LeverKey("vectors", s, "fr", ev), lever=s) for s in (1.0, 2.0) for ev in ("fr", "de")]]


def _run(tmp_path, calls, inputs=INPUTS, settings=None):
    store = CellStore(tmp_path / "cells.jsonl", settings or {"levers": ["vectors"]}, inputs,
                      {c.key: inputs.for_cell(c.key) for c in PLAN}, key_type=LeverKey, name="the lever test",
                      label="lever")

    def measure(cell):
        calls.append(cell.key)
        return {"score": (cell.lever or 0) * 10 + len(cell.key.eval_lang), "n": 3, "metric": "m",
                "higher_is_better": True, "off": 0}

    return execute(PLAN, store, measure, progress=False)


def test_plan_execute_resume(tmp_path, capsys):
    calls = []
    first = _run(tmp_path, calls)
    assert calls == [c.key for c in PLAN] and first[PLAN[3].key]["score"] == 22
    lines = (tmp_path / "cells.jsonl").read_text().splitlines()
    assert json.loads(lines[1])["key"] == {"lever": "vectors", "strength": 1.0, "neurons_of": "fr", "eval_lang": "fr"}
    assert str(PLAN[1].key) == "vectors|1.0|fr|fr"
    calls.clear()
    assert _run(tmp_path, calls) == first and calls == []  # resumed: nothing recomputed
    changed = CellInputs("model", {"fr": "set-fr"}, {"fr": "texts-fr", "de": "other"})
    again = _run(tmp_path, calls, changed)
    assert {k: r["score"] for k, r in again.items()} == {k: r["score"] for k, r in first.items()}
    assert calls == [PLAN[2].key, PLAN[4].key]  # only the cells that read de's texts
    assert "the evaluation texts / examples or options of de changed" in capsys.readouterr().err
    with pytest.raises(ValueError, match="holds cells of an experiment with other settings"):
        _run(tmp_path, calls, changed, settings={"levers": ["neurons"]})


def test_torn_and_bad_lines(tmp_path, capsys):
    calls = []
    _run(tmp_path, calls)
    path = tmp_path / "cells.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    calls.clear()
    _run(tmp_path, calls)
    assert calls == [PLAN[-1].key] and path.read_bytes() == data
    assert "[mwork lever]" in capsys.readouterr().err
    lines = data.decode().splitlines(keepends=True)
    path.write_text(lines[0] + '{"key": {"lever": 1}, "inputs": "x", "score": 1, "n": 1, "metric": "m", '
                    '"higher_is_better": true, "off": 0}\n' + "".join(lines[1:]))
    with pytest.raises(ValueError, match=r"cells.jsonl:2 is not a cell of the lever test"):
        _run(tmp_path, calls)


def test_older_keys_are_read_as_todays(tmp_path):
    calls = []
    first = _run(tmp_path, calls)
    path = tmp_path / "cells.jsonl"
    new = path.read_text()
    records = [json.loads(line) for line in new.splitlines()]
    for r in records:
        k = r["key"]
        if k["lever"] == "vectors" and k["neurons_of"] == k["eval_lang"]:
            r["key"] = {"name": f"vectors@{k['strength']}", "lang": k["eval_lang"]}
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    calls.clear()
    assert _run(tmp_path, calls) == first and calls == []
    assert path.read_text() == new  # rewritten in today's keys


def test_methods_and_steering_read_their_older_keys():
    old = {"region": "zero|plnd|1%", "variant": "random3", "neurons_of": "fr", "eval_lang": "de"}
    assert MethodsKey.from_older(old) == MethodsKey("zero", "plnd", "1%", "random3", "fr", "de")
    assert MethodsKey.from_older({**old, "region": "original", "neurons_of": None}) == MethodsKey.original("de")
    assert MethodsKey.from_older({**old, "region": "task-solving FFN"}) is None
    steer = {"region": "strength=2.5", "variant": "specific", "neurons_of": "fr", "eval_lang": "en"}
    assert SteerKey.from_older(steer) == SteerKey(2.5, "specific", "fr", "en")
    assert SteerKey.from_older({**steer, "region": "original"}) == SteerKey.original("en")
    with pytest.raises(ValueError, match="cell key"):
        MethodsKey.from_json(old)
