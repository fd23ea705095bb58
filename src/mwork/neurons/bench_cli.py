"""``mwork bench detect``: time and memory of neuron importance next to a plain forward pass;
its options are ``BenchConfig``'s fields."""

from __future__ import annotations

import argparse
import json

from mwork.config import add_arguments, from_args


def _detect(args: argparse.Namespace) -> int:
    from mwork.neurons.bench import BenchConfig

    result = from_args(BenchConfig, args).run()
    print(json.dumps(result.data), flush=True)  # the last line: one JSON object
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from mwork.neurons.bench import BenchConfig

    p = sub.add_parser("bench", help="benchmarks")
    bench_sub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    d = bench_sub.add_parser(
        BenchConfig.command, help=BenchConfig.summary,
        description="Prints progress, then as its last line one JSON object with forward_s, importance_s, "
        "ffn_v_s, reference_s, overhead, speedup_vs_reference, peak_mem_forward_mb, peak_mem_importance_mb "
        "and more (see mwork.neurons.bench).",
    )
    add_arguments(d, BenchConfig)
    d.set_defaults(func=_detect)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
