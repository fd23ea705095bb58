"""A bounded fuzz test over the CLI's options (issue 17, "nothing silently wrong").

For every ``mwork`` subcommand that takes a model (and the NeuronSet commands beside them), on
the tiny random llama: each invalid value in the command's list below is run once, together
with a seeded random draw of valid options; a few draws of valid options alone run too. Every
run goes through ``mwork.cli.main`` in-process and must hold to the CLI's promise:

* no Python traceback reaches the user (``main`` raises nothing but argparse's ``SystemExit``,
  and no output shows a traceback);
* an invalid value never exits 0; it ends in one line ``mwork COMMAND: error: ...`` that names
  the offending option (its flag or its field name) or the value itself;
* a valid draw exits 0 (a ``warn`` case exits 0 and its warning names the value's option).

The draws are fixed by ``SEED`` (``random.Random``), so a failure reproduces. The sizes are
tiny (two documents, one prompt, one training step, 16-token windows): the whole file takes
well under a minute. ``MWORK_FUZZ_RECORD=FILE`` writes every run (command, the options
changed, exit code, message) as JSON lines; ``python tests/test_cli_fuzz.py NOTES.md`` runs
this file so and writes the list of cases with the message a user gets.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pytest

from mwork.cli import build_parser, main
from tests.conftest import TEST_DATA

SEED = 17
M = "tiny-random-llama"
LCB = str(Path(__file__).resolve().parent / "data" / "lcb")


@dataclass(frozen=True)
class Bad:
    """An invalid value: ``args`` set on top of a valid run (the offending option last); the
    message must name one of ``names`` (default: that option's flag or field, or its value).
    ``warn``: a value that is allowed but must be warned about (exit 0, the warning names it)."""

    args: tuple[str, ...]
    names: tuple[str, ...] = ()
    warn: bool = False
    positionals: tuple[str, ...] | None = None


def bad(*args: str, names: Sequence[str] = (), warn: bool = False, positionals: Sequence[str] | None = None) -> Bad:
    return Bad(tuple(args), tuple(names), warn, None if positionals is None else tuple(positionals))


@dataclass(frozen=True)
class Command:
    """A subcommand: the words that name it, a cheap valid run (``base`` options and
    ``positionals``), slots of valid alternatives (a draw takes at most one of each), its
    invalid values and how many draws of valid options alone run."""

    words: tuple[str, ...]
    base: tuple[str, ...]
    slots: tuple[tuple[tuple[str, ...], ...], ...] = ()
    bad: tuple[Bad, ...] = ()
    valid_draws: int = 2
    positionals: tuple[str, ...] = ()
    append: frozenset[str] = field(default_factory=frozenset)  # options that repeat (action="append")


def slots(*groups: Sequence[Sequence[str]]) -> tuple[tuple[tuple[str, ...], ...], ...]:
    return tuple(tuple(tuple(alt) for alt in group) for group in groups)


NUMERIC = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+|nan|inf)([eE][-+]?\d+)?$", re.IGNORECASE)
COMMON_BAD = (bad("--dtype", "float8"),)
DEVICE_BAD = (bad("--device", "tpu"), bad("--device", "cuda:99"))

COMMANDS: dict[str, Command] = {
    "info": Command(("info",), ("--model", M), bad=(
        bad("--model", "tiny-random-nope"), bad("--model", "<folder>"), bad("--model", "<fr>"), bad("--model", "nope"),
    ), valid_draws=1),
    "ppl": Command(("ppl",), ("--model", M, "--texts", "<fr>", "--max-length", "16"), slots(
        [["--neurons", "<set_fr>"], ["--random-like", "<set_fr>", "--seed", "1"],
         ["--neurons", "<set_fr>", "--layers", "0-1", "--kinds", "ffn,attn", "--scale", "0.5"],
         ["--neurons", "<set_fr>", "--layers", "0,2", "--kinds", "q"]],
        [["--max-length", "8"], ["--max-length", "32", "--stride", "8"]],
        [["--batch-size", "1"], ["--batch-size", "3"]],
        [["--max-texts", "1"], ["--texts", "<fr>[0:1]"]],
        [["--delta", "<delta>"]], [["--dtype", "float64"], ["--dtype", "bf16"]], [["--device", "cpu"]],
        [["--out", "<fresh>.json"]],
    ), bad=(
        bad("--max-length", "0"), bad("--max-length", "-3"), bad("--max-length", "1"), bad("--max-length", "abc"),
        bad("--batch-size", "0"), bad("--max-texts", "0"), bad("--stride", "0"), bad("--stride", "-1"),
        bad("--stride", "999"), bad("--articles", "5:2"), bad("--articles", "a:b"), bad("--articles", "0:24"),
        bad("--texts", "<nope>.txt"), bad("--texts", "<folder>"), bad("--texts", "<empty>"),
        bad("--texts", "<fr>[5:2]"),
        bad("--texts", "xquad:xx", names=["xx"]), bad("--texts", "builtin:xx", names=["xx"]),
        bad("--neurons", "<set_fr>", "--layers", "99"), bad("--neurons", "<set_fr>", "--layers", "2-1"),
        bad("--neurons", "<set_fr>", "--layers", "a"), bad("--neurons", "<set_fr>", "--kinds", "qq"),
        bad("--neurons", "<set_fr>", "--kinds", ","), bad("--layers", "0"), bad("--neurons", "<nope>.safetensors"),
        bad("--neurons", "<folder>"), bad("--neurons", "<fr>"),
        bad("--neurons", "<set_fr>", "--random-like", "<set_en>"),
        bad("--random-like", "<nope>.safetensors"), bad("--seed", "1"),
        bad("--neurons", "<set_fr>", "--scale", "nan"), bad("--neurons", "<set_fr>", "--scale", "inf"),
        bad("--scale", "abc"), bad("--scale", "0.5"), bad("--delta", "<nope>"), bad("--delta", "<folder>"),
        bad("--out", "<afile>/x.json"), bad("--out", "<folder>"), bad("--device-map", "nonsense"),
        bad("--device", "cpu", "--device-map", "auto", names=["--device-map", "device_map"]),
        *COMMON_BAD, *DEVICE_BAD,
    )),
    "detect": Command(("detect",), ("--model", M, "--corpus", "<fr>", "--lang", "fr", "--out", "<fresh>", "--quiet",
                                    "--max-length", "16"), slots(
        [["--top-fraction", "0.3"], ["--top-k", "5"], ["--epsilon", "0.01"], ["--rule", "top-k", "--top-k", "3"],
         ["--kinds", "ffn,v", "--top-fraction", "ffn=0.1,v=0.3"], ["--kinds", "q,k"]],
        [["--min-doc-fraction", "0.5"]], [["--truncate"], ["--max-length", "8"]],
        [["--batch-size", "1", "--buffer-docs", "1"]], [["--qk-method", "approx"]], [["--max-docs", "1"]],
        [["--no-resume"], ["--checkpoint-every", "1"]], [["--dtype", "float64"]],
    ), bad=(
        bad("--max-docs", "0"), bad("--max-docs", "-1"), bad("--top-fraction", "1.5"), bad("--top-fraction", "-0.1"),
        bad("--top-fraction", "0"), bad("--top-fraction", "nan"), bad("--top-k", "0"), bad("--top-k", "-2"),
        bad("--epsilon", "nan"), bad("--epsilon", "inf"), bad("--kinds", "ffn,ffn"), bad("--kinds", "qq"),
        bad("--kinds", ","), bad("--top-fraction", "ffn=0.1,qq=0.3"), bad("--top-fraction", "ffn=0.1"),
        bad("--top-fraction", "0.1", "--top-k", "5"), bad("--min-doc-fraction", "0"), bad("--min-doc-fraction", "1.5"),
        bad("--max-length", "0"), bad("--max-length", "1"), bad("--max-length", "abc"), bad("--batch-size", "0"),
        bad("--buffer-docs", "0"), bad("--checkpoint-every", "0"), bad("--articles", "5:2"),
        bad("--articles", "0:24"), bad("--corpus", "<nope>.txt"), bad("--corpus", "<folder>"),
        bad("--corpus", "<empty>"), bad("--format", "squad"), bad("--format", "jsonl", names=["<fr>"]),
        bad("--format", "csv"),
        bad("--lang", ""), bad("--rule", "top-k"), bad("--top-k", "5", "--rule", "epsilon"),
        bad("--lape-top-rate", "0.1"),
        bad("--text-field", "body"), bad("--out", "<afile>/fr"), bad("--out", "<dotsafetensors>"),
        bad("--out-dir", "<fresh>"), bad("--qk-method", "nope"), bad("--qk-method", "approx", "--reference-compat"),
        bad("--method", "nope"), bad("--hf-dataset", "<nope>"),
        bad("--epsilon", "-1", warn=True), bad("--top-k", "999", warn=True),
        *COMMON_BAD, *DEVICE_BAD,
    )),
    "detect-lape": Command(("detect",), ("--method", "lape", "--model", M, "--corpus", "fr=<fr>", "--corpus", "en=<en>",
                                         "--out-dir", "<fresh>", "--quiet", "--max-length", "16"), slots(
        [["--lape-top-rate", "0.05"]], [["--lape-filter-rate", "0.9"]], [["--lape-activation-bar-ratio", "0.8"]],
        [["--max-docs", "1"]], [["--batch-size", "1"]], [["--truncate"]],
    ), bad=(
        bad("--lape-top-rate", "0"), bad("--lape-top-rate", "1.5"), bad("--lape-top-rate", "-1"),
        bad("--lape-filter-rate", "2"), bad("--lape-filter-rate", "-1"), bad("--lape-activation-bar-ratio", "1.5"),
        bad("--lape-activation-bar-ratio", "-0.5"), bad("--corpus", "fr=<en>"), bad("--corpus", "xx"),
        bad("--corpus", "de=<nope>.txt"), bad("--corpus", "de=<empty>"), bad("--max-docs", "0"),
        bad("--max-length", "0"), bad("--kinds", "q"), bad("--top-k", "5"), bad("--batch-size", "0"),
        bad("--out", "<fresh>"), bad("--lang", "fr"), bad("--articles", "0:24"), bad("--format", "text"),
        bad("--text-field", "body"), bad("--out-dir", "<afile>"), *COMMON_BAD,
    ), append=frozenset({"--corpus"})),
    "detect-ap": Command(("detect",), ("--method", "ap", "--model", M, "--corpus", "fr=<fr>", "--corpus", "en=<en>",
                                       "--out-dir", "<fresh>", "--quiet", "--max-length", "16", "--ap-top", "10",
                                       "--ap-bottom", "10"), slots(
        [["--ap-top", "5"]], [["--ap-bottom", "0"]], [["--ap-ffn-site", "ffn.act"]], [["--kinds", "ffn,v"]],
    ), bad=(
        bad("--ap-top", "-1"), bad("--ap-bottom", "-1"), bad("--ap-top", "0", "--ap-bottom", "0", names=["--ap-top"]),
        bad("--ap-ffn-site", "nope"), bad("--kinds", "ffn,ffn"), bad("--kinds", "zz"), bad("--ap-top", "99999"),
        bad("--max-length", "0"), bad("--lape-top-rate", "0.1"), bad("--epsilon", "0.1"),
    ), append=frozenset({"--corpus"})),
    "lens": Command(("lens",), ("--model", M, "--out", "<fresh>", "--langs", "fr", "--max-prompts", "1",
                                "--max-new-tokens", "1", "--latin-langs", "en,fr"), slots(
        [["--top-k", "3"]], [["--positions", "prompt"], ["--max-new-tokens", "2", "--positions", "generated"],
                             ["--max-new-tokens", "0"]],
        [["--batch-size", "1"]], [["--template", "Q: {prompt}\\nA:"]], [["--include-special"]],
        [["--langs", "fr,de"], ["--prompts", "<prompts>", "--langs", "en"]], [["--dtype", "float64"]],
    ), bad=(
        bad("--top-k", "0"), bad("--top-k", "99999"), bad("--top-k", "abc"), bad("--max-new-tokens", "-1"),
        bad("--max-prompts", "0"), bad("--batch-size", "0"), bad("--positions", "nope"),
        bad("--template", "no placeholder"), bad("--langs", "xx"), bad("--langs", "fr,fr"), bad("--langs", ","),
        bad("--latin-langs", "en,en"), bad("--latin-langs", "xx"), bad("--prompts", "<nope>.txt"),
        bad("--prompts", "<folder>"), bad("--prompts", "<empty>"), bad("--prompts", "<prompts>", "--langs", "fr,en"),
        bad("--out", "<afile>/x"), bad("--out", "<afile>"), bad("--device-map", "nonsense"), *COMMON_BAD, *DEVICE_BAD,
    ), valid_draws=1),
    "latent": Command(("latent",), ("--model", M, "--out", "<fresh>", "--task", "repetition", "--targets", "de",
                                    "--limit", "2", "--shots", "1"), slots(
        [["--lens", "logit,patchscope"]], [["--task", "translation", "--source", "fr", "--targets", "zh"]],
        [["--batch-size", "1"]],
    ), bad=(
        bad("--task", "nope"), bad("--targets", "en"), bad("--targets", "de,de"), bad("--lens", "nope"),
        bad("--lens", "tuned", names=["--tuned-lens"]), bad("--tuned-lens", "<nope>", "--lens", "tuned"),
        bad("--limit", "0"), bad("--shots", "-1"), bad("--words", "<nope>.txt"), bad("--batch-size", "0"),
        bad("--out", "<afile>"), *COMMON_BAD,
    ), valid_draws=1),
    "lens-train": Command(("lens-train",), ("--model", M, "--out", "<fresh>", "--steps", "2", "--langs", "en,fr",
                                            "--window", "8", "--windows-per-lang", "1", "--heldout-windows", "1"), slots(
        [["--vocab", "full"]], [["--batch-positions", "4"]],
    ), bad=(
        bad("--steps", "0"), bad("--lr", "0"), bad("--vocab", "nope"), bad("--langs", "xx"), bad("--window", "0"),
        bad("--texts", "<nope>.txt"), bad("--out", "<afile>"), *COMMON_BAD,
    ), valid_draws=1),
    "vectors": Command(("vectors",), ("--model", M, "--corpus", "fr=<fr>", "--corpus", "en=<en>", "--out", "<fresh>",
                                      "--max-length", "16", "--layers", "0", "--no-progress"), slots(
        [["--site", "layer.in"]], [["--batch-size", "1"]], [["--max-docs", "1"]], [["--layers", "0-1"]],
    ), bad=(
        bad("--layers", "99"), bad("--layers", "x"), bad("--max-length", "0"), bad("--batch-size", "0"),
        bad("--max-docs", "0"), bad("--site", "ffn.in"), bad("--corpus", "fr=<en>"), bad("--corpus", "xx"),
        bad("--corpus", "de=<nope>.txt"), bad("--out", "<afile>"), *COMMON_BAD, *DEVICE_BAD,
    ), append=frozenset({"--corpus"})),
    "sae train": Command(("sae", "train"), ("--model", M, "--corpus", "fr=<fr>", "--corpus", "en=<en>", "--out",
                                            "<fresh>", "--layers", "0", "--width", "8", "--k", "2", "--steps", "2",
                                            "--tokens-per-step", "16", "--tokens", "64", "--eval-tokens", "32",
                                            "--max-length", "16", "--heldout-every", "2", "--quiet"), slots(
        [["--activation", "jumprelu"]], [["--site", "ffn.out"]], [["--layers", "0-1"]], [["--batch-size", "1"]],
    ), bad=(
        bad("--layers", "99"), bad("--layers", "x"), bad("--width", "0"), bad("--k", "9"), bad("--steps", "0"),
        bad("--lr", "nan"), bad("--lr", "-1"), bad("--activation", "gated"), bad("--site", "ffn.in"),
        bad("--heldout-every", "1"), bad("--tokens", "0"), bad("--corpus", "xx"), bad("--corpus", "de=<nope>.txt"),
        bad("--out", "<afile>"), *COMMON_BAD, *DEVICE_BAD,
    ), append=frozenset({"--corpus"})),
    "steer": Command(("steer",), ("--model", M, "--neurons", "<set_fr>", "--target", "fr", "--prompts", "builtin:en",
                                  "--out", "<fresh>", "--limit", "1", "--max-new-tokens", "2", "--strengths", "0,1",
                                  "--seeds", "0", "--corpus", "<fr>", "--no-progress"), slots(
        [["--mode", "add"], ["--mode", "scale", "--strengths", "0.5,2"]], [["--stat", "median"], ["--stat", "q0.9"]],
        [["--positions", "prompt"]], [["--region", "understanding", "--understanding", "1", "--generation", "1"],
                                      ["--region", "understanding", "--lens", "<lens>"], ["--layers", "0-1"]],
        [["--kinds", "ffn"]], [["--off", "<set_en>"]], [["--stats-docs", "1"]], [["--template", "Q: {prompt}"]],
        [["--prompts", "<prompts>", "--source", "en"]], [["--batch-size", "1"]], [["--seeds", "0,1"]],
    ), bad=(
        bad("--strengths", "1,1"), bad("--strengths", "a"), bad("--strengths", "nan"), bad("--strengths", "0,inf"),
        bad("--seeds", "0,0"), bad("--seeds", "x"), bad("--mode", "nope"), bad("--stat", "q1.5"), bad("--stat", "nope"),
        bad("--stat", "q-1"), bad("--limit", "0"), bad("--max-new-tokens", "0"), bad("--batch-size", "0"),
        bad("--stats-docs", "0"), bad("--stats-max-length", "0"), bad("--layers", "99"), bad("--layers", "5:2"),
        bad("--layers", "a"), bad("--kinds", "qq"), bad("--region", "nope"), bad("--region", "understanding"),
        bad("--region", "generation", "--understanding", "1", "--generation", "0", names=["generation"]),
        bad("--region", "understanding", "--understanding", "-1"),
        bad("--region", "understanding", "--generation", "-1"),
        bad("--understanding", "1"), bad("--lens", "<lens>"),
        bad("--region", "understanding", "--lens", "<nope>"),
        bad("--region", "understanding", "--understanding", "1", "--generation", "1", "--lens", "<lens>"),
        bad("--region", "understanding", "--understanding", "3", "--generation", "3", names=["understanding"]),
        bad("--region", "generation", "--layers", "0"), bad("--prompts", "builtin:xx"), bad("--prompts", "<nope>.txt"),
        bad("--prompts", "<fr>"), bad("--prompts", "<folder>"), bad("--prompts", "xquad:en[5:2]", names=["5:2"]),
        bad("--prompts", "xquad:en[a:b]"), bad("--target", "xx"), bad("--target", ""),
        bad("--neurons", "<nope>.safetensors"), bad("--off", "<nope>.safetensors"), bad("--corpus", "<nope>.txt"),
        bad("--corpus", "<empty>"), bad("--template", "nothing"), bad("--template", "{prompt} {other}"),
        bad("--template", "{prompt} {"), bad("--source", "fr"), bad("--out", "<afile>/x"), bad("--out", "<afile>"),
        bad("--positions", "nope"), *COMMON_BAD, *DEVICE_BAD,
    )),
    "deactivation": Command(("experiment", "deactivation"), (
        "--model", M, "--neurons", "<spec>", "--langs", "en,fr", "--out", "<fresh>", "--texts-dir", "<held>",
        "--seeds", "0", "--limit", "1", "--understanding", "1", "--generation", "1", "--max-length", "16"), slots(
        [["--seeds", "0,1"]], [["--batch-size", "1"]], [["--matrix"]], [["--max-length", "8"]], [["--limit", "2"]],
        [["--understanding", "0"], ["--generation", "2"]],
    ), bad=(
        bad("--langs", "en,fr,fr"), bad("--langs", "fr"), bad("--langs", "en,xx", names=["xx"]), bad("--langs", "en"),
        bad("--langs", ","), bad("--english", "de"), bad("--seeds", "0,0"), bad("--seeds", "a"), bad("--limit", "0"),
        bad("--understanding", "-1"), bad("--generation", "-2"), bad("--understanding", "99"),
        bad("--generation", "99"), bad("--understanding", "2", "--generation", "2", names=["understanding"]),
        bad("--batch-size", "0"), bad("--max-length", "1"), bad("--task", "nope"), bad("--task", "lm-eval:nolang"),
        bad("--neurons", "<nope>"), bad("--neurons", "<set_fr>"), bad("--neurons", "<held>"),
        bad("--texts-dir", "<nope>"), bad("--texts-dir", "<fr>"), bad("--lens", "<lens>"), bad("--source", "<folder>"),
        bad("--task", "xquad", names=["--texts-dir"]), bad("--out", "<afile>/x"), bad("--out", "<afile>"),
        bad("--include-path", "<folder>"), bad("--num-fewshot", "2"), bad("--lm-eval-metric", "acc,none"),
        bad("--task", "lm-eval:x_{lang}", "--texts-dir", "<held>", names=["--texts-dir"]),
        bad("--task", "lm-eval:x_{lang}", "--num-fewshot", "-1"),
        bad("--device-map", "zzz"), *COMMON_BAD, *DEVICE_BAD,
    ), valid_draws=1),
    "methods": Command(("experiment", "methods"), (
        "--model", M, "--corpus", "fr=<fr>", "--corpus", "en=<en>", "--heldout", "fr=<held_fr>",
        "--heldout", "en=<held_en>", "--out", "<fresh>", "--methods", "plnd,lape", "--sizes", "10", "--seeds", "0",
        "--interventions", "zero", "--no-stability", "--cost-docs", "1", "--cost-repeats", "1", "--quiet",
        "--max-length", "16", "--eval-max-length", "16"), slots(
        [["--sizes", "5%"], ["--sizes", "10,20"]], [["--seeds", "0,1"]], [["--interventions", "mean"]],
        [["--kinds", "ffn"]], [["--max-docs", "1"]], [["--limit", "1"]], [["--methods", "plnd,ap"]],
    ), bad=(
        bad("--methods", "plnd,plnd"), bad("--methods", "nope"), bad("--methods", ","), bad("--sizes", "0"),
        bad("--sizes", "101%"), bad("--sizes", "-5"), bad("--sizes", "abc"), bad("--sizes", "10,10"),
        bad("--sizes", "99999"), bad("--seeds", "0,0"), bad("--interventions", "nope"),
        bad("--interventions", "zero,zero"), bad("--max-length", "0"), bad("--eval-max-length", "1"),
        bad("--max-docs", "0"), bad("--limit", "0"), bad("--kinds", "qq"), bad("--kinds", "ffn,ffn"),
        bad("--methods", "plnd,lape", "--kinds", "q"), bad("--cost-docs", "0"), bad("--cost-repeats", "0"),
        bad("--batch-size", "0"),
        bad("--plnd-qk-method", "nope"), bad("--corpus", "de=<fr>", names=["--heldout"]),
        bad("--heldout", "de=<held_fr>", names=["--heldout"]), bad("--corpus", "xx"),
        bad("--corpus", "fr=<held_fr>", "--heldout", "fr=<held_fr>", names=["--corpus", "fr"]),
        bad("--out", "<afile>"), *COMMON_BAD,
    ), valid_draws=1, append=frozenset({"--corpus", "--heldout"})),
    "enhance": Command(("enhance",), ("--model", M, "--neurons", "<set_fr>", "--texts", "<fr>", "--out", "<fresh>",
                                      "--steps", "1", "--batch-size", "1", "--grad-accum", "1", "--no-progress",
                                      "--max-length", "16"), slots(
        [["--lr", "1e-3"]], [["--schedule", "linear"]], [["--warmup-ratio", "0"]], [["--max-grad-norm", "1"]],
        [["--weight-decay", "0.01"]], [["--random-like", "3"]], [["--micro-batch-size", "1"]],
        [["--stop-after", "1"], ["--checkpoint-every", "0"]], [["--max-docs", "1"], ["--texts", "<fr>[0:1]"]],
        [["--seed", "5"]], [["--epochs", "2"]],
    ), bad=(
        bad("--steps", "0"), bad("--epochs", "0"), bad("--batch-size", "0"), bad("--grad-accum", "-1"),
        bad("--lr", "0"), bad("--lr", "-1"), bad("--lr", "nan"), bad("--lr", "inf"), bad("--warmup-ratio", "1"),
        bad("--warmup-ratio", "-0.1"), bad("--schedule", "nope"), bad("--max-grad-norm", "0"),
        bad("--max-grad-norm", "nan"), bad("--max-length", "1"), bad("--max-docs", "0"),
        bad("--micro-batch-size", "0"), bad("--weight-decay", "-1"), bad("--weight-decay", "nan"),
        bad("--stop-after", "0"), bad("--stop-after", "-1"), bad("--checkpoint-every", "-1"),
        bad("--texts", "<nope>.txt"), bad("--texts", "<empty>"), bad("--texts", "<folder>"),
        bad("--texts", "<fr>[5:2]"), bad("--articles", "5:2"), bad("--articles", "0:24"),
        bad("--neurons", "<nope>.safetensors"), bad("--neurons", "<folder>"), bad("--out", "<afile>"),
        bad("--random-like", "x"), *COMMON_BAD, *DEVICE_BAD,
    )),
    "enhance-apply": Command(("enhance", "apply"), ("--model", M, "--delta", "<delta>", "--out", "<fresh>"), slots(
        [["--dtype", "float64"]],
    ), bad=(
        bad("--delta", "<nope>"), bad("--delta", "<fr>"), bad("--delta", "<folder>"), bad("--out", "<afile>"),
        bad("--out", "<afile>/x"), bad("--out", "<folder>"), bad("--model", "tiny-random-qwen2", names=["delta"]),
        *COMMON_BAD,
    ), valid_draws=1),
    "enhance-compare": Command(("enhance", "compare"), (
        "--model", M, "--neurons", "<set_fr>", "--texts", "<fr>", "--eval", "fr=<fr>", "--out", "<fresh>",
        "--methods", "neurons", "--steps", "1", "--batch-size", "1", "--grad-accum", "1", "--no-progress",
        "--max-length", "16", "--eval-max-length", "16"), slots(
        [["--methods", "neurons,random"]], [["--eval-batch-size", "1"]], [["--eval-max-texts", "1"]],
        [["--random-seed", "2"]], [["--neurons-lr", "1e-3"]], [["--eval", "en=<en>"]],
    ), bad=(
        bad("--methods", "nope"), bad("--methods", "neurons,neurons"), bad("--lora-rank", "0"),
        bad("--lora-alpha", "0"), bad("--eval-batch-size", "0"), bad("--eval-max-length", "1"),
        bad("--eval-articles", "5:2"), bad("--eval-max-texts", "0"), bad("--task-limit", "0"),
        bad("--task-max-new-tokens", "0"), bad("--task-max-new-tokens", "x"),
        bad("--neurons-lr", "0", names=["neurons="]),
        bad("--neurons-lr", "-1", names=["neurons="]), bad("--eval", "de=<nope>.txt"), bad("--eval", "nope"),
        bad("--eval", "de=<empty>"),
        bad("--task", "nope"), bad("--task-langs", "en"), bad("--texts", "<empty>"), bad("--lr", "0"),
        bad("--out", "<afile>"), bad("--neurons", "<nope>.safetensors"), *COMMON_BAD,
    ), valid_draws=1, append=frozenset({"--eval", "--task"})),
    "convert-to": Command(("convert",), ("--to", "lape", "--out", "<fresh>.pth", "--ffn-only"), bad=(
        bad("--out", "<afile>/x.pth"), bad("--out", "<folder>"), bad("--langs", "fr"), bad("--out-dir", "<fresh>"),
        bad(positionals=["<nope>.safetensors"], names=["nope.safetensors"]),
        bad(positionals=["<fr>"], names=["fr.txt"]), bad("--to", "nope"),
        bad("--out", "<fresh>.txt", "--to", "reference"),
    ), positionals=("<set_fr>", "<set_en>"), valid_draws=1),
    "convert-from": Command(("convert",), ("--from", "lape", "--model", M, "--langs", "fr,en", "--out-dir", "<fresh>"),
                            bad=(
        bad("--langs", "fr,fr"), bad("--langs", "fr"), bad("--langs", "fr,en,de"), bad("--langs", ","),
        bad("--out-dir", "<afile>"), bad("--out", "<fresh>"), bad("--ffn-only"), bad("--model", "nope"),
        bad(positionals=["<set_fr>"], names=["fr.safetensors"]), bad(positionals=["<nope>.pth"], names=["nope.pth"]),
    ), positionals=("<lape>",), valid_draws=1),
    "bench": Command(("bench", "detect"), ("--model", M, "--seq-len", "8", "--docs", "1", "--repeats", "1",
                                           "--no-memory", "--no-reference"), slots(
        [["--batch-size", "1"]], [["--docs", "2"]], [["--texts", "<fr>"]], [["--no-approx"]], [["--seq-len", "4"]],
    ), bad=(
        bad("--seq-len", "0"), bad("--seq-len", "-1"), bad("--seq-len", "1"), bad("--docs", "0"), bad("--repeats", "0"),
        bad("--batch-size", "0"), bad("--texts", "<nope>.txt"), bad("--texts", "<empty>"), bad("--texts", "<folder>"),
        bad("--seq-len", "x"), *COMMON_BAD,
    ), valid_draws=1),
    "stats-router": Command(("stats",), ("--router", "--model", "tiny-random-olmoe", "--corpus", "fr=<fr>", "en=<en>",
                                         "--out", "<fresh>", "--quiet", "--max-length", "16"), slots(
        [["--max-docs", "1"]], [["--batch-size", "1"]], [["--corpus", "fr=<fr>"]], [["--max-length", "4"]],
    ), bad=(
        bad("--max-length", "0"), bad("--batch-size", "0"), bad("--max-docs", "0"), bad("--corpus", "xx"),
        bad("--corpus", "fr=<nope>.txt"), bad("--corpus", "fr=<fr>", "fr=<en>"), bad("--corpus", "fr=<empty>"),
        bad("--model", M, names=["router"]), bad("--out", "<afile>"),
        bad(positionals=["<set_fr>"], names=["--router"]), *COMMON_BAD,
    ), valid_draws=1),
    "stats": Command(("stats",), ("--out", "<fresh>",), bad=(
        bad("--max-length", "0"), bad("--corpus", "x"), bad("--model", "nope"), bad("--out", "<afile>"),
        bad(positionals=["<nope>.safetensors"], names=["nope.safetensors"]),
        bad(positionals=["<fr>"], names=["fr.txt"]),
        bad(positionals=[], names=["NeuronSet"]),
    ), positionals=("<set_fr>", "<set_en>"), valid_draws=1),
    "specific": Command(("specific",), ("--out-dir", "<fresh>",), slots(
        [["--rule", "others"], ["--rule", "english", "--english", "en"]],
    ), bad=(
        bad("--rule", "english", "--english", "xx"), bad("--rule", "nope"), bad("--out-dir", "<afile>"),
        bad(positionals=["<set_fr>"], names=["set", "language"]), bad(positionals=["<set_fr>", "<nope>.safetensors"],
                                                                     names=["nope.safetensors"]),
    ), positionals=("<set_fr>", "<set_en>"), valid_draws=1),
    # valid runs of these two would take long (lm-eval's import, the demo's stages): invalid values only
    "eval": Command(("eval",), ("--model", M, "--tasks", "mwork_xquad_mc_en", "--include-path", "<tasks>", "--out",
                                "<fresh>", "--limit", "1", "--bootstrap-iters", "0", "--batch-size", "1"), bad=(
        bad("--tasks", ","), bad("--tasks", "t1,t1"), bad("--limit", "0"), bad("--limit", "-1"), bad("--limit", "nan"),
        bad("--limit", "1.5"), bad("--batch-size", "0"), bad("--num-fewshot", "-1"), bad("--max-length", "0"),
        bad("--bootstrap-iters", "-1"), bad("--include-path", "<nope>"), bad("--include-path", "<fr>"),
        bad("--neurons", "<set_fr>", "--kinds", "zz"), bad("--layers", "1"),
        bad("--neurons", "<set_fr>", "--random-like", "<set_fr>"), bad("--neurons", "<set_fr>", "--scale", "nan"),
        bad("--scale", "0.5"), bad("--out", "<afile>"), bad("--seed", "3"), bad("--local-limit", "2"),
        bad("--site-dir", "<folder>"), bad("--make-local-tasks", "<fresh>", names=["--make-local-tasks", "--tasks"]),
    ), valid_draws=0),
    "control": Command(("experiment", "control"), (
        "--model", M, "--levers", "prompt,neurons", "--neurons-dir", "<spec>", "--sources", "en", "--targets", "fr",
        "--items", "mgsm-text", "--data", str(TEST_DATA), "--limit", "2", "--max-new-tokens", "1", "--strengths", "1",
        "--modes", "set", "--stats-docs", "1", "--stats-max-length", "8", "--out", "<fresh>", "--no-progress"), slots(
        [["--strengths", "1,2"], ["--strengths", "-1"]], [["--modes", "add"]], [["--levers", "prompt"]],
        [["--layers", "all,0-1"], ["--layers", "1+0"]], [["--positions", "generated"]], [["--instructions", "source"]],
        [["--batch-size", "1"]], [["--choose", "lever"]], [["--dev-fraction", "0.3"]], [["--seed", "3"]],
        [["--stats-corpus", "fr=<fr>"]],
    ), bad=(
        bad("--levers", "nope"), bad("--levers", "prompt,prompt"), bad("--levers", "vectors", names=["--vectors-dir"]),
        bad("--levers", "random", "--neurons-dir", "<nope>"), bad("--sources", "xx"), bad("--targets", "en"),
        bad("--targets", "fr,fr"), bad("--items", "nope"), bad("--items", "xquad-text", names=["fr"]),
        bad("--strengths", "0"), bad("--strengths", "nan"), bad("--strengths", "1,1"), bad("--strengths", "abc"),
        bad("--vector-strengths", "0"), bad("--vector-strengths", "inf"),
        bad("--modes", "scale"), bad("--vector-modes", "twist"), bad("--positions", "nowhere"),
        bad("--instructions", "fr"), bad("--layers", "mid"), bad("--layers", "99"), bad("--layers", "G"),
        bad("--limit", "1"), bad("--dev-fraction", "0"), bad("--dev-fraction", "1.5"), bad("--max-new-tokens", "0"),
        bad("--batch-size", "0"), bad("--stats-docs", "0"), bad("--neurons-dir", "<nope>"),
        bad("--neurons-dir", "<afile>"), bad("--neurons-dir", "<held>"), bad("--stats-corpus", "de=<fr>"),
        bad("--stats-corpus", "fr=<nope>.txt"), bad("--stats-corpus", "fr=<empty>"), bad("--chat"),
        bad("--choose", "best"), bad("--out", "<afile>"), *COMMON_BAD, *DEVICE_BAD,
    ), valid_draws=2, append=frozenset({"--stats-corpus"})),
    "confusion-run": Command(("confusion", "run"), (
        "--model", M, "--lcb-dir", LCB, "--tasks", "monolingual", "--langs", "fr", "--limit", "1",
        "--max-new-tokens", "2", "--out", "<fresh>", "--no-progress", "--no-perplexity"), slots(
        [["--shots", "1"], ["--greedy"]], [["--levers", "none,prompt"]], [["--batch-size", "1"]],
        [["--seed", "3"], ["--top-p", "0.9", "--temperature", "0.7"]], [["--tasks", "monolingual,crosslingual"]],
    ), bad=(
        bad("--langs", "xx"), bad("--langs", "fr,fr"), bad("--langs", "de"), bad("--tasks", "nope"),
        bad("--shots", "2"), bad("--limit", "0"), bad("--max-new-tokens", "0"), bad("--top-p", "0"),
        bad("--temperature", "0"), bad("--batch-size", "0"), bad("--levers", "magic"), bad("--levers", "none,none"),
        bad("--levers", "neurons", names=["--neurons-dir"]), bad("--levers", "vectors", names=["--vectors-dir"]),
        bad("--levers", "neurons", "--neurons-dir", "<nope>"), bad("--levers", "vectors", "--vectors-dir", "<folder>"),
        bad("--levers", "random", "--neurons-dir", "<root>/sets", names=["--stats-corpus"]),
        bad("--levers", "random", "--vectors-dir", "<root>/sets", "--vector-mode", "set"),
        bad("--stats-corpus", "xx"), bad("--stats-docs", "0"), bad("--neuron-strength", "nan"),
        bad("--vector-strength", "inf"), bad("--neuron-layers", "a"), bad("--vector-layers", "5:2"),
        bad("--chat"), bad("--chat", "--shots", "1", names=["--shots"]), bad("--lcb-dir", "<nope>"),
        bad("--lcb-dir", "<afile>"), bad("--lcb-dir", "<folder>"), bad("--out", "<afile>"), *COMMON_BAD, *DEVICE_BAD,
    ), valid_draws=2),
    "demo": Command(("demo",), ("--quick", "--model", M, "--out", "<fresh>", "--langs", "en,fr"), bad=(
        bad("--langs", "fr,zh"), bad("--langs", "en,fr,fr"), bad("--langs", "en,xx", names=["xx"]), bad("--langs", ","),
        bad("--latin-langs", "xx"), bad("--latin-langs", "en,en"), bad("--corpus-dir", "<nope>"),
        bad("--corpus-dir", "<fr>"), bad("--corpus-dir", "<folder>"), bad("--out", "<afile>"),
        bad("--out", "<afile>/x"), bad("--model", "nope"), bad("--corpus-dir", "<held>", "--xquad", names=["xquad"]),
    ), valid_draws=0),
}


# ---- the data the runs read ------------------------------------------------------------------------

FR = ["Le renard brun saute par-dessus le chien.", "Bonjour tout le monde, ceci est un test."]
EN = ["The quick brown fox jumps over the dog.", "Hello world, this is a small test."]
HELD = {"fr": ["Un deux trois quatre cinq.", "Le chat dort sur la chaise."],
        "en": ["One two three four five.", "The cat sleeps on the chair."]}


class _Started(BaseException):
    """The demo passed every check and would start its first stage (not run here: minutes)."""


@dataclass
class Outcome:
    code: int | str
    out: str
    err: str
    trace: str | None = None

    def message(self) -> str:
        lines = [line for line in self.err.strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""


def run_cli(argv: list[str]) -> Outcome:
    import traceback

    out, err = io.StringIO(), io.StringIO()
    trace = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: int | str = main(argv)
        except SystemExit as stop:  # argparse: usage and one error line
            code = stop.code if isinstance(stop.code, int) else 1
        except _Started:
            code = 0
        except BaseException:  # what the user would see as a traceback
            code, trace = "traceback", traceback.format_exc()
    return Outcome(code, out.getvalue(), err.getvalue(), trace)


@pytest.fixture(scope="module")
def env(tmp_path_factory, monkeypatch_module) -> dict[str, str]:
    root = tmp_path_factory.mktemp("fuzz")
    paths = {"fr": root / "fr.txt", "en": root / "en.txt", "empty": root / "empty.txt", "afile": root / "afile",
             "prompts": root / "prompts.txt", "held": root / "held", "folder": root / "held", "tasks": root / "tasks",
             "nope": root / "nope", "dotsafetensors": root / "x"}
    paths["fr"].write_text("\n".join(FR) + "\n", encoding="utf-8")
    paths["en"].write_text("\n".join(EN) + "\n", encoding="utf-8")
    paths["empty"].write_text("\n \n", encoding="utf-8")
    paths["afile"].write_text("not a folder\n", encoding="utf-8")
    paths["prompts"].write_text("The capital of France is\nMy favourite food is\n", encoding="utf-8")
    paths["held"].mkdir()
    for lang, texts in HELD.items():
        (paths["held"] / f"{lang}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        paths[f"held_{lang}"] = paths["held"] / f"{lang}.txt"
    paths["tasks"].mkdir()
    (root / "x.safetensors").mkdir()  # `--out x` would write x.safetensors: a folder
    for lang in ("fr", "en"):
        paths[f"set_{lang}"] = root / "sets" / f"{lang}.safetensors"
        setup(["detect", "--model", M, "--corpus", str(paths[lang]), "--lang", lang, "--out",
               str(root / "sets" / lang), "--quiet", "--max-length", "16"])
    paths["spec"] = root / "spec"
    setup(["specific", str(paths["set_fr"]), str(paths["set_en"]), "--out-dir", str(paths["spec"])])
    paths["delta"] = root / "delta"
    setup(["enhance", "--model", M, "--neurons", str(paths["set_fr"]), "--texts", str(paths["fr"]), "--out",
           str(paths["delta"]), "--steps", "1", "--batch-size", "1", "--grad-accum", "1", "--no-progress",
           "--max-length", "16"])
    paths["lens"] = root / "lens"
    setup(["lens", "--model", M, "--out", str(paths["lens"]), "--langs", "fr", "--max-prompts", "1",
           "--max-new-tokens", "1", "--latin-langs", "en,fr"])
    paths["lape"] = root / "lape.pth"
    setup(["convert", "--to", "lape", "--out", str(paths["lape"]), str(paths["set_fr"]), str(paths["set_en"]),
           "--ffn-only"])
    import mwork.cli
    import mwork.demo

    def started(self, *args, **kwargs):
        raise _Started()

    monkeypatch_module.setattr(mwork.demo.Demo, "_stage", started)
    # one parser for every run (building it takes longer than most invalid runs; parsing leaves it as it was)
    parser = build_parser()
    monkeypatch_module.setattr(mwork.cli, "build_parser", lambda: parser)
    env = {k: str(v) for k, v in paths.items()}
    env["root"] = str(root)
    return env


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def setup(argv: list[str]) -> None:
    result = run_cli(argv)
    assert result.code == 0, (argv, result.err, result.trace)


# ---- drawing and checking ----------------------------------------------------------------------------


def segments(tokens: Sequence[str]) -> list[list[str]]:
    """``--a 1 --b --c x y`` -> ``[["--a", "1"], ["--b"], ["--c", "x", "y"]]``."""
    out: list[list[str]] = []
    for token in tokens:
        if token.startswith("--") or not out:
            out.append([token])
        else:
            out[-1].append(token)
    return out


def merge(base: Sequence[str], extra: Sequence[str], append: frozenset[str]) -> list[str]:
    """``base`` with the options of ``extra`` replacing the same options (``append``: added)."""
    merged = segments(base)
    for seg in segments(extra):
        same = [i for i, s in enumerate(merged) if s[0] == seg[0]]
        if same and seg[0] not in append:
            merged[same[0]] = seg
        else:
            merged.append(seg)
    return [t for seg in merged for t in seg]


class Resolver:
    """``<name>`` in a token -> the path of the fixture's file ``name``; ``<fresh>`` -> a new path."""

    def __init__(self, env: dict[str, str]):
        self.env, self.count = env, itertools.count()

    def __call__(self, tokens: Sequence[str]) -> list[str]:
        return [re.sub(r"<(\w+)>", self._one, t) for t in tokens]

    def _one(self, m: re.Match) -> str:
        if m.group(1) == "fresh":
            return str(Path(self.env["root"]) / "runs" / f"r{next(self.count)}")
        return self.env[m.group(1)]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {w: p for a in parser._actions if isinstance(a, argparse._SubParsersAction) for w, p in a.choices.items()}


def dests(words: tuple[str, ...]) -> dict[str, str]:
    """The option strings of a subcommand -> their field names."""
    parser = build_parser()
    for word in words:
        parser = subcommands(parser)[word]
    return {s: a.dest for a in parser._actions for s in a.option_strings}


def expected_names(case: Bad, dest_of: dict[str, str]) -> list[str]:
    """What the message may name: the offending option (the last in ``case.args``) by flag or
    field name, or its value."""
    names = list(case.names)
    flags = [i for i, t in enumerate(case.args) if t.startswith("--")]
    if not names and flags:
        i = flags[-1]
        flag = case.args[i]
        dest = dest_of.get(flag, flag[2:].replace("-", "_"))
        names += [flag, dest, dest.replace("_", " "), dest.replace("_", "-")]
        values = [v for v in case.args[i + 1:] if v]
        # the value, or for LANG=SPEC its spec (a missing file is named by its path)
        names += [part for v in values for part in {v, v.partition("=")[2]} if part and not NUMERIC.match(part)]
    return names


def names_it(message: str, names: Sequence[str], resolve: Resolver) -> bool:
    for name in names:
        text = resolve([name])[0]
        if not text:
            continue
        if NUMERIC.match(text) is None and len(text) <= 3:  # a short value: as a word
            if re.search(rf"(?<![\w-]){re.escape(text)}(?![\w-])", message):
                return True
        elif text in message:
            return True
    return False


ERROR_LINE = re.compile(r"^mwork [\w -]+: error: \S")


def draws(name: str, command: Command) -> list[tuple[Bad | None, tuple[str, ...]]]:
    """Every invalid value once and ``valid_draws`` valid-only draws, each with a seeded random
    choice of valid alternatives (none of a slot the invalid value touches), shuffled."""
    rng = random.Random(f"{SEED}:{name}")
    out = []
    for case in [*command.bad, *[None] * command.valid_draws]:
        touched = set(case.args) if case else set()
        free = [s for s in command.slots if not any(t.startswith("--") and t in touched for alt in s for t in alt)]
        k = rng.randint(1 if case is None else 0, min(2, len(free))) if free else 0
        chosen = rng.sample(free, k)
        valid = tuple(t for slot in chosen for t in rng.choice(slot))
        out.append((case, valid))
    rng.shuffle(out)
    return out


def check(name: str, command: Command, case: Bad | None, valid: tuple[str, ...], env: dict[str, str],
          resolve: Resolver, dest_of: dict[str, str]) -> tuple[dict, str | None]:
    options = merge(merge(command.base, valid, command.append), case.args if case else (), command.append)
    positionals = case.positionals if case and case.positionals is not None else command.positionals
    argv = resolve([*command.words, *positionals, *options])
    result = run_cli(argv)
    message = result.message()
    record = {"command": name, "argv": " ".join(argv), "invalid": " ".join(case.args) if case else "",
              "with": " ".join(valid),
              "positionals": None if not case or case.positionals is None else list(case.positionals),
              "kind": "valid" if case is None else ("warn" if case.warn else "invalid"), "code": result.code,
              "message": message.replace(env["root"], "<tmp>")}
    shown = f"mwork {' '.join(argv)}"
    if result.trace is not None:
        return record, f"{shown}\n  raised (a traceback reaches the user):\n{result.trace}"
    if "Traceback (most recent call last)" in result.out + result.err:
        return record, f"{shown}\n  printed a traceback:\n{result.err[-2000:]}"
    if case is None:
        if result.code != 0:
            return record, f"{shown}\n  valid options, exit {result.code}: {message}"
        return record, None
    names = expected_names(case, dest_of)
    if case.warn:
        if result.code != 0:
            return record, f"{shown}\n  should run (with a warning), exit {result.code}: {message}"
        if not names_it(result.err, names, resolve):
            return record, f"{shown}\n  ran without a warning naming {names}: {result.err[-500:]!r}"
        warning = next((line for line in result.err.splitlines() if names_it(line, names, resolve)), "")
        record["message"] = warning.replace(env["root"], "<tmp>")
        return record, None
    if result.code == 0:
        return record, f"{shown}\n  invalid value accepted: exit 0"
    if not ERROR_LINE.match(message):
        return record, f"{shown}\n  exit {result.code} without a one-line 'mwork X: error: ...': {result.err[-500:]!r}"
    if not names_it(message, names, resolve):
        return record, f"{shown}\n  the message names none of {names}: {message}"
    return record, None


@pytest.mark.parametrize("name", list(COMMANDS))
def test_cli_options_fuzz(name, env):
    command = COMMANDS[name]
    resolve, dest_of = Resolver(env), dests(command.words)
    problems, records = [], []
    for case, valid in draws(name, command):
        record, problem = check(name, command, case, valid, env, resolve, dest_of)
        records.append(record)
        if problem:
            problems.append(problem)
    if os.environ.get("MWORK_FUZZ_RECORD"):
        with open(os.environ["MWORK_FUZZ_RECORD"], "a", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    assert not problems, f"{len(problems)} of {len(records)} runs of mwork {name}:\n\n" + "\n\n".join(problems)


def test_every_model_command_is_fuzzed():
    """A new subcommand that takes --model gets a place above."""
    covered = {c.words for c in COMMANDS.values()}
    missing = []

    def visit(words: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
        if words and "--model" in {s for a in parser._actions for s in a.option_strings} and words not in covered:
            missing.append(" ".join(words))
        for word, sub in subcommands(parser).items():
            visit((*words, word), sub)

    visit((), build_parser())
    assert not missing, f"subcommands with --model that the fuzz test does not cover: {missing}"


# ---- the closing note's list ---------------------------------------------------------------------------


def write_notes(records_path: Path, out: Path) -> None:
    """The list of invalid cases and the message each gets, from a recorded run."""
    rows = [json.loads(line) for line in records_path.read_text(encoding="utf-8").splitlines()]
    lines = ["Placeholders: `<fr>`, `<en>` two-document corpora; `<empty>` whitespace-only lines; `<afile>` a file; "
             "`<folder>` a folder of texts; `<nope>` a missing path; `<set_fr>` a NeuronSet; `<spec>` a folder of "
             "sets; `<delta>` an enhance output; `<lens>` a lens output; `<fresh>` a new path; `<tmp>` the test's "
             "folder.", "",
             "| command | invalid value | drawn with (valid) | exit | what the user sees |", "|---|---|---|---|---|"]
    order = {name: i for i, name in enumerate(COMMANDS)}
    for r in sorted(rows, key=lambda r: (order.get(r["command"], len(order)), r["invalid"])):
        if r["kind"] == "valid":
            continue
        invalid = r["invalid"] + (f" (files: {' '.join(r['positionals']) or 'none'})" if r["positionals"] is not None
                                  else "")
        kind = " (allowed, warned)" if r["kind"] == "warn" else ""
        cell = (r["message"] or "").replace("|", "\\|")
        drawn = f"`{r['with']}`" if r["with"] else "-"
        lines.append(f"| {r['command']} | `{invalid.strip()}`{kind} | {drawn} | {r['code']} | {cell} |")
    valid = sum(r["kind"] == "valid" for r in rows)
    out.write_text("\n".join(lines) + f"\n\n{len(rows) - valid} invalid cases, {valid} valid-only draws.\n",
                   encoding="utf-8")


if __name__ == "__main__":
    import subprocess
    import tempfile

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "close17_fuzz_cases.md")
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "records.jsonl"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                       env=dict(os.environ, MWORK_FUZZ_RECORD=str(record)), check=False)
        write_notes(record, target)
    print(f"wrote {target}")
