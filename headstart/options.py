"""Options declared once: dataclass fields that carry their help and bounds.

Strategy options, training settings and loss settings are frozen dataclasses whose fields use `option`. The
run config's schema (`config/schema.py`) and `headstart list strategies` are derived from them, and
`check_bounds` gives the same clear error to a user who builds the dataclass directly.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, NamedTuple

from .errors import ConfigError

_BOUNDS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
           "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
           **bounds: Any) -> Any:
    """A dataclass field with a one-line help and bounds (``ge``, ``gt``, ``le``, ``lt``; None always passes)."""
    unknown = set(bounds) - set(_BOUNDS)
    if unknown:
        raise TypeError(f"unknown bounds {sorted(unknown)}; use {sorted(_BOUNDS)}")
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"help": help, "bounds": bounds})


class Declared(NamedTuple):
    """One declared option: its type (annotations resolved), default, help and bounds."""

    type: Any
    default: Any  # dataclasses.MISSING when built by a factory
    factory: Any  # dataclasses.MISSING unless the default is built by a factory
    help: str
    bounds: dict[str, Any]


def declared(cls: type) -> dict[str, Declared]:
    """{field name: Declared} of a dataclass, in field order."""
    hints = typing.get_type_hints(cls)
    return {f.name: Declared(hints[f.name], f.default, f.default_factory, f.metadata.get("help", ""),
                             dict(f.metadata.get("bounds", {}))) for f in dataclasses.fields(cls)}


def check_bounds(obj: Any) -> None:
    """Raise ConfigError for the first field of a dataclass instance outside its bounds."""
    for name, d in declared(type(obj)).items():
        value = getattr(obj, name)
        for kind, bound in d.bounds.items():
            ok, symbol = _BOUNDS[kind]
            if value is not None and not ok(value, bound):
                raise ConfigError(f"{name} must be {symbol} {bound}, received {value!r}")


def with_defaults(cls: type, **defaults: Any) -> type:
    """A frozen dataclass like `cls` whose named fields default to other values (help and bounds kept)."""
    fields = declared(cls)
    unknown = set(defaults) - set(fields)
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {sorted(unknown)}")
    return dataclasses.make_dataclass(
        cls.__name__, [(name, fields[name].type, option(value, fields[name].help, **fields[name].bounds))
                       for name, value in defaults.items()], bases=(cls,), frozen=True)
