"""``mwork steer``: the command of :class:`SteerConfig` (``add_job_command``: its options are the
config's fields); prints the sweep's table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _num(value: float | None, spec: str) -> str:
    """A measure for the table; an unmeasured one (None) as ``-``."""
    return "-" if value is None else format(value, spec)


def _print(result: Any, files: dict[str, Path]) -> None:
    u = result.data["unsteered"]
    if u.get("nonfinite"):
        print("unsteered: non-finite logits (not measured)")
    else:
        print(f"unsteered: target_rate {u['target_rate']:.3f}, target_prob_mass {u['target_prob_mass']:.4f}, "
              f"damage_ppl {_num(u['damage_ppl'], '.2f')}")
    print(f"{'method':<9} {'seed':>4} {'strength':>8} {'rate':>6} {'mass':>7} {'rank':>6} {'ppl':>8}")
    for r in result.data["rows"]:
        seed = "" if r["seed"] is None else r["seed"]
        if r.get("nonfinite"):
            print(f"{r['method']:<9} {seed!s:>4} {r['strength']:>8g}  non-finite logits in {r['nonfinite']} of "
                  f"{r['n']} generations: not measured")
            continue
        print(f"{r['method']:<9} {seed!s:>4} {r['strength']:>8g} {_num(r['target_rate'], '.3f'):>6} "
              f"{_num(r['target_prob_mass'], '.4f'):>7} {_num(r['target_rank'], 'g'):>6} "
              f"{_num(r['damage_ppl'], '.2f'):>8}")
    print(f"wrote {result.extra['out']}/steer.csv, generations.jsonl, steer.png")


def register(sub: argparse._SubParsersAction) -> None:
    from mwork.experiments.steering.config import SteerConfig
    from mwork.jobs import add_job_command

    add_job_command(
        sub, SteerConfig, report=_print,
        description="Generate from PROMPTS with the target language's neurons set to (or shifted by, or scaled "
        "by) their activation statistic on that language, for each strength; the same with random neurons of the "
        "same count per layer and kind; measure the target-language rate (sentence-level ID), the target's "
        "probability mass and rank in the next-token distribution, and the damage (the unsteered model's "
        "perplexity of the generation, repetition, XQuAD F1 in the target language). Writes DIR/steer.csv, "
        "DIR/generations.jsonl and DIR/steer.png; a rerun computes only what is missing.")
