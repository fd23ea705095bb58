"""Config objects: one dataclass per job, whose fields are at once the Python arguments, the
CLI options (with their help, written once, here), the checkpoint fingerprint and the metadata
recorded with the results.

Declare a field with :func:`option`::

    @dataclass(frozen=True)
    class LensConfig:
        top_k: int = option(10, "tokens decoded per layer and position")
        template: str = option("{prompt}", "prompt template; {prompt} is replaced")

and use it from a command::

    add_arguments(parser, LensConfig)          # --top-k, --template, help with the defaults
    config = from_args(LensConfig, args)       # the dataclass, validated by its __post_init__
    record = fingerprint(config)               # the fields that decide the result, as JSON

Types come from the annotations: ``int``, ``float``, ``str``, ``bool`` (``--x/--no-x``),
``X | None``, ``tuple[str, ...]`` / ``tuple[int, ...]`` (comma-separated on the command line).
Anything else gives its own ``parse`` function. Fields with ``cli=False`` are Python-only;
``record=False`` keeps a field out of the fingerprint (progress bars, resume flags, batch
sizes that change only rounding are still recorded unless marked).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from typing import Any, Callable, Sequence

_UNSET = object()


def option(
    default: Any = _UNSET,
    help: str = "",
    *,
    parse: Callable[[str], Any] | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    choices: Sequence[Any] | None = None,
    cli: bool = True,
    record: bool = True,
    required: bool = False,
    default_factory: Callable[[], Any] | None = None,
    repeat: bool = False,
    off_flags: Sequence[str] = (),
) -> Any:
    """A config field: its default, its help (one sentence, no default: that is added), and how
    the command line reads it (``parse``, ``flag`` instead of ``--field-name``, ``choices``;
    ``repeat``: a ``tuple[str, ...]`` given once per item, ``--corpus en=A --corpus fr=B``;
    ``off_flags``: older spellings of ``--no-x`` for a bool, still accepted, not shown)."""
    meta = {"help": help, "parse": parse, "flag": flag, "metavar": metavar, "choices": choices, "cli": cli,
            "record": record, "required": required, "repeat": repeat, "off_flags": tuple(off_flags)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
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


def _parser_for(tp: Any) -> Callable[[str], Any] | None:
    base, _ = _strip_optional(tp)
    if base in (int, float, str):
        return base
    if typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        if len(args) == 2 and args[1] is Ellipsis and args[0] in (int, float, str):
            return _list_parser(args[0])
    return None


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def cli_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def add_arguments(parser: argparse.ArgumentParser | Any, cls: type, *, exclude: Sequence[str] = (),
                  defaults: dict[str, Any] | None = None) -> None:
    """Add one option per CLI field of the dataclass ``cls`` (help from its ``option``; the
    default shown from the dataclass, or from ``defaults`` when a command has its own)."""
    hints = _hints(cls)
    for f in cli_fields(cls):
        if f.name in exclude:
            continue
        meta = f.metadata
        tp = hints[f.name]
        base, optional = _strip_optional(tp)
        default = (defaults or {}).get(f.name, _default_of(f))
        text = meta.get("help", "")
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if base is bool and meta.get("parse") is None:
            kwargs["action"] = argparse.BooleanOptionalAction
            shown = "yes" if default else "no"
        elif meta.get("repeat"):
            kwargs.update(action="append", type=meta.get("parse") or str, metavar=meta.get("metavar"))
            shown = None if not default or default is _UNSET else _show(default)
        else:
            parse = meta.get("parse") or _parser_for(tp)
            if parse is None:
                raise TypeError(f"{cls.__name__}.{f.name}: no command-line parser for {tp!r}; give option(parse=...)")
            kwargs["type"] = parse
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
            if meta.get("choices") is not None:
                kwargs["choices"] = list(meta["choices"])
            shown = None if default in (None, _UNSET) else _show(default)
        if meta.get("required") or default is _UNSET:
            kwargs["required"] = True
            shown = None
        if shown is not None:
            text = f"{text} (default: {shown})" if text else f"default: {shown}"
        kwargs["help"] = text.replace("%", "%%")
        parser.add_argument(_flag(f), **kwargs)
        for old in meta.get("off_flags", ()):
            parser.add_argument(old, dest=f.name, action="store_false", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)


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
