"""`kvsaga.workers.worker_pool`: workers that ignore SIGINT, and a `with` body that raises
ends them before the exception goes on (a plain pool waited for every queued task)."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from kvsaga.workers import stop_workers, worker_pool

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")


def _children() -> set[int]:
    return {int(p) for f in Path("/proc/self/task").glob("*/children")
            for p in f.read_text().split()}


def _sigint_disposition() -> bool:
    """Whether SIGINT leaves this process running (run in a worker): handled, not the
    default KeyboardInterrupt, and not SIG_IGN (which programs it starts would inherit)."""
    handler = signal.getsignal(signal.SIGINT)
    return callable(handler) and handler is not signal.default_int_handler


def test_a_raising_body_cancels_the_queue_and_ends_the_workers():
    before = _children()
    with pytest.raises(KeyboardInterrupt), worker_pool(2) as pool:
        assert pool.submit(_sigint_disposition).result()
        queued = [pool.submit(time.sleep, 30) for _ in range(20)]
        raise KeyboardInterrupt  # as Ctrl-C in the parent
    assert _children() == before  # terminated and reaped, not left to finish 10 minutes
    # Only tasks still in the executor's own queue can be cancelled: at most two run and
    # three (workers + 1) wait in the call queue the workers read, so at least 15 of 20.
    assert sum(f.cancelled() for f in queued) >= 15


def test_a_body_that_returns_waits_for_its_tasks():
    with worker_pool(2) as pool:
        future = pool.submit(os.getpid)
    assert future.result() != os.getpid()


def test_a_second_ctrl_c_while_reaping_the_workers_is_ignored():
    """A SIGINT during `join` (as a second Ctrl-C right after a worker was reaped) raised out
    of the reaping, and the executor's manager thread then polled that worker for good."""
    before = _children()
    with worker_pool(2) as pool:
        assert pool.submit(os.getpid).result() != os.getpid()  # the workers are up
        before_handler = signal.getsignal(signal.SIGINT)
        sent = []

        def join_after_ctrl_c(real_join):
            # Only stop_workers's own joins (on the main thread) get the Ctrl-C: the
            # executor's manager thread joins the workers too, and a SIGINT it sent after
            # the handler was restored reached a later test as a KeyboardInterrupt.
            if threading.current_thread() is threading.main_thread():
                sent.append(os.kill(os.getpid(), signal.SIGINT))
            real_join()

        for proc in pool._processes.values():
            proc.join = functools.partial(join_after_ctrl_c, proc.join)
        try:
            stop_workers(pool)
        except KeyboardInterrupt:
            pytest.fail("the second Ctrl-C broke out of stop_workers")
        assert len(sent) == 2  # a Ctrl-C after each worker's join began
    assert _children() == before  # every worker reaped
    assert signal.getsignal(signal.SIGINT) is before_handler  # restored


# Each task writes its line with one os.write: under PYTHONUNBUFFERED (as CI may run the
# suite) print() writes the pid and the newline as two syscalls, and the two workers' lines
# interleaved into "123456" and an empty line.
_STARTS_SLEEP = textwrap.dedent(r"""
    import os, subprocess, sys
    from kvsaga.workers import worker_pool
    def task(i):
        proc = subprocess.Popen(["sleep", "60"])
        os.write(1, f"{proc.pid}\n".encode())
        proc.wait()
    if __name__ == "__main__":
        try:
            with worker_pool(2) as pool:
                list(pool.map(task, range(2)))
        except KeyboardInterrupt:
            sys.exit(130)
""")


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _default_sigint() -> None:
    """Ctrl-C's default in the child: a background job of a shell (as a CI runner may start
    the suite) ignores SIGINT, and the child would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_reaches_the_programs_a_task_started():
    """Ctrl-C goes to the process group; a `sleep` a task runs ends with it, not left
    running after the command (it inherited the worker's SIG_IGN)."""
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", _STARTS_SLEEP], stdout=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=_default_sigint,
                            env=dict(os.environ, PYTHONPATH=root))
    sleeps: list[int] = []
    try:
        sleeps += [int(proc.stdout.readline()) for _ in range(2)]
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        deadline = time.monotonic() + 30
        while any(map(_running, sleeps)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_running, sleeps)), "a program a task started outlived Ctrl-C"
    finally:
        for pid in sleeps:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.stdout.close()
