"""The argparse value types of `kvsaga sim`'s flags: each checks a flag's value as it is
parsed, so that a bad one exits 2 naming the flag (argparse prefixes "argument --FLAG:")
before any simulation runs.

Split from kvsaga/sim/cli.py in session 49, unchanged but for their public names and the
type of --report-period, so that cli.py stays under 600 lines; `path_type` and `comma_names`
(moved from cli.py, now checking the names it is given too) joined in session 52.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence

from kvsaga.ascii_numbers import hint, is_plain, parse_float, parse_int
from kvsaga.config import parse_bytes


def positive_type(kind: type) -> Callable[[str], float]:
    """An argparse type: `kind(text)`, finite and > 0."""
    def parse(text: str):
        try:
            if not is_plain(text):  # int() and float() take any Unicode digit
                raise ValueError(text)
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}{hint(text)}"
                                             ) from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value
    return parse


def seed_type(text: str) -> int:
    """An argparse type: a trace seed, an integer >= 0 (as `generate` takes)."""
    try:
        value = parse_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}{hint(text)}"
                                         ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def size_type(text: str) -> int:
    """An argparse type: a memory size such as 20G (see `kvsaga.config.parse_bytes`)."""
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def report_period_type(text: str) -> float:
    """An argparse type: seconds between the cluster's load reports, finite and >= 0."""
    try:
        value = parse_float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}"
                                         f"{hint(text)}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got "
                                         f"{text!r}")
    return value


def path_type(text: str) -> str:
    """An argparse type: a file path, not empty (an empty one, as an unset shell variable
    gives, was read as the current folder: "--trace '': Is a directory")."""
    if not text:
        raise argparse.ArgumentTypeError("names no file (an empty path)")
    return text


def comma_names(flag: str, value: str, what: str, known: Sequence[str] | None = None,
                ) -> list[str]:
    """A comma-separated flag's names, in order: ValueError naming the flag when it names
    none, one twice (a repeated name would run and print the same rows again) or, given
    `known` (in the order to list them), one not in it."""
    names = [s.strip() for s in value.split(",") if s.strip()]
    if not names:
        raise ValueError(f"{flag} names no {what}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{flag} names {', '.join(map(repr, twice))} more than once")
    for name in names:
        if known is not None and name not in known:
            raise ValueError(f"{flag}: unknown {what} {name!r}; choose from "
                             f"{', '.join(known)}")
    return names
