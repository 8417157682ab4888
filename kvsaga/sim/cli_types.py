"""The argparse value types of `kvsaga sim`'s flags: each checks a flag's value as it is
parsed, so that a bad one exits 2 naming the flag (argparse prefixes "argument --FLAG:")
before any simulation runs.

Split from kvsaga/sim/cli.py in session 49, unchanged but for their public names and the
type of --report-period, so that cli.py stays under 600 lines.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from kvsaga.config import parse_bytes


def positive_type(kind: type) -> Callable[[str], float]:
    """An argparse type: `kind(text)`, finite and > 0."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value
    return parse


def seed_type(text: str) -> int:
    """An argparse type: a trace seed, an integer >= 0 (as `generate` takes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
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
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got "
                                         f"{text!r}")
    return value
