"""``mwork bench detect``: time and memory of neuron importance next to a plain forward pass."""

from __future__ import annotations

import argparse
import json

from mwork.models.loading import DEFAULT_MODEL


def _detect(args: argparse.Namespace) -> int:
    from mwork.neurons.bench import BenchConfig, run_bench

    cfg = BenchConfig(
        model=args.model,
        seq_len=args.seq_len,
        docs=args.docs,
        batch_size=args.batch_size,
        texts=args.texts,
        repeats=args.repeats,
        reference=not args.no_reference,
        approx=not args.no_approx,
        memory=not args.no_memory,
        dtype=args.dtype,
    )
    result = run_bench(cfg, log=lambda msg: print(msg, flush=True))
    print(json.dumps(result), flush=True)  # the last line: one JSON object
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks")
    bench_sub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    d = bench_sub.add_parser(
        "detect",
        help="time and peak memory of neuron importance vs. the plain forward pass and the reference code's way",
        description="Prints progress, then as its last line one JSON object with forward_s, importance_s, "
        "ffn_v_s, reference_s, overhead, speedup_vs_reference, peak_mem_forward_mb, peak_mem_importance_mb "
        "and more (see mwork.neurons.bench).",
    )
    d.add_argument("--model", default=DEFAULT_MODEL)
    d.add_argument("--seq-len", type=int, default=512, help="tokens per document")
    d.add_argument("--docs", type=int, default=1, help="number of documents")
    d.add_argument("--batch-size", type=int, default=None, help="documents per batch (default: all)")
    d.add_argument("--texts", default=None, help="text file, one document per line (default: the paper's English "
                   "corpus at $MWORK_DATA/corpora/english.txt if there, else random token ids)")
    d.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats (median reported)")
    d.add_argument("--dtype", default=None, help="model dtype (default float32)")
    d.add_argument("--no-reference", action="store_true", help="skip the reference code's way (d)")
    d.add_argument("--no-approx", action="store_true", help="skip the first-order Q/K approximation")
    d.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    d.set_defaults(func=_detect)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
