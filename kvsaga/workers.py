"""Worker processes that stop with the command: `worker_pool`, a `ProcessPoolExecutor` for
runs a user may interrupt (`kvsaga sim --jobs`, the benchmarks).

A terminal's Ctrl-C sends SIGINT to the whole process group. A plain pool's workers caught
it as their running task's result and took the next queued task, and the pool's exit waited
for every queued task before the parent could stop; a second Ctrl-C broke that wait before
the workers got their stop, and the interpreter's exit then joined idle workers for good.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager


def _leave_sigint_to_parent() -> None:
    """A worker's initializer: the parent alone decides what Ctrl-C stops. A handler that
    does nothing, not SIG_IGN: an ignored signal stays ignored across exec, so a program the
    task starts (ptxas under Triton's compile) outlived Ctrl-C; a handler resets there."""
    signal.signal(signal.SIGINT, _do_nothing)


def _do_nothing(signum, frame) -> None:
    """SIGINT's handler in a worker."""


class _KeptProcesses:
    """`mp_context` as the pool sees it, keeping every worker process it makes, before it
    starts: the pool enters a worker in its process table only after `start` returns, so a
    Ctrl-C that lands between the two left a started worker that `stop_workers` did not
    see, and the exit waited on it for good (it ignores SIGINT and blocks on the pool's
    queue)."""

    def __init__(self, base) -> None:
        self._base = base
        self.processes: list = []

    def __getattr__(self, name: str):
        return getattr(self._base, name)

    def Process(self, *args, **kwargs):  # noqa: N802 (the context's own name)
        proc = self._base.Process(*args, **kwargs)
        self.processes.append(proc)
        return proc


@contextmanager
def worker_pool(max_workers: int | None = None, mp_context=None) -> Iterator[ProcessPoolExecutor]:
    """A `ProcessPoolExecutor` whose workers leave Ctrl-C to the parent (a handler that does
    nothing; programs they start get SIGINT's default).
    When the `with` body raises (KeyboardInterrupt included), the queued tasks are cancelled
    and the workers ended before the exception goes on, so the command stops at once and
    leaves no process (a worker still being started included)."""
    kept = _KeptProcesses(multiprocessing.get_context() if mp_context is None else mp_context)
    pool = ProcessPoolExecutor(max_workers, mp_context=kept,
                               initializer=_leave_sigint_to_parent)
    try:
        yield pool
    except BaseException:
        stop_workers(pool)
        raise
    pool.shutdown(wait=True)


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel `pool`'s queued tasks and terminate and reap its workers (a running task's
    result is lost). The executor has no public way to end its workers before Python 3.14,
    so they are read from its process table before `shutdown` drops it, with those that
    `worker_pool`'s context made and started but the table does not hold yet.

    SIGINT is ignored meanwhile (on the main thread, where Python handles it): a second
    Ctrl-C raised right after `join` reaped a worker, before its exit status was stored,
    left the executor's manager thread polling that worker for good and the exit hung. The
    joins are bounded, as every worker got SIGTERM."""
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if on_main else None
    try:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        kept = getattr(pool, "_mp_context", None)
        if isinstance(kept, _KeptProcesses):
            processes += [p for p in kept.processes
                          if _started(p) and all(p is not q for q in processes)]
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.join()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _started(proc) -> bool:
    """Whether `proc` was started and not closed (one whose `start` was cut short by the
    Ctrl-C before the child existed has no pid)."""
    try:
        return proc.pid is not None
    except ValueError:  # closed
        return False
