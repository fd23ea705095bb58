"""benchmarks/gpu_check.sh runs without a GPU (CI has none) and prints its one table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.sh"


def _table(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_gpu_check_runs_on_cpu_and_prints_one_table():
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--families", "llama,gpt2", "--bench-lengths",
                           "16,32"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = _table(proc.stdout)
    assert table[0] == ["check", "model", "dtype", "size", "metric", "value", "limit", "ok"]
    rows = table[1:]
    key = [(r[0], r[1], r[2], r[4]) for r in rows]
    for alias in ("tiny-random-llama", "tiny-random-gpt2"):
        assert ("agreement", alias, "float32", "max rel err") in key
        assert ("agreement", alias, "bfloat16", "max rel err") in key
        assert ("agreement", alias, "bfloat16", "rank corr") in key
        assert ("deactivate exit", alias, "float32", "after == before (bits); inside differs") in key
        assert ("deactivate exit", alias, "bfloat16", "after == before (bits); inside differs") in key
    timing = [r for r in rows if r[0] == "detect timing"]
    assert [r[3] for r in timing] == ["l=16", "l=32"] and all(r[1] == "tiny-random-gemma3" for r in timing)
    assert all(r[7] == "yes" for r in rows if r[0] != "detect timing")
    fp32 = [float(r[5].split()[0]) for r in rows if r[2] == "float32" and r[4] == "max rel err"]
    assert max(fp32) < 1e-5  # float32 on the CPU agrees far better than the 1e-3 limit
    assert proc.stdout.rstrip().endswith("ALL OK")


def test_gpu_check_fails_loudly_on_a_failed_row(monkeypatch, capsys):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(gpu_check, "FP32_MAX_REL", 0.0)  # no float32 error can pass
    assert gpu_check.main(["--device", "cpu", "--families", "llama", "--no-bench"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: 1 rows" in out and "| NO |" in out
