"""The argument checks every public entry point shares.

`bool` is a subclass of `int` in Python, so `isinstance(True, int)` holds; a count, an id or
a size given as `True` is a typo, never meant as 1. These predicates say "a real int" and "a
real number" once, and each caller keeps its own message (tests assert on them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection


def is_int(x: object) -> bool:
    """An int that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: object) -> bool:
    """An int or float that is not a bool (NaN and infinities pass: check them apart)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_number(
    label: str, value: object, in_range: Callable[[float], bool], rule: str,
    error: type[Exception] = ValueError,
) -> float:
    """`value` if it is a finite real number (not a bool, nor a str such as "0.1" from JSON
    policy_args, which compared with a number raised a TypeError naming nothing) that
    `in_range` accepts, else `error("<label> must be a finite number <rule>, got ...")`. A
    NaN passes every `not x > 0` check and an infinity every `x > 0`: both broke a policy
    later, in a hook whose error named no parameter."""
    if not (is_number(value) and math.isfinite(value) and in_range(value)):
        raise error(f"{label} must be a finite number {rule}, got {value!r}")
    return value


def check_positive_int(
    label: str, value: object, error: type[Exception] = ValueError, none_ok: bool = False
) -> int | None:
    """`value` if it is an int > 0 (or None, when `none_ok`: "no limit"), else
    `error("<label> must be a positive int, got ...")`."""
    if none_ok and value is None:
        return None
    if not is_int(value) or value <= 0:
        raise error(f"{label} must be a positive int{' or None' if none_ok else ''}, got {value!r}")
    return value


def check_bool(label: str, value: object, error: type[Exception] = ValueError) -> bool:
    """`value` if it is True or False, else `error("<label> must be True or False, got ...")`
    (a truthy 1 or "no" is a typo; the C++ core's bindings refuse it too)."""
    if not isinstance(value, bool):
        raise error(f"{label} must be True or False, got {value!r}")
    return value


def check_str(
    label: str, value: object, error: type[Exception] = ValueError, none_ok: bool = False
) -> str | None:
    """`value` if it is a str (or None, when `none_ok`), else `error("<label> must be a str,
    got ...")`."""
    if not isinstance(value, str) and not (none_ok and value is None):
        raise error(f"{label} must be a str{' or None' if none_ok else ''}, got {value!r}")
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def check_unicode(
    label: str, text: str, error: Callable[[str], Exception] = ValueError
) -> str:
    """`text` if it holds no lone UTF-16 surrogate, else `error(...)` naming `label`, the
    surrogate and its position. Such a str is no Unicode text: JSON's "\\ud800" escape makes
    one, and so does reading bytes that are not UTF-8 with errors="surrogateescape" (how
    Python decodes a command line, and stdin under a C or UTF-8 locale). Encoding it (the
    tokenizer, a hash) fails with an error that names none of this."""
    bad = _SURROGATE.search(text)
    if bad is not None:
        raise error(f"{label} holds a lone surrogate {bad.group()!r} at character "
                    f"{bad.start() + 1}, which is not Unicode text (bytes that are not "
                    "UTF-8 decode to these)")
    return text


def check_one_of(
    label: str, value: object, choices: Collection[str], error: type[Exception] = ValueError
) -> str:
    """`value` if it is one of `choices` (names, listed in the message in their order), else
    `error("<label> must be one of a, b, c, got ...")`. A value that cannot be looked up in
    `choices` (unhashable, for a set or dict) is refused the same way, not a TypeError."""
    try:
        ok = value in choices
    except TypeError:
        ok = False
    if not ok:
        raise error(f"{label} must be one of {', '.join(choices)}, got {value!r}")
    return value


# The largest time (in seconds, either sign) a clock may give: about 31 million years, far
# past any monotonic clock, epoch time or simulated run. Elapsed times between two such
# times stay inside the indexed policies' elapsed-time grid (kvsaga/policy/grid.py, its
# points held to about 1e16 s); a finite time near the float maximum overflowed it
# (OverflowError out of allocate_slots' eviction instead of a victim).
MAX_TIME_S = 1e15
MIN_TIME_S = -MAX_TIME_S  # (a constant: the managers' fast checks compare with both)


def check_time(label: str, value: object, error: type[Exception] = ValueError) -> float:
    """`value` if it is a real number (a time in seconds) with |value| <= `MAX_TIME_S`, else
    `error(...)` naming it (a NaN time compares false with everything and would silently
    stall every TTL; an absurd finite one overflows the policies' elapsed-time grid)."""
    if not is_number(value) or not MIN_TIME_S <= value <= MAX_TIME_S:
        if is_number(value) and value == value and abs(value) != math.inf:
            shown = repr(value) if abs(value) < 1e30 or isinstance(value, float) \
                else "an int over 1e30"  # (the repr of a huge int is huge, or refused)
            raise error(f"{label} must be a number of seconds within -{MAX_TIME_S:g}.."
                        f"{MAX_TIME_S:g} (about 31 million years), got {shown}")
        raise error(f"{label} must be a finite number of seconds, got {value!r}")
    return value
