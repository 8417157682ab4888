"""Helpers for the tests of the benchmarks' per-thread CPU accounting."""

from __future__ import annotations

import time


def burn(seconds: float) -> None:
    """Spin until this thread has used `seconds` of CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
