"""The session gate's admitted sessions (`gate.SessionGate.sessions`): each one's record
(`Admitted`) in a table that counts its writes (`AdmittedTable`), and the sums over them
that every admission probe asks for, kept between probes (`SumMemo`).

Why kept: vLLM asks the connector about every waiting request in every engine step, and
each probe summed the admitted sessions' working sets several times (the fit, the room
rule's growth and fit, the reservation's test), so a step cost O(W x A) in the W waiting
and A admitted sessions (review s51, vgate finding 3: 2.2 s a step at W = 1,000 and
A = 300 on the dev box). A sum is reused while nothing it reads has changed. Every write
to a record once it is in a table (`Admitted.__setattr__`) or to the table, and every
growth the gate learns (`GateGrowth.changes`), moves the stamp the sums are kept under
(`SessionGate._stamp`): no caller has to remember to say that it changed something.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


class _Writes:
    n = 0  # writes to any Admitted record or AdmittedTable in this process


@dataclass
class Admitted:
    """An admitted session, as the gate counts it."""

    workflow: str
    context: int  # tokens, as of its last admission or finish
    shared: int  # leading tokens in blocks other sessions share (a common prefix)
    admitted_at: float
    last_finish: int | None = None  # context at its last finish, for the growth per step
    paused_at: float | None = None  # None: a step is queued or running
    expected_s: float | None = None  # the hint of the current pause
    # (context, paused_at, expected_s) before its step was admitted or arrived: restored if
    # that step is aborted before vLLM allocated it (`finished`)
    resumed_from: tuple[int, float, float | None] | None = None

    _counted = False  # (not a field) put in an AdmittedTable: its writes are counted

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if self._counted:  # (a record being built is not summed over: its insertion counts)
            _Writes.n += 1


class AdmittedTable(dict):
    """Session id -> its `Admitted` record, in admission order; every write counted."""

    def __setitem__(self, sid: str, s: Admitted) -> None:
        object.__setattr__(s, "_counted", True)  # (for good: a record taken out and kept
        super().__setitem__(sid, s)  # is only counted needlessly)
        _Writes.n += 1

    def __delitem__(self, sid: str) -> None:
        super().__delitem__(sid)
        _Writes.n += 1

    def pop(self, sid: str, *default: Any) -> Any:
        _Writes.n += 1
        return super().pop(sid, *default)

    def clear(self) -> None:
        super().clear()
        _Writes.n += 1

    def _unsupported(self, *args: object, **kwargs: object) -> None:
        raise TypeError("AdmittedTable counts its writes: use item assignment, pop or del")

    update = popitem = setdefault = __ior__ = _unsupported  # type: ignore[assignment]


def writes() -> int:
    """Writes to admitted sessions' records and tables so far (any gate's)."""
    return _Writes.n


class SumMemo:
    """Values computed over the admitted sessions, each kept with the stamp it was computed
    under and reused while the stamp is the same."""

    KEPT = 16  # values kept (a few horizons of a few sums)

    def __init__(self) -> None:
        self._kept: dict[Hashable, tuple[Hashable, Any]] = {}

    def get(self, key: Hashable, stamp: Hashable, compute: Callable[[], Any]) -> Any:
        kept = self._kept.get(key)
        if kept is not None and kept[0] == stamp:
            return kept[1]
        value = compute()
        if key not in self._kept and len(self._kept) >= self.KEPT:
            self._kept.clear()
        self._kept[key] = (stamp, value)
        return value


def resume(s: Admitted, num_tokens: int) -> None:
    """Admitted session `s`'s next step (`num_tokens` of prompt) is queued or running."""
    if s.paused_at is not None:
        s.resumed_from = (s.context, s.paused_at, s.expected_s)
    s.context, s.paused_at = max(s.context, num_tokens), None


def alloc(s: Admitted, block_size: int) -> int:
    """Blocks vLLM's allocation of `s`'s step takes from its free count: its uncached
    tokens' blocks and one more."""
    return math.ceil(max(s.context - s.shared, 1) / block_size) + 1
