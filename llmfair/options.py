"""One source for options: dataclass fields (with ``metadata={"help": ...}``) feed ``--help``,
command-line parsing and the validation of YAML/dict configs (unknown keys are named)."""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

from llmfair.errors import ConfigError

T = TypeVar("T")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(scalar type, optional?) for ``int``, ``Optional[float]``, ``float | None`` ..."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    key = text.strip().lower()
    if key in ("1", "true", "yes", "on"):
        return True
    if key in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _optional(parse):
    def convert(text: str):
        return None if text.strip().lower() in ("none", "null", "") else parse(text)
    return convert


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add ``--field-name`` options for every field of dataclass ``cls`` (defaults shown in --help)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp, optional = _base_type(hints[f.name])
        parse = _parse_bool if tp is bool else tp
        if parse not in (int, float, str, _parse_bool):
            continue  # structured fields are set from YAML, not flags
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, type=_optional(parse) if optional else parse,
            default=argparse.SUPPRESS, metavar=tp.__name__.upper() if tp is not bool else "BOOL",
            help=f"{f.metadata.get('help', '')} (default: {default})",
        )


def dataclass_from_mapping(cls: type[T], values: Mapping[str, Any], *, source: str = "options") -> T:
    """Build ``cls(**values)``; an unknown key raises ConfigError naming it, the source and the
    known keys."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(k for k in values if k not in names)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    _check_scalar_types(cls, values, source)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None


_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _check_scalar_types(cls: type, values: Mapping[str, Any], source: str) -> None:
    """Raise ConfigError with the first of :func:`scalar_type_problems`."""
    problems = scalar_type_problems(cls, values, source)
    if problems:
        raise ConfigError(problems[0])


def scalar_type_problems(cls: type, values: Mapping[str, Any], source: str) -> list[str]:
    """One message per value of the wrong type for a scalar field (``int``, ``float``, ``bool``,
    ``str``, or one of them optional), naming the key, the value and what is expected; an integer
    is a valid float, a bool is not a number. Other annotations are left to the dataclass."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations (third-party classes): nothing to check
        return []
    problems = []
    for key, value in values.items():
        tp, optional = _base_type(hints.get(key))
        if tp not in _EXPECTED or (value is None and optional):
            continue
        if tp is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif tp is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, tp)
        if not ok:
            problems.append(f"{source}: {key}={value!r}; expected {_EXPECTED[tp]}" + (" or null" if optional else ""))
    return problems


def dataclass_from_args(cls: type[T], args: argparse.Namespace) -> T:
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return dataclass_from_mapping(cls, {k: v for k, v in vars(args).items() if k in names}, source="command line")
