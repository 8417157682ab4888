"""A Ctrl-C that reaches the parent while `worker_pool` is still starting a worker: after the
worker process exists, before the executor enters it in its process table. `stop_workers`
read only that table, so the worker was left running (it ignores SIGINT and waits on the
pool's queue) and the interpreter's exit joined it for good: `kvsaga sim --jobs 2` went on
running after Ctrl-C (tests/sim/test_cli_interrupt.py, under load)."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from kvsaga.workers import worker_pool


@pytest.mark.parametrize("method", ["fork", "spawn"])  # all at once / one per submit
def test_a_ctrl_c_while_a_worker_starts_ends_that_worker(monkeypatch, method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    ctx = multiprocessing.get_context(method)
    started: list = []
    start = ctx.Process.start

    def start_then_ctrl_c(proc) -> None:
        """The real start (the child exists), then Ctrl-C in the parent, at the first."""
        start(proc)
        started.append(proc)
        if len(started) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(ctx.Process, "start", start_then_ctrl_c)  # (its class: pickles)
    try:
        with pytest.raises(KeyboardInterrupt), worker_pool(2, mp_context=ctx) as pool:
            pool.submit(time.sleep, 0)
        assert len(started) == 1  # the Ctrl-C came at the first worker's start
        assert started[0].exitcode is not None, "a worker started before Ctrl-C outlived it"
        assert not started[0].is_alive()
    finally:  # (the old code's leftover worker: end it, or this process's exit waits on it)
        for proc in started:
            if proc.exitcode is None:
                proc.kill()
                proc.join()
