"""A timed record's rules and the keys computed from a class's formula, for the victim index
(kvsaga/policy/session_heap.py, and its C++ twin csrc/session_heap.cpp with
csrc/session_keys.h).

A session pushed into the index may carry a timed record `(cls, k, k0, value, mode, t0,
limit, extra, mult)` (session_heap.py's docstring says how the index reads it). Here:
`check_timed` and `_check_push`, the validation both indexes apply alike, field by field,
with the same messages, before anything changes; and the formulas of modes 3 and 4 in
Python (`ttl_entry` / `ttl_window_key`, ttl's key; `graph_rate`, graph's), the reference the
C++ keys are tested against bit for bit (tests/policy/test_key_formulas.py). Split from
session_heap.py (session 33) by concept: the records and their formulas apart from the heap
that orders sessions by them.
"""

from __future__ import annotations

import math
from operator import index
from typing import Any

from kvsaga.policy.lognormal import LogNormalDist, resume_prediction, resume_window

Key = tuple[float, float]
# (cls, k, k0, value, mode, t0, limit, extra, mult): `value` a float (modes 0, 1) or the
# formula's tuple (modes 2-4, `FORMULA_FIELDS`).
Timed = tuple[int, int, float, float | tuple[float, ...], int, float, float, float, float]
# The numbers a formula's `value` holds, by mode, each with the rule it must meet (checked
# at push by both implementations alike: a key computed later from a bad formula would
# divide by zero in one and give inf or NaN in the other).
_F, _POS, _NONNEG, _SHARE = "finite", "finite and > 0", "finite and >= 0", "finite and in [0, 1]"
FORMULA_FIELDS: dict[int, tuple[tuple[str, str], ...]] = {
    2: (("w", _F), ("s", _POS), ("a", _F), ("b", _F)),
    3: (("mu", _F), ("sigma", _NONNEG), ("p0", _SHARE), ("cost", _F), ("rent", _F),
        ("n", _POS), ("r", _POS), ("ttl", _F)),
    4: (("base", _F), ("mu", _F), ("sigma", _NONNEG), ("p0", _SHARE), ("wait", _F),
        ("corr", _F), ("min_wait", _POS), ("hedge", _POS)),
}
_RULES = {"not NaN": lambda v: not math.isnan(v), _F: math.isfinite,
          _POS: lambda v: math.isfinite(v) and v > 0,
          _NONNEG: lambda v: math.isfinite(v) and v >= 0,
          _SHARE: lambda v: 0.0 <= v <= 1.0}


def _int(x: Any, name: str) -> int:
    """An integer field of a timed record (Python's int or an object with __index__, as
    the C++ index reads it)."""
    try:
        return index(x)
    except TypeError:
        raise TypeError(f"timed: {name} must be an integer, got {type(x).__name__}") from None


# The largest class id and grid point a timed record may name: the C++ index packs
# (cls, k + 1) into one 64-bit table key whose all-ones value marks an empty cell
# (csrc/class_table.h), so both indexes refuse what does not fit.
MAX_CLASS, MAX_POINT = 2**48 - 1, 65533


def _bounded(x: Any, name: str, lo: int, hi: int, text: str) -> int:
    """An integer field of a timed record within [lo, hi]; else ValueError naming it."""
    v = _int(x, name)
    if not lo <= v <= hi:
        raise ValueError(f"timed: {name} must be {text}, got {v}")
    return v


def _real(x: Any, name: str, rule: str = "not NaN") -> float:
    """A number field of a timed record: a float, or an object with __float__ or __index__
    (what the C++ index's PyFloat_AsDouble reads; a str is refused), meeting `rule`."""
    tp = type(x)
    if not (hasattr(tp, "__float__") or hasattr(tp, "__index__")):
        raise TypeError(f"timed: {name} must be a real number, got {tp.__name__}")
    v = float(x)
    if not _RULES[rule](v):
        raise ValueError(f"timed: {name} must be {rule}, got {v!r}")
    return v


def check_timed(timed: Any) -> tuple:
    """`timed` validated and read as the index keeps it: (cls, k, k0, value, mode, t0,
    limit, extra, mult) with ints, floats and the formula as a tuple of floats; raises
    TypeError or ValueError naming the first bad field (the C++ index checks the same
    fields in the same order with the same messages)."""
    if not isinstance(timed, tuple) or len(timed) != 9:
        raise TypeError("timed must be (cls, k, k0, value, mode, t0, limit, extra, mult)")
    cls = _bounded(timed[0], "cls", 0, MAX_CLASS, "0 to 2**48 - 1")
    k = _bounded(timed[1], "k", -1, MAX_POINT, "-1 to 65533")
    k0 = _real(timed[2], "k0")
    mode = _int(timed[4], "mode")
    if not 0 <= mode <= 4:
        raise ValueError(f"timed: mode must be 0 to 4, got {mode}")
    value = timed[3]
    if mode < 2:
        value = _real(value, "value")
    else:
        fields = FORMULA_FIELDS[mode]
        if not isinstance(value, tuple) or len(value) != len(fields):
            raise TypeError("timed modes 2, 3, 4: value must be a tuple of 4, 8, 8 numbers")
        value = tuple(_real(x, f"mode {mode} {name}", rule)
                      for x, (name, rule) in zip(value, fields, strict=True))
    t0, limit, extra, mult = (_real(timed[i], name) for i, name in
                              zip(range(5, 9), ("t0", "limit", "extra", "mult"), strict=True))
    return cls, k, k0, value, mode, t0, limit, extra, mult


def _is_real(x: Any) -> bool:
    """A number as both indexes read one (a float, or an object with __float__ or
    __index__; a str is not)."""
    tp = type(x)
    return hasattr(tp, "__float__") or hasattr(tp, "__index__")


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _check_push(i: int, p: Any) -> None:
    """`refresh_runs`'s push i, (sid, key, tie, size, until, timed), checked before anything
    changes (the C++ index checks the same, in the same order, with the same messages)."""
    if not isinstance(p, tuple) or len(p) != 6:
        raise TypeError(f"refresh_runs: push {i} must be (sid, key, tie, size, until, timed)")
    sid, key, tie, size, until, timed = p
    try:
        hash(sid)
    except (TypeError, ValueError) as e:
        raise type(e)(f"refresh_runs: push {i}: sid: {e}") from None
    if not isinstance(key, tuple) or len(key) != 2 or not all(map(_is_real, key)):
        raise TypeError(f"refresh_runs: push {i}: key must be a tuple of two numbers")
    if not (hasattr(type(tie), "__index__") and hasattr(type(size), "__index__")):
        raise TypeError(f"refresh_runs: push {i}: tie and size must be integers")
    if not _is_real(until):
        raise TypeError(f"refresh_runs: push {i}: until must be a number")
    # Values next, as the C++ index holds them: a NaN key or deadline never orders, a tie
    # past int64 does not fit its entry, and a size below 1 would make `runs` hand out
    # more blocks than asked (its count goes down by each run's size).
    if any(math.isnan(float(x)) for x in key):
        raise ValueError(f"refresh_runs: push {i}: key must not be NaN, got {key!r}")
    tie, size = index(tie), index(size)
    if not _INT64_MIN <= tie <= _INT64_MAX:
        raise ValueError(f"refresh_runs: push {i}: tie must fit in int64, got {tie!r}")
    if not 1 <= size <= _INT64_MAX:
        raise ValueError(f"refresh_runs: push {i}: size must be >= 1 and fit in int64, "
                         f"got {size!r}")
    if math.isnan(float(until)):
        raise ValueError(f"refresh_runs: push {i}: until must not be NaN, got {until!r}")
    if timed is not None:
        try:
            check_timed(timed)
        except (TypeError, ValueError) as e:
            raise type(e)(f"refresh_runs: push {i}: {e}") from None


def ttl_entry(f: tuple[float, ...], lo: float) -> tuple[int, float, int]:
    """ttl's key of an unhinted pause judged `lo` seconds in (a grid point before its TTL),
    from its class's formula f = (mu, sigma, p0, cost, rent, n, r, ttl) (ttl.py `_value`
    and `_key`), as a table entry (k0, value, mode): (2, V / n, 0) while V > 0 (ttl's
    multiplier is 1), else (1, V / n / r, 1) (the key adds the pause's start and lo)."""
    mu, sigma, p0, cost, rent, n, r, ttl = f
    p, held = resume_window(LogNormalDist(mu, sigma), p0, lo, ttl - lo)
    v = p * cost - rent * held
    return (2, v / n, 0) if v > 0 else (1, v / n / r, 1)


def ttl_window_key(f: tuple[float, ...], t0: float, lo: float) -> Key:
    """ttl's key of a session paused at t0 (`ttl_entry` read as `_rekey_from_table`
    reads a table entry)."""
    k0, value, mode = ttl_entry(f, lo)
    return (k0, value * 1.0 if mode == 0 else (t0 + lo) + value)


def graph_rate(f: tuple[float, ...], lo: float) -> float:
    """graph's rate P(reuse) / E[time to reuse] of a session judged `lo` seconds into an
    unhinted pause, from its class's formula f = (mu, sigma, p0, wait, corr, min_wait,
    hedge): graph.py `_predict_session` and `_session_base` over aeg.py `predict`. The time
    is multiplied by `corr` (the self-correction), then divided by `hedge` (trust's factor,
    1.0 without), in that order as `_predict_session` does: a product corr / hedge in one
    number rounds differently (session 53: the index's keys one ulp off the scan's)."""
    mu, sigma, p0, wait, corr, min_wait, hedge = f
    p, t = resume_prediction(LogNormalDist(mu, sigma), p0, lo)
    t = t + wait
    t *= corr
    t /= hedge
    w = min_wait if min_wait > t else t
    return p / w


def _class_limits(formula: tuple, t0: float) -> tuple[float, float]:
    """(limit, deadline cap) of the record of a session paused at t0 in the class of
    `formula` (its entry in `_formulas`), as the policies' `_timed_base` gives them: ttl's
    (mode 3) its break-even time and t0 plus it; graph's (mode 4) none; saga's (mode 2,
    whose signature fixes its TTL) the class's record limit, just past its TTL, and just
    past t0 plus that TTL (none once expired)."""
    mode, _, f, limit = formula
    if mode == 3:
        return f[7], t0 + f[7]
    if mode == 2 and limit < math.inf:
        return limit, first_past(t0, math.nextafter(limit, -math.inf))
    return math.inf, math.inf


def first_past(t0: float, x: float) -> float:
    """The deadline of "more than x seconds since t0" (saga's TTL): the first clock value T
    at which `T - t0 > x`, as the policy computes it, holds; no later than that wherever the
    subtraction rounds (an early deadline only re-keys the entry to the same key and re-arms).
    fl(t0 + x) when it rounded up past t0 + x (that clock value is already past: nextafter
    of it, the deadline before session 53, fired one ulp late there), else the next float.
    csrc/timed_record.h `first_past` is its twin; saga.py `_timed_base` inlines it."""
    t = t0 + x
    return t if t - t0 > x else math.nextafter(t, math.inf)
