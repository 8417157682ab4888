"""The C++ victim index's timers (csrc/timer_wheel.h: buckets on a ring, a heap beyond it)
fire in the order of the Python reference's binary heap, (when, version): across buckets,
past the ring's end, after long jumps of the clock, when the clock goes back, at another
bucket width, after a far first timer, after a re-key that raised, and for the timers
`due` pushes itself (its re-keys) onto a wheel it emptied while the clock was back; a NaN
clock is refused by both indexes alike."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from kvsaga.policy.search import _GRID_POINTS, _LOG_RATIO, GRID_S, grid_index_py
from kvsaga.policy.session_heap import PySessionHeap, make_session_heap

# Builds its heaps and policies itself (tests/policy/conftest.py): runs once, not once a core.
READS_NO_CORE = True

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


@needs_cpp
@pytest.mark.parametrize("seed", range(2))
def test_timers_at_another_grid_width_fire_in_the_reference_order(seed):
    # The wheel's buckets are the grid's first point wide (set_grid): untimed pushes only,
    # so that the grid changes nothing but the buckets.
    cpp, py = make_session_heap(True), PySessionHeap()
    cpp.set_grid(0.0137, _LOG_RATIO, list(_GRID_POINTS))
    assert _drive(cpp, random.Random(seed), 3000) == _drive(py, random.Random(seed), 3000)


@pytest.mark.parametrize("cpp", [False, True])
def test_a_nan_now_is_refused_with_nothing_changed(cpp):
    if cpp and SessionHeap is None:
        pytest.skip("kvsaga._evict is not built")
    index = make_session_heap(True) if cpp else PySessionHeap()
    index.push("a", (1, 0.0), 1, 1, 0.5, 0.0)
    index.push("b", (1, 1.0), 2, 1, 0.2, 0.0)
    with pytest.raises(ValueError, match="^due: now must not be NaN$"):
        index.due(math.nan)
    with pytest.raises(ValueError, match="^refresh_runs: now must not be NaN$"):
        index.refresh_runs(math.nan, ["a"], [("c", (0, 0.0), 3, 1, 0.1, None)], 4, 0)
    assert len(index) == 2
    assert index.due(1.0) == ["b", "a"]
    assert index.runs(4) == [("a", 1), ("b", 1)]


@needs_cpp
@pytest.mark.parametrize("width", [None, 0.0137])
def test_a_far_first_timer_leaves_the_nearer_ones_in_their_buckets(width):
    # An empty wheel anchors on the push's `now`, not on its first timer: a timer an hour
    # ahead waits beyond the ring, and the nearer ones each sit in their own bucket.
    cpp, py = make_session_heap(True), PySessionHeap()
    if width is not None:
        cpp.set_grid(width, _LOG_RATIO, list(_GRID_POINTS))
    w = GRID_S if width is None else width
    for index in (cpp, py):
        index.push("far", (1, 0.0), 0, 1, 3600.0, 0.0)
        for i in range(200):
            index.push(f"s{i}", (1, float(i)), i + 1, 1, (i + 1) * 0.7 * w, 0.0)
    ring, far, buckets = cpp._timer_layout()
    assert (ring, far) == (200, 1)
    assert buckets >= 100
    for now in [j * 10.3 * w for j in range(16)] + [3600.0]:
        assert cpp.due(now) == py.due(now), now
    assert cpp._timer_layout() == (0, 0, 0)


def _fail_once(monkeypatch) -> dict:
    """statistics' normal quantile (what graph's mode-4 keys call, in both indexes) made to
    raise once when armed."""
    real = statistics._normal_dist_inv_cdf
    state = {"armed": False}

    def inv_cdf(*args):
        if state["armed"]:
            state["armed"] = False
            raise statistics.StatisticsError("injected")
        return real(*args)

    monkeypatch.setattr(statistics, "_normal_dist_inv_cdf", inv_cdf)
    return state


# A mode-4 timed record of graph's: its re-key calls the normal quantile.
_MODE4 = (1, -1, 1, (0.5, 0.5, 1.5, 0.6, 0.4, 1.3, 1e-3, 1.0), 4, 0.0, math.inf, math.inf,
          1.0)


def _after_a_rekey_raises(monkeypatch, push, read) -> tuple:
    """Each index (the C++ one, then the reference heap) filled by `push(index)`, then asked
    `due(1.5)` with the quantile armed to raise once: the call raises, and the quantile is
    disarmed. Returns `read(index)`, the same for both (asserted)."""
    state = _fail_once(monkeypatch)
    answers = []
    for index in (make_session_heap(True), PySessionHeap()):
        push(index)
        state["armed"] = True
        with pytest.raises(statistics.StatisticsError, match="injected"):
            index.due(1.5)
        assert not state["armed"]
        answers.append(read(index))
    assert answers[0] == answers[1]
    return answers[0]


@needs_cpp
def test_a_rekey_that_raises_leaves_the_other_timers_in_order(monkeypatch):
    # "g" (mode 4: its re-key calls the quantile) fires first in a bucket of four; its
    # re-key raises. As the reference's heap, the index loses that one timer only: the
    # others fire at the next `due`, in order.
    def push(index):
        index.push("g", (1, 0.0), 1, 1, 1.0, 0.0, _MODE4)
        for i, sid in enumerate(("u1", "u2", "u3")):
            index.push(sid, (1, 1.0 + i), 2 + i, 1, 1.0, 0.0)
        index.push("later", (1, 9.0), 9, 1, 2.0, 0.0)

    got = _after_a_rekey_raises(
        monkeypatch, push, lambda index: (index.due(1.5), index.due(2.5), len(index),
                                          index.runs(9)))
    assert got[:2] == (["u1", "u2", "u3"], ["later"])


@needs_cpp
def test_a_rekey_that_raises_rearms_those_already_fired(monkeypatch):
    # "p" (no timed record: answered for Python to re-key) fires before "g", whose re-key
    # raises: "p" left `due` with the exception, its timer used up. Both indexes give it a
    # timer at `now`, so the next `due` answers it (without one its key would stay stale).
    def push(index):
        index.push("p", (1, 0.5), 1, 1, 1.0, 0.0)
        index.push("g", (1, 0.0), 2, 1, 1.0, 0.0, _MODE4)
        index.push("u1", (1, 1.0), 3, 1, 1.0, 0.0)

    got = _after_a_rekey_raises(
        monkeypatch, push, lambda index: (index.due(1.5), index.due(2.5), len(index)))
    assert got[:2] == (["u1", "p"], [])


# saga's formula (mode 2): a class's key at every grid point, so every due timer of a timed
# session is re-keyed by the index itself, which pushes its next timer from inside `due`.
_SAGA = (1.0, 50.0, 0.0, 0.0)


def _timed_push(index, sid: str, tie: int, pause: float, now: float) -> None:
    """`sid` paused `pause` seconds before `now`, keyed by saga's formula at its grid point,
    with its timer at the next point."""
    t0 = now - pause
    k, lo, hi = grid_index_py(pause)
    w, s, a, b = _SAGA
    index.push(sid, (2.0, -((w * min(lo / s, 1.0) + a) + b)), tie, 1, t0 + hi, now,
               (tie % 3, k, 2.0, _SAGA, 2, t0, math.inf, math.inf, 1.0))


def _drive_timed(index, rng: random.Random, steps: int) -> list:
    """A few sessions with timed records (re-keyed by `due` itself) and untimed ones,
    drops, compactions, and a clock that mostly moves forward and often goes back: what
    each `due` answered, then the entries held and the live sessions in key order."""
    out, now = [], 10.0
    for i in range(steps):
        r = rng.random()
        sid = f"s{rng.randrange(3)}"
        if r < 0.3:
            _timed_push(index, sid, rng.randrange(50), rng.choice([0.0, 2e-3, 0.05, 1.0])
                        * rng.random(), now)
        elif r < 0.4:
            until = rng.choice([math.inf, now + 0.2 * rng.random()])
            index.push(sid, (1.0, rng.random()), rng.randrange(50), 1, until, now)
        elif r < 0.45:
            index.drop(sid)
        elif r < 0.55:
            index.compact()
        else:
            step = rng.choice([0.0, 1e-3, 0.01, 0.1, 0.3, -0.05, -0.3])
            now = now + step * (0.5 + rng.random())
            got = index.due(now)
            order = index.runs(100)
            index.restore()
            out.append((i, now, got, len(index), order))
    return out


@needs_cpp
def test_a_timer_pushed_by_due_on_an_emptied_wheel_with_the_clock_back_fires_on_time():
    # The clock went back (now behind the wheel's buckets); compaction left only "c"'s
    # timer, clamped into the wheel's current bucket. `due` fires it and re-keys "c" from
    # its class's key: the new timer is pushed onto an empty wheel from inside `due`, and
    # must fire at the first `due` after its deadline, as in the reference's heap (it
    # fired a ring turn, about 0.5 s, late: at 1.39 instead of 0.5).
    answers = []
    for index in (make_session_heap(True), PySessionHeap()):
        index.push("x", (2, 1.0), 1, 1, 1.5, 1.0)  # keeps the wheel at about 1.0 s
        k = grid_index_py(0.25)[0]
        index.push("c", (2, 0.5), 2, 1, 0.3, 0.2, (0, k, 2, 0.5, 0, 0.0, math.inf, math.inf,
                                                   1.0))
        # the class's key at c's next grid point too, so that `due` re-keys c itself
        k2 = grid_index_py(0.35)[0]
        index.push("d", (2, 0.5), 3, 1, math.inf, 0.2, (0, k2, 2, 0.7, 0, 0.0, math.inf,
                                                        math.inf, 1.0))
        index.push("x", (2, 1.0), 1, 1, math.inf, 1.0)  # x's timer turns stale
        index.compact()  # ... and goes: c's is the wheel's last
        got = [index.due(0.35), len(index)]
        got += [index.due(now) for now in (0.5, 0.6, 1.0, 1.39)]
        answers.append(got)
    assert answers[0] == answers[1]
    assert answers[1] == [[], 4, ["c"], [], [], []]


@needs_cpp
@pytest.mark.parametrize("seed", range(8))
def test_timers_pushed_by_due_with_the_clock_going_back_fire_in_the_reference_order(seed):
    # The case above met at random (seeds 2 to 4 do: a timer fired a ring turn late, and
    # the session kept its old key meanwhile).
    cpp, py = make_session_heap(True), PySessionHeap()
    assert (_drive_timed(cpp, random.Random(seed), 1500)
            == _drive_timed(py, random.Random(seed), 1500))
