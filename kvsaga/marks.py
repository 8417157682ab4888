"""Per-block marks written in one call: `scatter(marks, ids, values)` sets `marks[ids[i]] =
values[i]`, `fill(marks, ids, value)` sets `marks[i] = value` and `copy(marks, source, ids)`
`marks[i] = source[i]` for each i of `ids`, in a list or a bytearray indexed by block id;
and `owner_runs(ids, owners, positions)` reads a batch's runs of one owner.

A grouped policy marks every block a step releases (its position, when it was cached, its
owner, where it is kept): thousands of blocks per step on a long session, which as Python
stores were a third of the simulator's full-size runs. The C++ core's versions
(csrc/marks.h) do the same stores in one call each; these are their twins and the reference
(tests/test_marks.py runs both). Both check everything before writing anything: bad input
raises and leaves `marks` as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import groupby
from operator import gt, index
from typing import Any, NamedTuple

Marks = list | bytearray


def _checked(marks: Marks, ids: Sequence[int], n: int | None = None) -> list[int]:
    if type(marks) not in (list, bytearray):
        raise TypeError(f"marks must be a list or a bytearray, got {type(marks).__name__}")
    n = len(marks) if n is None else n
    out = [index(b) for b in ids]
    for b in out:
        if not 0 <= b < n:
            raise IndexError(f"block id {b} out of range [0, {n})")
    return out


def _byte(marks: Marks, v: Any) -> Any:
    if type(marks) is bytearray and not 0 <= index(v) <= 255:
        raise ValueError("byte must be in range(0, 256)")
    return v


def scatter(marks: Marks, ids: Sequence[int], values: Sequence[Any]) -> None:
    """`marks[ids[i]] = values[i]` for each i, in order."""
    blocks = _checked(marks, ids)
    values = list(values)
    if len(values) != len(blocks):
        raise ValueError(f"{len(values)} values for {len(blocks)} block ids")
    values = [_byte(marks, v) for v in values]
    for b, v in zip(blocks, values, strict=True):
        marks[b] = v


def fill(marks: Marks, ids: Sequence[int], value: Any) -> None:
    """`marks[b] = value` for each block b of `ids`."""
    blocks = _checked(marks, ids)
    value = _byte(marks, value)
    for b in blocks:
        marks[b] = value


def copy(marks: Marks, source: Sequence[Any], ids: Sequence[int]) -> None:
    """`marks[b] = source[b]` for each block b of `ids`."""
    blocks = _checked(marks, ids, min(len(marks), len(source)))
    values = [_byte(marks, source[b]) for b in blocks]
    for b, v in zip(blocks, values, strict=True):
        marks[b] = v


def owner_runs(ids: Sequence[int], owners: Sequence[Any],
               positions: Sequence[int]) -> list[tuple[Any, int, bool]]:
    """The runs of equal owners along `ids` (`owners[b]`, compared with ==), each as (owner,
    length, whether `positions[b]` strictly fall along it)."""
    blocks = _checked([], ids, min(len(owners), len(positions)))
    out, i = [], 0
    for sid, same in groupby(owners[b] for b in blocks):
        k = len(list(same))
        pos = [positions[b] for b in blocks[i:i + k]]
        out.append((sid, k, all(map(gt, pos, pos[1:]))))
        i += k
    return out


class MarkOps(NamedTuple):
    """One implementation of the four calls."""

    scatter: Callable[[Marks, Sequence[int], Sequence[Any]], None]
    fill: Callable[[Marks, Sequence[int], Any], None]
    copy: Callable[[Marks, Sequence[Any], Sequence[int]], None]
    owner_runs: Callable[[Sequence[int], Sequence[Any], Sequence[int]],
                         list[tuple[Any, int, bool]]]


PYTHON = MarkOps(scatter, fill, copy, owner_runs)


def make_marks(cpp: bool) -> MarkOps:
    """The C++ core's calls when `cpp` and kvsaga._kvcore was built, else these."""
    if cpp:
        try:
            from kvsaga import _kvcore
        except ImportError:
            return PYTHON
        return MarkOps(_kvcore.scatter, _kvcore.fill, _kvcore.copy, _kvcore.owner_runs)
    return PYTHON
