"""The C++ victim index's timers (csrc/timer_wheel.h: buckets on a ring, a heap beyond it)
fire in the order of the Python reference's binary heap, (when, version): across buckets,
past the ring's end, after long jumps of the clock, and when the clock goes back."""

from __future__ import annotations

import math
import random

import pytest

from kvsaga.policy.session_heap import PySessionHeap, make_session_heap

try:
    from kvsaga._evict import SessionHeap
except ImportError:  # not built: the Python index runs everywhere
    SessionHeap = None

needs_cpp = pytest.mark.skipif(SessionHeap is None, reason="kvsaga._evict is not built")


def _drive(index, rng: random.Random, steps: int) -> list:
    """Pushes with deadlines from a microsecond to hours ahead (some before now), and
    `due` calls whose clock mostly moves forward by up to a second, sometimes jumps hours,
    sometimes goes back: what each call answered, in order."""
    out, now = [], 0.0
    for i in range(steps):
        r = rng.random()
        if r < 0.6:
            sid = f"s{rng.randrange(40)}"
            ahead = rng.choice([1e-6, 1e-3, 0.0137, 0.4, 0.51, 0.6, 3.0, 7200.0, -0.2])
            until = now + ahead * rng.random() if rng.random() < 0.5 else now + ahead
            index.push(sid, (1, rng.random()), rng.randrange(100), 1 + rng.randrange(4),
                       until, now)
        elif r < 0.63:
            index.drop(f"s{rng.randrange(40)}")
        elif r < 0.65:
            index.compact()
        else:
            step = rng.choice([0.0, 1e-3, 2.5e-3, 0.05, 0.3, 0.7, 5000.0, -0.4])
            now = now + step * (0.5 + rng.random())
            out.append((i, now, index.due(now)))
    return out


@needs_cpp
@pytest.mark.parametrize("seed", range(6))
def test_timers_fire_in_the_reference_order(seed):
    cpp, py = make_session_heap(True), PySessionHeap()
    assert _drive(cpp, random.Random(seed), 3000) == _drive(py, random.Random(seed), 3000)


@needs_cpp
def test_timers_at_negative_times_and_far_deadlines():
    cpp, py = make_session_heap(True), PySessionHeap()
    for index in (cpp, py):
        index.push("a", (1, 0.0), 1, 1, -5.0, -6.0)
        index.push("b", (1, 1.0), 2, 1, 1e15, -6.0)
        index.push("c", (1, 2.0), 3, 1, -5.0, -6.0)  # same deadline: by version
        index.push("d", (1, 3.0), 4, 1, math.inf, -6.0)  # no timer
    for now in (-5.5, -5.0, 0.0, 1e15, 2e15):
        assert cpp.due(now) == py.due(now), now
    assert py.due(3e15) == cpp.due(3e15) == []
