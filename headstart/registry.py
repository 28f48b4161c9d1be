"""One small generic registry: named variants, wildcard listing, lookups that name the valid choices."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Generic, Iterator, TypeVar

from .errors import HeadstartError

T = TypeVar("T")


class UnknownNameError(HeadstartError, KeyError):
    """A name looked up in a registry does not exist."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def unknown_name(kind: str, name: str, candidates: list[str], hint: str = "") -> UnknownNameError:
    """The error for a failed lookup: what was asked, the closest matches, and the valid choices."""
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    msg = f"unknown {kind} {name!r}."
    if close:
        msg += f" Did you mean {', '.join(repr(c) for c in close)}?"
    shown = candidates if len(candidates) <= 20 else candidates[:20] + ["..."]
    msg += f" Valid choices: {', '.join(shown)}." + hint
    return UnknownNameError(msg)


class Registry(Generic[T]):
    """A named collection of variants (backbone sources, heads, strategies, data sets, ...).

    Example:
        HEADS = Registry("head")
        @HEADS.register("linear")
        def linear(...): ...
        HEADS.get("linear")
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, help: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            doc = help or (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise unknown_name(self.kind, name, sorted(self._items)) from None

    def unknown_message(self, name: str) -> str:
        return unknown_name(self.kind, name, sorted(self._items)).args[0]

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
