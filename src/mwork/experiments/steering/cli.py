"""``mwork steer``: a thin shim over :func:`mwork.experiments.steering.run_steer`; its options are
the fields of :class:`SteerConfig` (help and defaults written once, there)."""

from __future__ import annotations

import argparse

from mwork.config import add_arguments, from_args


def _num(value: float | None, spec: str) -> str:
    """A measure for the table; an unmeasured one (None) as ``-``."""
    return "-" if value is None else format(value, spec)


def _steer(args: argparse.Namespace) -> int:
    from mwork.experiments.steering.config import SteerConfig
    from mwork.experiments.steering.runner import run_steer

    config = from_args(SteerConfig, args)  # bad settings fail here, before anything is loaded
    result = run_steer(config)
    u = result["unsteered"]
    if u.get("nonfinite"):
        print("unsteered: non-finite logits (not measured)")
    else:
        print(f"unsteered: target_rate {u['target_rate']:.3f}, target_prob_mass {u['target_prob_mass']:.4f}, "
              f"damage_ppl {_num(u['damage_ppl'], '.2f')}")
    print(f"{'method':<9} {'seed':>4} {'strength':>8} {'rate':>6} {'mass':>7} {'rank':>6} {'ppl':>8}")
    for r in result["rows"]:
        seed = "" if r["seed"] is None else r["seed"]
        if r.get("nonfinite"):
            print(f"{r['method']:<9} {seed!s:>4} {r['strength']:>8g}  non-finite logits in {r['nonfinite']} of "
                  f"{r['n']} generations: not measured")
            continue
        print(f"{r['method']:<9} {seed!s:>4} {r['strength']:>8g} {_num(r['target_rate'], '.3f'):>6} "
              f"{_num(r['target_prob_mass'], '.4f'):>7} {_num(r['target_rank'], 'g'):>6} "
              f"{_num(r['damage_ppl'], '.2f'):>8}")
    print(f"wrote {config.out}/steer.csv, generations.jsonl, steer.png")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from mwork.experiments.steering.config import SteerConfig

    p = sub.add_parser(
        "steer", help="steer the output language with a language's neurons: a sweep of strengths against random "
        "neurons and the unsteered model",
        description="Generate from PROMPTS with the target language's neurons set to (or shifted by, or scaled "
        "by) their activation statistic on that language, for each strength; the same with random neurons of the "
        "same count per layer and kind; measure the target-language rate (sentence-level ID), the target's "
        "probability mass and rank in the next-token distribution, and the damage (the unsteered model's "
        "perplexity of the generation, repetition, XQuAD F1 in the target language). Writes DIR/steer.csv, "
        "DIR/generations.jsonl and DIR/steer.png; a rerun computes only what is missing.")
    add_arguments(p, SteerConfig)
    p.set_defaults(func=_steer)
