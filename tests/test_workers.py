"""`kvsaga.workers.worker_pool`: workers that ignore SIGINT, and a `with` body that raises
ends them before the exception goes on (a plain pool waited for every queued task)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from kvsaga.workers import worker_pool

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")


def _children() -> set[int]:
    return {int(p) for f in Path("/proc/self/task").glob("*/children")
            for p in f.read_text().split()}


def _sigint_disposition() -> bool:
    """Whether this process ignores SIGINT (run in a worker)."""
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_a_raising_body_cancels_the_queue_and_ends_the_workers():
    before = _children()
    with pytest.raises(KeyboardInterrupt), worker_pool(2) as pool:
        assert pool.submit(_sigint_disposition).result()
        queued = [pool.submit(time.sleep, 30) for _ in range(6)]
        raise KeyboardInterrupt  # as Ctrl-C in the parent
    assert _children() == before  # terminated and reaped, not left to finish 3 minutes
    assert sum(f.cancelled() for f in queued) >= 4  # the two running ones were ended


def test_a_body_that_returns_waits_for_its_tasks():
    with worker_pool(2) as pool:
        future = pool.submit(os.getpid)
    assert future.result() != os.getpid()
