"""Cached stages keyed by content (mwork.stages): a stage reruns, and says why, exactly when what
it reads changed."""

from __future__ import annotations

import json

import pytest

from mwork.fingerprints import file_digest
from mwork.stages import MARKER, key_changes, run_stage, stage_status


def _two_stage_pipeline(root, calls):
    """A demo-like pipeline: ``make`` writes a file, ``use`` reads it; keys by content."""

    def make(folder):
        calls.append("make")
        (folder / "out.txt").write_text((root / "source.txt").read_text().upper())

    def use(folder):
        calls.append("use")
        (folder / "result.txt").write_text(str(len((root / "make" / "out.txt").read_text())))

    statuses = {}
    for name, fn, key in (
        ("make", make, lambda: {"settings": {"upper": True}, "texts": file_digest(root / "source.txt")}),
        ("use", use, lambda: {"settings": {}, "inputs": {"make/out.txt": file_digest(root / "make" / "out.txt")}}),
    ):
        k = key()
        status = stage_status(root / name, k)
        statuses[name] = status
        if not status.cached:
            run_stage(root / name, k, fn, status)
    return statuses


def test_a_stage_reruns_when_an_input_file_changes(tmp_path):
    calls: list[str] = []
    (tmp_path / "source.txt").write_text("abc")
    _two_stage_pipeline(tmp_path, calls)
    assert calls == ["make", "use"] and (tmp_path / "use" / "result.txt").read_text() == "3"
    statuses = _two_stage_pipeline(tmp_path, calls)
    assert calls == ["make", "use"] and all(s.cached for s in statuses.values())

    # the file `use` reads is replaced behind the pipeline's back (as issue 17 #1 replaced NeuronSets)
    (tmp_path / "make" / "out.txt").write_text("other content")
    (tmp_path / "use" / "leftover.txt").write_text("from the old inputs")
    statuses = _two_stage_pipeline(tmp_path, calls)
    assert calls == ["make", "use", "use"] and statuses["make"].cached
    assert statuses["use"].reason == "changed since the cached run: inputs.make/out.txt"
    assert (tmp_path / "use" / "result.txt").read_text() == "13"
    assert not (tmp_path / "use" / "leftover.txt").exists()  # a stale folder is emptied before rerunning

    # the source text changes: both rerun, in order
    (tmp_path / "source.txt").write_text("abcd")
    statuses = _two_stage_pipeline(tmp_path, calls)
    assert calls[-2:] == ["make", "use"] and statuses["make"].reason == "changed since the cached run: texts"
    assert (tmp_path / "use" / "result.txt").read_text() == "4"


def test_an_interrupted_stage_resumes_in_its_folder(tmp_path):
    folder = tmp_path / "stage"

    def crash(folder):
        (folder / "checkpoint").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(folder, {"n": 1}, crash)
    status = stage_status(folder, {"n": 1})
    assert not status.cached and not status.stale and "did not finish" in status.reason
    seen = []
    run_stage(folder, {"n": 1}, lambda f: seen.append((f / "checkpoint").read_text()), status)
    assert seen == ["half"] and stage_status(folder, {"n": 1}).cached
    assert json.loads((folder / MARKER).read_text())["status"] == "done"
    # with other settings the half-done work is not resumed: the folder is cleared
    (folder / MARKER).write_text(json.dumps({**json.loads((folder / MARKER).read_text()), "status": "running"}))
    status = stage_status(folder, {"n": 2})
    assert status.stale and status.reason == "changed since the cached run: n"


def test_old_or_unreadable_markers_rerun(tmp_path):
    (tmp_path / MARKER).write_text(json.dumps({"settings_sha256": "abc", "seconds": 3}))
    status = stage_status(tmp_path, {"a": 1})
    assert status.stale and "older mwork" in status.reason
    (tmp_path / MARKER).write_text("{torn")
    status = stage_status(tmp_path, {"a": 1})
    assert status.stale and "unreadable" in status.reason
    assert stage_status(tmp_path / "never", {"a": 1}).reason == ""


def test_key_changes():
    old = {"settings": {"docs": 8, "langs": ["en", "zh"]}, "texts": {"zh": "1", "fr": "2"}, "model": "m"}
    new = {"settings": {"docs": 8, "langs": ("en", "zh")}, "texts": {"zh": "1", "ru": "3"}, "model": "n"}
    assert key_changes(old, new) == ["model", "texts.fr", "texts.ru"]
    assert key_changes(old, old) == []
