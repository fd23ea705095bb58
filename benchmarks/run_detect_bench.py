"""Run ``mwork bench detect`` at several lengths and write a table.

    python benchmarks/run_detect_bench.py --model gemma-3-270m --lengths 128 512 2048 4096 \
        --out benchmarks/results/gemma-3-270m

writes ``<out>.jsonl`` (one JSON object per length, as printed by the benchmark) and
``<out>.md`` (the table). Each length runs in its own process, one after the other.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

COLUMNS = [
    ("seq_len", "l", "{}"),
    ("forward_s", "forward s", "{:.2f}"),
    ("ffn_v_s", "FFN+V s", "{:.2f}"),
    ("ffn_v_overhead", "FFN+V / fwd", "{:.2f}"),
    ("importance_s", "all kinds s", "{:.2f}"),
    ("overhead", "all / fwd", "{:.2f}"),
    ("reference_s", "reference s", "{:.1f}"),
    ("speedup_vs_reference", "speed-up vs ref", "{:.0f}x"),
    ("peak_mem_forward_mb", "peak MB fwd", "{:.0f}"),
    ("peak_mem_importance_mb", "peak MB all", "{:.0f}"),
    ("peak_mem_ratio", "mem ratio", "{:.2f}"),
    ("forward_extra_mb", "extra MB fwd", "{:.0f}"),
    ("importance_extra_mb", "extra MB all", "{:.0f}"),
    ("reference_mem_estimate_mb", "ref MB (est.)", "{:.0f}"),
    ("approx_q_spearman", "approx Q rho", "{:.3f}"),
    ("approx_k_spearman", "approx K rho", "{:.3f}"),
]


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(c[1] for c in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            v = r.get(key)
            cells.append("-" if v is None else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    notes = {r["seq_len"]: r["reference_status"] for r in rows if r.get("reference_status") != "measured"}
    for length, status in notes.items():
        lines.append(f"\nl = {length}: reference way {status}.")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048, 4096])
    p.add_argument("--docs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--texts", default=None)
    p.add_argument("--approx-max-len", type=int, default=512,
                   help="time the first-order Q/K approximation only up to this length (it is slow at long l)")
    p.add_argument("--out", default="benchmarks/results/detect")
    args = p.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for length in args.lengths:
        cmd = [sys.executable, "-m", "mwork.cli", "bench", "detect", "--model", args.model, "--seq-len", str(length),
               "--docs", str(args.docs), "--repeats", str(args.repeats)]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        if args.texts:
            cmd += ["--texts", args.texts]
        if length > args.approx_max_len:
            cmd += ["--no-approx"]
        print("$ " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(lines[-1]))
        with open(out.with_suffix(".jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        out.with_suffix(".md").write_text(table(rows))
        print(table(rows[-1:]), flush=True)
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
