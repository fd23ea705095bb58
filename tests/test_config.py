"""``mwork.config``: how an ``option`` is spelled on the command line (flags, positionals,
several values, switches, groups), and the commands whose options were hand-written before
(issue 21: every option declared once, in a config)."""

from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass, fields

import pytest

from mwork.config import Cli, add_arguments, from_args, given, option


@dataclass(frozen=True, kw_only=True)
class Spelled:
    file: str = option(help="the input", positional=True, metavar="FILE.csv")
    sets: tuple[str, ...] = option((), "more inputs", positional=True, nargs="*")
    corpus: tuple[str, ...] = option((), "texts", nargs="+", metavar="LANG=SPEC")
    sizes: tuple[int, ...] = option((1, 2), "sizes", nargs="+")
    lang: str = option("en", "a language", flag="--language")
    eval: tuple[str, ...] = option((), "once per item", repeat=True)
    progress: bool = option(True, "show progress", off_flags=("--quiet",))
    force: bool = option(False, "do it anyway", switch=True)


def parser_of(cls: type, prog: str = "x") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    add_arguments(p, cls)
    return p


def parse(cls: type, argv: list[str]):
    return from_args(cls, parser_of(cls).parse_args(argv))


def test_positionals_and_several_values():
    got = parse(Spelled, ["a.csv", "s1", "s2", "--corpus", "en=A", "fr=B", "--corpus", "de=C", "--sizes", "3", "4",
                          "--language", "fr", "--eval", "x", "--eval", "y", "--quiet", "--force"])
    assert got == Spelled(file="a.csv", sets=("s1", "s2"), corpus=("en=A", "fr=B", "de=C"), sizes=(3, 4), lang="fr",
                          eval=("x", "y"), progress=False, force=True)
    assert parse(Spelled, ["b.csv"]) == Spelled(file="b.csv")  # every other field: its default


def test_given_sees_only_what_was_typed():
    p = parser_of(Spelled)
    assert given(p.parse_args(["a.csv"]), Spelled) == {"file": "a.csv"}
    assert given(p.parse_args(["a.csv", "s1"]), Spelled) == {"file": "a.csv", "sets": ["s1"]}


@pytest.mark.parametrize("argv", [[], ["a.csv", "--corpus"], ["a.csv", "--sizes", "x"], ["a.csv", "--no-force"],
                                  ["a.csv", "--language"]])
def test_bad_spellings_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        parser_of(Spelled).parse_args(argv)
    assert stop.value.code == 2 and "error:" in capsys.readouterr().err


def test_help_shows_each_spelling():
    text = " ".join(parser_of(Spelled).format_help().split())
    assert "usage: x [-h] [--corpus LANG=SPEC [LANG=SPEC ...]] [--sizes SIZES [SIZES ...]]" in text
    assert "FILE.csv [sets ...]" in text
    assert "FILE.csv the input" in text and "sets more inputs" in text  # nothing to default: none shown
    assert "--sizes SIZES [SIZES ...] sizes (default: 1 2)" in text
    assert "--force do it anyway" in text and "--no-force" not in text and "--quiet" not in text
    assert "--progress, --no-progress show progress (default: yes)" in text


def test_optional_positional_takes_its_default():
    @dataclass(frozen=True)
    class One:
        folder: str = option("results", "a folder", positional=True, nargs="?")

    assert parse(One, []) == One() and parse(One, ["other"]) == One("other")
    assert "a folder (default: results)" in " ".join(parser_of(One).format_help().split())


def test_nargs_values_are_checked_against_choices(capsys):
    @dataclass(frozen=True)
    class Kinds:
        kinds: tuple[str, ...] = option(help="kinds", positional=True, nargs="+", choices=("q", "k"))

    assert parse(Kinds, ["q", "k"]) == Kinds(("q", "k"))
    with pytest.raises(SystemExit):
        parse(Kinds, ["q", "v"])
    assert "invalid choice: 'v'" in capsys.readouterr().err


def test_an_argument_group_holds_the_options():
    p = argparse.ArgumentParser(prog="x")
    add_arguments(p.add_argument_group("set-up actions"), Spelled)
    assert "set-up actions:\n  FILE.csv" in p.format_help()
    assert from_args(Spelled, p.parse_args(["a.csv", "--force"])) == Spelled(file="a.csv", force=True)


def test_keywords_are_the_cli_object():
    meta = {f.name: f.metadata for f in fields(Spelled)}

    @dataclass(frozen=True)
    class Same:
        file: str = option(help="the input", cli=Cli(positional=True, metavar="FILE.csv"))

    assert dict(fields(Same)[0].metadata) == dict(meta["file"])
    assert meta["lang"]["flag"] == "--language"  # the flat metadata other modules read
    assert len(inspect.signature(option).parameters) <= 8


def test_python_only_fields_have_no_spelling():
    @dataclass(frozen=True)
    class Hidden:
        shown: int = option(1, "a number")
        hidden: int = option(2, "Python only", cli=False)

    assert parse(Hidden, ["--shown", "3"]) == Hidden(3, 2)
    assert "--hidden" not in parser_of(Hidden).format_help()


@pytest.mark.parametrize("spelling, match", [
    ({"nargs": "?"}, "for a positional"), ({"nargs": "2"}, "nargs must be one of"),
    ({"positional": True, "flag": "--x"}, "no flag"), ({"repeat": True, "nargs": "+"}, "not both"),
    ({"switch": True, "off_flags": ("--quiet",)}, "no off_flags"),
])
def test_contradictory_spellings_are_refused(spelling, match):
    with pytest.raises(ValueError, match=match):
        option(1, "h", **spelling)


def test_option_refuses_unknown_or_doubled_spellings():
    with pytest.raises(TypeError, match="spelling keywords are flag, metavar"):
        option(1, "h", metvar="N")
    with pytest.raises(TypeError, match="not both"):
        option(1, "h", cli=Cli(metavar="N"), flag="--n")


def _declared(annotation: type, field: object) -> type:
    cls = type("Bad", (), {"__annotations__": {"x": annotation}, "x": field})
    return dataclass(frozen=True)(cls)


@pytest.mark.parametrize("annotation, field, match", [
    (tuple[str, ...], option(help="h", positional=True, nargs="*"), "give it a default"),
    (str, option("a", "h", nargs="+"), r"needs a tuple\[X, \.\.\.\] field"),
    (bool, option(False, "h", positional=True), "a bool is the flag pair"),
    (bool, option(True, "h", switch=True), "default must be False"),
    (int, option(1, "h", switch=True), "spellings of a bool"),
    (tuple[str, ...], option((), "h", positional=True, nargs="*", choices=("a",)), "check them in __post_init__"),
])
def test_declarations_argparse_cannot_honour_fail_when_the_command_is_built(annotation, field, match):
    with pytest.raises(TypeError, match=match):
        parser_of(_declared(annotation, field))


# the commands whose options were hand-written before: the same spellings, now from their configs

@pytest.fixture(scope="module")
def mwork_parser() -> argparse.ArgumentParser:
    from mwork.cli import build_parser

    return build_parser()


def test_command_spellings(mwork_parser):
    from mwork.cli import GlobalOptions
    from mwork.neurons.cli import SpecificConfig, StatsConfig
    from mwork.report.cli import ReportOptions

    args = mwork_parser.parse_args(["--allow-other-model", "stats", "a.safetensors", "b.safetensors", "--out", "o",
                                    "--corpus", "en=A", "fr=B", "--corpus", "de=C"])
    assert from_args(GlobalOptions, args).allow_other_model
    assert from_args(StatsConfig, args) == StatsConfig(sets=("a.safetensors", "b.safetensors"), out="o",
                                                       corpus=("en=A", "fr=B", "de=C"))
    args = mwork_parser.parse_args(["stats", "--out", "o"])
    assert not from_args(GlobalOptions, args).allow_other_model and from_args(StatsConfig, args).sets == ()
    args = mwork_parser.parse_args(["specific", "a", "b", "--out-dir", "o"])
    assert from_args(SpecificConfig, args) == SpecificConfig(sets=("a", "b"), out_dir="o")
    args = mwork_parser.parse_args(["report", "results", "--title", "T"])
    assert from_args(ReportOptions, args) == ReportOptions(dir="results", title="T")


def test_demo_and_eval_setup_spellings(mwork_parser):
    from mwork.demo_cli import DemoOptions
    from mwork.tasks.cli_eval import SetupOptions

    args = mwork_parser.parse_args(["demo", "--quick", "--langs", "en,fr", "--xquad"])
    options = from_args(DemoOptions, args)
    assert options == DemoOptions(quick=True, langs="en,fr", xquad=True)
    assert args.out == "mwork-demo"  # the default folder is there for the CLI's output check and lock
    assert options.overrides()["langs"] == ("en", "fr") and options.overrides()["deact_langs"] is None
    args = mwork_parser.parse_args(["eval", "--make-local-tasks", "t", "--sentences", "--local-limit", "2"])
    assert from_args(SetupOptions, args) == SetupOptions(make_local_tasks="t", sentences=True, local_limit=2)
    with pytest.raises(ValueError, match="--site-dir applies only with --install-lm-eval-plugin"):
        SetupOptions(site_dir="x")
