"""Helpers for the tests of the benchmarks' per-thread CPU accounting."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def burn(seconds: float) -> None:
    """Spin until this thread has used `seconds` of CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def name_this_thread(name: str) -> None:
    """Set the calling thread's kernel name (what /proc/self/task/*/comm reads)."""
    Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(name)


@contextmanager
def live_thread(work: Callable[[], object]) -> Iterator[threading.Thread]:
    """A thread that runs `work`, then stays alive (so /proc still lists it as live) until
    the block ends."""
    stop = threading.Event()
    thread = threading.Thread(target=lambda: (work(), stop.wait()))
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join()
