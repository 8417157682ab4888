"""bench/step_wakeups.py: its per-thread switch reading and its per-call charging."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import step_wakeups  # noqa: E402


def test_thread_switches_sees_a_thread_that_slept():
    ready, go = threading.Event(), threading.Event()
    tid = []

    def sleeper():
        tid.append(threading.get_native_id())
        ready.set()
        go.wait()  # blocks: a voluntary switch

    t = threading.Thread(target=sleeper)
    t.start()
    ready.wait()
    # ready.set() returns before the thread blocks in go.wait(): poll until its voluntary
    # switch shows (a reader that never sees voluntary switches fails here)
    deadline = time.monotonic() + 10.0
    while (before := step_wakeups.thread_switches()[tid[0]][0]) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    go.set()
    t.join()
    assert before >= 1
    assert step_wakeups.MAIN in step_wakeups.thread_switches()


def test_nested_calls_are_charged_to_the_inner_one(monkeypatch):
    ticks = iter(range(0, 100, 1))
    monkeypatch.setattr(step_wakeups, "worker_switches", lambda: next(ticks) * 10)
    counter = step_wakeups.OpCounter()
    inner = counter.wrap(lambda: None, lambda: "inner")
    outer = counter.wrap(lambda: inner(), lambda: "outer")
    outer()
    # switches read 0 (outer in), 10 (inner in), 20 (inner out), 30 (outer out)
    assert counter.calls == {"inner": 1, "outer": 1}
    assert counter.wakes == {"inner": 10, "outer": 20}
