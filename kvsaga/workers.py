"""Worker processes that stop with the command: `worker_pool`, a `ProcessPoolExecutor` for
runs a user may interrupt (`kvsaga sim --jobs`, the benchmarks).

A terminal's Ctrl-C sends SIGINT to the whole process group. A plain pool's workers caught
it as their running task's result and took the next queued task, and the pool's exit waited
for every queued task before the parent could stop; a second Ctrl-C broke that wait before
the workers got their stop, and the interpreter's exit then joined idle workers for good.
"""

from __future__ import annotations

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


@contextmanager
def worker_pool(max_workers: int | None = None, mp_context=None) -> Iterator[ProcessPoolExecutor]:
    """A `ProcessPoolExecutor` whose workers leave Ctrl-C to the parent (a handler that does
    nothing; programs they start get SIGINT's default).
    When the `with` body raises (KeyboardInterrupt included), the queued tasks are cancelled
    and the workers ended before the exception goes on, so the command stops at once and
    leaves no process."""
    pool = ProcessPoolExecutor(max_workers, mp_context=mp_context,
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
    so they are read from its process table before `shutdown` drops it.

    SIGINT is ignored meanwhile (on the main thread, where Python handles it): a second
    Ctrl-C raised right after `join` reaped a worker, before its exit status was stored,
    left the executor's manager thread polling that worker for good and the exit hung. The
    joins are bounded, as every worker got SIGTERM."""
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if on_main else None
    try:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            proc.terminate()
        for proc in processes:
            proc.join()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
