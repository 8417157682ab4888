"""`fcfs`: vLLM v1's rule, the baseline every scheduling figure is compared to."""

from __future__ import annotations

from collections import deque
from typing import Any

from kvsaga.manager import KVCacheManager
from kvsaga.scheduler.base import Scheduler


class FCFSScheduler(Scheduler):
    """vLLM v1's rule: request-level FCFS, admit while blocks are free, preempt the newest
    running request and recompute it (see the module docstring)."""

    name = "fcfs"

    def __init__(self, manager: KVCacheManager, **limits: Any) -> None:
        super().__init__(manager, **limits)
        self._queue: deque[Any] = deque()

    @property
    def waiting(self) -> list[Any]:
        return list(self._queue)

    @property
    def num_waiting(self) -> int:
        return len(self._queue)

    def _enqueue(self, req: Any, now: float, *, retry: bool) -> None:
        if retry:
            self._queue.appendleft(req)
        else:
            self._queue.append(req)

    def _dequeue(self, req: Any, now: float) -> bool:
        if self._queue and self._queue[0] is req:
            self._queue.popleft()
            return True
        try:
            self._queue.remove(req)
            return True
        except ValueError:
            return False

    def _candidate(self, now: float) -> Any | None:
        return self._queue[0]
