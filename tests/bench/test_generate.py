"""bench/generate.py's ThreadCPU: CPU time lands on the right kind of thread."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.bench.threads import burn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import generate  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")


def test_thread_cpu_splits_engine_live_and_exited_threads():
    split = generate.ThreadCPU()
    burn(0.3)  # this thread: "engine"
    exited = threading.Thread(target=burn, args=(0.3,))
    exited.start()
    exited.join()
    stop = threading.Event()
    live = threading.Thread(target=lambda: (burn(0.3), stop.wait()))
    live.start()
    try:
        while live.is_alive() and not _burnt(live):
            time.sleep(0.01)
        c = split.take()
    finally:
        stop.set()
        live.join()
    # Clock ticks are 10 ms; each thread burnt 300 ms of its own CPU time.
    assert c["engine"] == pytest.approx(0.3, abs=0.08)
    assert c["live_others"] == pytest.approx(0.3, abs=0.08)
    assert c["exited"] == pytest.approx(0.3, abs=0.08)
    assert c["total"] == pytest.approx(c["engine"] + c["live_others"] + c["exited"])
    again = split.take()  # the next phase starts where this one ended
    assert again["engine"] < 0.05


def _burnt(thread: threading.Thread) -> bool:
    """Whether `thread` has used its 0.3 CPU-s (read from /proc by its native id)."""
    stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") >= 0.29
