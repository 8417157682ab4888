"""bench/generate.py's ThreadCPU: CPU time lands on the right kind of thread."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.bench.threads import burn, live_thread, name_this_thread

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
    with live_thread(lambda: burn(0.3)) as live:
        while live.is_alive() and not _burnt(live):
            time.sleep(0.01)
        c = split.take()
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


def test_thread_cpu_counts_the_kernel_pool_apart():
    """A live thread named as the in-place kernel's pool threads counts as "kernel_pool",
    not as an OpenMP worker."""
    split = generate.ThreadCPU()
    with live_thread(lambda: (name_this_thread(generate.KERNEL_POOL), burn(0.3))) as live:
        while live.is_alive() and not _burnt(live):
            time.sleep(0.01)
        c = split.take()
    assert c["kernel_pool"] == pytest.approx(0.3, abs=0.08)
    assert c["live_others"] < 0.05


def test_kernel_pool_threads_finds_the_kernels_workers(monkeypatch):
    """The kernel names its pool threads as `kernel_pool_threads` looks for them."""
    import torch

    from kvsaga.kernels import inplace
    from tests.kernels.paged_case import make_case

    if not inplace.available():
        pytest.skip("kvsaga._paged_attn not built")
    monkeypatch.setattr(inplace, "_OMP_PASSIVE", True)  # as under OMP_WAIT_POLICY=PASSIVE
    case = make_case([600] * 8, [1] * 8, block_size=16, num_kv_heads=2, group=3, head_dim=64,
                     dtype=torch.float32)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    team = inplace.use_team(False)  # the pool, not torch's OpenMP team
    try:
        inplace.paged_attention(case.attention_args(), case.guarded_out(), None)
    finally:
        inplace.use_team(team)
        torch.set_num_threads(before)
    assert generate.kernel_pool_threads()


def test_graph_use_says_which_cuda_graphs_ran():
    """A failed capture leaves the runner's graphs None (eager, only a warning logged)."""
    from types import SimpleNamespace

    runner = SimpleNamespace(graphs=SimpleNamespace(replays=63), mixed=None)
    assert generate.graph_use(runner) == {"decode": {"on": True, "replays": 63},
                                          "mixed": {"on": False, "replays": 0}}
