"""Ctrl-C stops `kvsaga sim --jobs 2` at once with exit status 130 and leaves no worker.

Its workers used to catch the terminal's SIGINT as their running task's result and take the
next queued one, so one Ctrl-C waited for the whole run and a second hung the exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Minutes of simulation on two workers: a run that goes on after Ctrl-C outlasts the wait.
LONG_RUN = ["sim", "--sessions", "300", "--scale", "0.2", "--jobs", "2", "--quiet",
            "--policy", "lru,saga,ttl,graph,adaptive", "--scheduler", "fcfs,workflow"]
WAIT_S = 60  # no timing claim: only a bound, so a run that does not stop fails, not hangs

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="reads processes from /proc")


def _group(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended while read
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _wait_for_workers(proc: subprocess.Popen, count: int, bound_s: float) -> None:
    """Until `proc` has `count` workers. The Ctrl-C must come after that: one that came
    while the command was still importing (before `main` catches KeyboardInterrupt) ended
    it with a traceback and status -2, not 130 (a Ctrl-C that meets a worker before its
    handler is set only kills that worker; the parent's KeyboardInterrupt still ends the
    run, and the checks hold). The bound only turns a command that never starts its
    workers into a failure instead of a hang."""
    deadline = time.monotonic() + bound_s
    while len([p for p in _group(proc.pid) if p != proc.pid]) < count:
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before its workers started: "
                        f"{proc.stderr.read().decode()}")
        assert time.monotonic() < deadline, f"no {count} workers within {bound_s} s"
        time.sleep(0.1)


def _default_sigint() -> None:
    """Ctrl-C's default in the child: a job a shell starts in the background (as a CI runner
    may start the suite) ignores SIGINT, the child inherits that, and Python then installs no
    KeyboardInterrupt for it, so the run would go on to its end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_one_ctrl_c_stops_the_run_and_its_workers():
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, "-m", "kvsaga.cli", *LONG_RUN], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True,  # its own group, as a terminal's job
                            preexec_fn=_default_sigint)
    try:
        _wait_for_workers(proc, 2, bound_s=300)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole group gets it
        try:
            rc = proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {WAIT_S} s after Ctrl-C")
        assert rc == 130, proc.stderr.read().decode()
        assert _group(proc.pid) == [], "a worker outlived the command"
    finally:
        if _group(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
