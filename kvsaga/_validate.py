"""The argument checks every public entry point shares.

`bool` is a subclass of `int` in Python, so `isinstance(True, int)` holds; a count, an id or
a size given as `True` is a typo, never meant as 1. These predicates say "a real int" and "a
real number" once, and each caller keeps its own message (tests assert on them).
"""

from __future__ import annotations


def is_int(x: object) -> bool:
    """An int that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: object) -> bool:
    """An int or float that is not a bool (NaN and infinities pass: check them apart)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_positive_int(label: str, value: object, error: type[Exception] = ValueError) -> int:
    """`value` if it is an int > 0, else `error("<label> must be a positive int, got ...")`."""
    if not is_int(value) or value <= 0:
        raise error(f"{label} must be a positive int, got {value!r}")
    return value


def check_bool(label: str, value: object, error: type[Exception] = ValueError) -> bool:
    """`value` if it is True or False, else `error("<label> must be True or False, got ...")`
    (a truthy 1 or "no" is a typo; the C++ core's bindings refuse it too)."""
    if not isinstance(value, bool):
        raise error(f"{label} must be True or False, got {value!r}")
    return value
