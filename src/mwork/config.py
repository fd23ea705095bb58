"""Config objects: one dataclass per job, whose fields are at once the Python arguments, the
CLI options (with their help, written once, here), the checkpoint fingerprint and the metadata
recorded with the results.

Declare a field with :func:`option`::

    @dataclass(frozen=True)
    class LensConfig:
        top_k: int = option(10, "tokens decoded per layer and position")
        template: str = option("{prompt}", "prompt template; {prompt} is replaced")
        sets: tuple[str, ...] = option((), "NeuronSet files", positional=True, nargs="*")

and use it from a command::

    add_arguments(parser, LensConfig)          # --top-k, --template, help with the defaults
    config = from_args(LensConfig, args)       # the dataclass, validated by its __post_init__
    record = fingerprint(config)               # the fields that decide the result, as JSON

Types come from the annotations: ``int``, ``float``, ``str``, ``bool`` (``--x/--no-x``),
``X | None``, ``tuple[str, ...]`` / ``tuple[int, ...]`` (comma-separated on the command line,
or one word per value with ``nargs``). Anything else gives its own ``parse`` function. How the
command line spells a field, when ``--field-name VALUE`` is not it, is a :class:`Cli` (a flag
of another name, a positional, several values, ...). Fields with ``cli=False`` are
Python-only; ``record=False`` keeps a field out of the fingerprint (progress bars, resume
flags, batch sizes that change only rounding are still recorded unless marked).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Sequence

_UNSET = object()
NARGS = ("?", "*", "+")


@dataclass(frozen=True)
class Cli:
    """How the command line spells one option, when ``--field-name VALUE`` is not it.

    ``flag``: another name (``--lang`` for ``language``); ``metavar``: the value's name in the
    help; ``positional``: a bare word, not a flag (shown as ``metavar``, else the field's name);
    ``nargs``: ``"+"`` one or more values, ``"*"`` any number (each its own word: ``SETS...``,
    ``--corpus A B``; a flag given twice adds to the list), ``"?"`` an optional positional;
    ``repeat``: a flag given once per value (``--corpus en=A --corpus fr=B``). A bool is the
    pair ``--x/--no-x``; ``switch``: the one flag ``--x`` that turns a False default on (a set-up
    action, ``--allow-other-model``); ``off_flags``: older spellings of ``--no-x``, still
    accepted, not shown."""

    flag: str | None = None
    metavar: str | None = None
    positional: bool = False
    nargs: str | None = None
    repeat: bool = False
    switch: bool = False
    off_flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "off_flags", tuple(self.off_flags))
        if self.nargs is not None and self.nargs not in NARGS:
            raise ValueError(f"nargs must be one of {', '.join(NARGS)} (or None: one value), got {self.nargs!r}")
        if self.positional and (self.flag or self.repeat or self.off_flags):
            raise ValueError("a positional has no flag, repeat or off_flags")
        if self.nargs == "?" and not self.positional:
            raise ValueError('nargs="?" is for a positional (a flag is given or not)')
        if self.repeat and self.nargs is not None:
            raise ValueError("give repeat (a flag per value) or nargs (values after one flag), not both")
        if self.switch and self.off_flags:
            raise ValueError("a switch has no --no-x, so no off_flags")


def option(default: Any = _UNSET, help: str = "", *, parse: Callable[[str], Any] | None = None,
           choices: Sequence[Any] | None = None, required: bool = False, record: bool = True,
           cli: bool | Cli = True, **spelling: Any) -> Any:
    """A config field: its default, its help (one sentence, no default: that is added), and how
    the command line reads it (``parse``, ``choices``, ``required`` even with a Python default).
    ``cli``: False for a Python-only field, or a :class:`Cli` for its spelling, whose fields may
    also be given directly: ``option(0, "...", metavar="N")`` is ``option(0, "...",
    cli=Cli(metavar="N"))``, ``option(help="...", positional=True, nargs="+")`` a ``FILE...``."""
    if spelling and isinstance(cli, Cli):
        raise TypeError("give the spelling as cli=Cli(...) or as keywords, not both")
    try:
        how = cli if isinstance(cli, Cli) else Cli(**spelling)
    except TypeError:
        known = ", ".join(f.name for f in dataclasses.fields(Cli))
        raise TypeError(f"option() got {', '.join(sorted(spelling))}; its spelling keywords are {known}") from None
    meta = {"help": help, "parse": parse, "choices": choices, "cli": cli is not False, "record": record,
            "required": required, **dataclasses.asdict(how)}
    if default is _UNSET:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _list_parser(item: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        values = [x.strip() for x in text.split(",") if x.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        try:
            return tuple(item(v) for v in values)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__} values, got {text!r}") from None

    return parse


def _item_type(tp: Any) -> type | None:
    """``X`` of ``tuple[X, ...]`` (or of ``tuple[X, ...] | None``) for X int, float or str."""
    base, _ = _strip_optional(tp)
    if typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float, str):
            return args[0]
    return None


def _parser_for(tp: Any) -> Callable[[str], Any] | None:
    base, _ = _strip_optional(tp)
    if base in (int, float, str):
        return base
    item = _item_type(base)
    return _list_parser(item) if item is not None else None


def _spelling_of(f: dataclasses.Field) -> Cli:
    """How the command line spells the field ``f`` (its :class:`Cli`)."""
    meta = f.metadata
    return Cli(flag=meta.get("flag"), metavar=meta.get("metavar"), positional=meta.get("positional", False),
               nargs=meta.get("nargs"), repeat=meta.get("repeat", False), switch=meta.get("switch", False),
               off_flags=meta.get("off_flags", ()))


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _show(value: Any, sep: str = ",") -> str:
    if isinstance(value, tuple):
        return sep.join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def cli_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, *, exclude: Sequence[str] = (),
                  defaults: dict[str, Any] | None = None) -> None:
    """Add one option (or positional) per CLI field of the dataclass ``cls`` (help from its
    ``option``; the default shown from the dataclass, or from ``defaults`` when a command has
    its own). ``parser`` may be an argument group, to show the options under its title."""
    hints = _hints(cls)
    for f in cli_fields(cls):
        if f.name in exclude:
            continue
        names, kwargs = _argument(f"{cls.__name__}.{f.name}", f, hints[f.name],
                                  (defaults or {}).get(f.name, _default_of(f)))
        parser.add_argument(*names, **kwargs)
        for old in f.metadata.get("off_flags", ()):
            parser.add_argument(old, dest=f.name, action="store_false", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)


def _argument(where: str, f: dataclasses.Field, tp: Any, default: Any) -> tuple[list[str], dict[str, Any]]:
    """The names and keywords of ``add_argument`` for the field ``f`` (``where``: its name in
    errors). Options not given stay out of the namespace (``argparse.SUPPRESS``), so that
    :func:`from_args` takes the dataclass's defaults and :func:`given` sees what was typed."""
    meta, how = f.metadata, _spelling_of(f)
    base, _ = _strip_optional(tp)
    required = bool(meta.get("required")) or default is _UNSET
    if base is bool and meta.get("parse") is None:
        kwargs, shown = _bool_argument(where, how, default)
    else:
        kwargs, shown = _value_argument(where, f, tp, default)
    if how.positional:
        names = [f.name]  # argparse's dest; shown as the metavar when there is one
        if how.nargs in ("?", "*"):
            if required:
                raise TypeError(f'{where}: a positional with nargs="{how.nargs}" may be left out: give it a default')
            if how.nargs == "?":
                kwargs["default"] = default
        else:
            shown = None  # always given
    else:
        names = [_flag(f)]
        kwargs["dest"] = f.name
        if required:
            kwargs["required"] = True
            shown = None
    text = meta.get("help", "")
    if shown is not None:
        text = f"{text} (default: {shown})" if text else f"default: {shown}"
    kwargs["help"] = text.replace("%", "%%")
    return names, kwargs


def _bool_argument(where: str, how: Cli, default: Any) -> tuple[dict[str, Any], str | None]:
    """A bool's keywords (``--x/--no-x``, or the switch ``--x``) and the default to show."""
    if how.positional or how.nargs or how.repeat:
        raise TypeError(f"{where}: a bool is the flag pair --x/--no-x (or a switch): no positional, nargs or repeat")
    if not how.switch:
        return {"default": argparse.SUPPRESS, "action": argparse.BooleanOptionalAction}, "yes" if default else "no"
    if default is not False:
        raise TypeError(f"{where}: a switch turns a False default on: its default must be False")
    return {"default": argparse.SUPPRESS, "action": "store_true"}, None


def _value_argument(where: str, f: dataclasses.Field, tp: Any, default: Any) -> tuple[dict[str, Any], str | None]:
    """The keywords of a field that takes values (one, several after one flag, or a flag per
    value) and the default to show."""
    meta, how = f.metadata, _spelling_of(f)
    if how.off_flags or how.switch:
        raise TypeError(f"{where}: switch and off_flags are spellings of a bool")
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "type": _value_parser(where, tp, meta.get("parse"), how)}
    if how.metavar:
        kwargs["metavar"] = how.metavar
    if how.repeat:
        kwargs["action"] = "append"
    elif meta.get("choices") is not None:
        if how.positional and how.nargs in ("?", "*"):
            raise TypeError(f"{where}: argparse checks choices against a left-out positional's default: "
                            "check them in __post_init__")
        kwargs["choices"] = list(meta["choices"])  # with nargs: each value
    if how.nargs is not None:
        kwargs["nargs"] = how.nargs
        if not how.positional:
            kwargs["action"] = "extend"  # --corpus A B --corpus C: A, B and C
    several = how.repeat or how.nargs is not None
    if default in (None, _UNSET) or (several and not default):
        return kwargs, None
    return kwargs, _show(default, " " if how.nargs else ",")


def _value_parser(where: str, tp: Any, parse: Callable[[str], Any] | None, how: Cli) -> Callable[[str], Any]:
    """What reads one word of the command line: ``parse``, else from the annotation (with
    ``nargs``: one item of a ``tuple[X, ...]``; with ``repeat``: a string)."""
    if parse is not None:
        return parse
    if how.repeat:
        return str
    if how.nargs in ("+", "*"):
        item = _item_type(tp)
        if item is None:
            raise TypeError(f"{where}: nargs={how.nargs!r} needs a tuple[X, ...] field (X: int, float or str) "
                            "or option(parse=...) for one item")
        return item
    reader = _parser_for(tp)
    if reader is None:
        raise TypeError(f"{where}: no command-line parser for {tp!r}; give option(parse=...)")
    return reader


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _UNSET


def from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """The dataclass from parsed arguments: given options, then ``overrides``, then defaults."""
    values = {f.name: getattr(args, f.name) for f in cli_fields(cls) if hasattr(args, f.name)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}  # repeated options
    values.update(overrides)
    return cls(**values)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The CLI fields of ``cls`` that were given on the command line."""
    return {f.name: getattr(args, f.name) for f in cli_fields(cls) if hasattr(args, f.name)}


def fingerprint(config: Any) -> dict[str, Any]:
    """The recorded fields of a config, as plain JSON values (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(config):
        if f.metadata.get("record", True):
            out[f.name] = _jsonable(getattr(config, f.name))
    return out


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return fingerprint(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def digest(value: Any) -> str:
    """sha256 of a JSON value (keys sorted), e.g. of ``fingerprint(config)`` plus inputs' hashes."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def per_kind(cast: Callable[[str], Any], kinds: Sequence[str]) -> Callable[[str], Any]:
    """A parser for ``V`` or ``kind=V,kind=V`` (e.g. ``0.1`` or ``ffn=12000,q=2000``); kinds outside
    ``kinds`` and repeated kinds are errors."""

    def parse(text: str) -> Any:
        if "=" not in text:
            try:
                return cast(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a number or kind=number pairs, got {text!r}") from None
        out: dict[str, Any] = {}
        for part in text.split(","):
            kind, sep, value = part.partition("=")
            kind = kind.strip()
            if not sep or kind not in kinds:
                raise argparse.ArgumentTypeError(
                    f"{part!r}: expected kind=value with kind one of {', '.join(kinds)}")
            if kind in out:
                raise argparse.ArgumentTypeError(f"kind {kind!r} is given twice in {text!r}")
            try:
                out[kind] = cast(value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{part!r}: {value!r} is not a number") from None
        return out

    return parse
