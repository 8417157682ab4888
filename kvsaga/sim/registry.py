"""A name -> object mapping whose lookups of unknown names say which names exist."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """An unknown name was looked up in a registry.

    It is both a `KeyError` (what a mapping raises) and a `ValueError` (what a bad argument
    raises), so callers may catch either.
    """

    def __str__(self) -> str:
        # KeyError's own __str__ would print the message inside quotes.
        return str(self.args[0]) if self.args else ""


class Registry(dict[str, T], Generic[T]):
    """A dict of named entries (presets, workload families) with a helpful miss.

    Args:
        kind: what the entries are, for the error message ("workload", "preset").
        entries: the initial name -> entry pairs.
    """

    def __init__(self, kind: str, entries: dict[str, T]) -> None:
        super().__init__(entries)
        self.kind = kind

    def __missing__(self, name: str) -> T:
        known = ", ".join(sorted(self))
        raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}")
