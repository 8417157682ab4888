"""bench/serve_throughput.py's split of a server's CPU seconds by thread."""

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
import serve_throughput  # noqa: E402
from generate import KERNEL_POOL, thread_cpu_s  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")


def test_server_threads_names_the_busiest_thread_and_the_exited_rest():
    pid = os.getpid()
    before, cpu0 = thread_cpu_s(pid), time.process_time()
    with live_thread(lambda: burn(0.4)) as engine:  # alive at the end
        exited = threading.Thread(target=burn, args=(0.2,))
        exited.start()
        exited.join()
        while thread_cpu_s(pid).get(engine.native_id, 0.0) < 0.39:
            time.sleep(0.01)
        split = serve_throughput.server_threads(pid, before, time.process_time() - cpu0)
    assert split["busiest"] == pytest.approx(0.4, abs=0.08)
    assert split["rest"] == pytest.approx(0.2, abs=0.08)  # the exited thread
    assert split["main"] < 0.15  # this thread mostly slept
    assert split["other_live"] < 0.1


def test_server_threads_counts_the_kernel_pool_apart():
    """A live thread named as the in-place kernel's pool threads is counted as the pool,
    even when it is the busiest (it is not the engine thread)."""
    pid = os.getpid()
    before, cpu0 = thread_cpu_s(pid), time.process_time()
    with live_thread(lambda: (name_this_thread(KERNEL_POOL), burn(0.3))) as pool:
        while thread_cpu_s(pid).get(pool.native_id, 0.0) < 0.29:
            time.sleep(0.01)
        split = serve_throughput.server_threads(pid, before, time.process_time() - cpu0)
    assert split["kernel_pool"] == pytest.approx(0.3, abs=0.08)
    assert split["busiest"] < 0.1


def _result(tok_s: float, foreign: float, load: float = 2.3) -> dict:
    return {"wall_s": 10.0, "output_tok_s": tok_s, "output_tok_per_cpu_s": tok_s / 2,
            "server_cpu_s": 20.0, "prompt_tokens": 8580, "loadavg": load,
            "all_output_tok_s": [tok_s], "all_output_tok_per_cpu_s": [tok_s / 2],
            "all_loadavg": [load], "all_foreign_cores": [foreign]}


def test_table_judges_the_goal_only_on_a_quiet_machine():
    import argparse

    args = argparse.Namespace(requests=16, max_tokens=64, kv_memory=1 << 30, block_size=32,
                              max_num_seqs=16, repeat=1, order="vllm,kvsaga")
    # A load average above the cores that the servers make themselves is no interference:
    # only the CPU that other jobs took during the batch decides.
    quiet = serve_throughput._table(
        args, {"vllm": _result(100, 0.05), "kvsaga-serve:ttl": _result(120, 0.0)}, "cmd")
    assert "(goal >= 1.0x: met)" in quiet and "quiet machine" not in quiet
    slower = serve_throughput._table(
        args, {"vllm": _result(100, 0.05), "kvsaga-serve:ttl": _result(90, 0.0)}, "cmd")
    assert "(goal >= 1.0x: not met)" in slower
    loaded = serve_throughput._table(
        args, {"vllm": _result(100, 0.9), "kvsaga-serve:ttl": _result(120, 0.0)}, "cmd")
    assert "not judged: the machine was loaded" in loaded and "rerun on a quiet" in loaded
    older = serve_throughput._table(  # a run without the figure is not called quiet
        args, {"vllm": _result(100, float("nan")), "kvsaga-serve:ttl": _result(120, 0.0)},
        "cmd")
    assert "not judged" in older and "| n/a |" in older


def test_machine_busy_cpu_counts_this_process():
    """The machine's busy CPU-seconds grow at least by what this process burns."""
    # The wall clock brackets both /proc/stat reads: a preemption between a read and the
    # clock, on a machine loaded to every core, counted as busy time outside `wall` (3 of
    # 150 windows at load 25 on 2 cores went past the bound).
    t0 = time.perf_counter()
    busy0, own0 = serve_throughput.machine_busy_cpu_s(), serve_throughput.own_cpu_s()
    burn(0.3)
    busy, own = (serve_throughput.machine_busy_cpu_s() - busy0,
                 serve_throughput.own_cpu_s() - own0)
    wall = time.perf_counter() - t0
    assert own >= 0.25
    assert busy >= own - 0.05
    # idle time is not counted: no more than every core busy for the whole interval, give
    # or take a clock tick per core at each end (/proc/stat counts whole ticks)
    cores = os.cpu_count() or 1
    assert busy <= wall * cores + max(0.05, 2 * cores / os.sysconf("SC_CLK_TCK"))


def test_order_arms_parse_settings_and_refuse_bad_ones():
    arms = serve_throughput.order_arms(
        "vllm,kvsaga,kvsaga+--cpu-host=shared,kvsaga+KVSAGA_CPU_SERIAL_BELOW=0+GOMP_SPINCOUNT=1",
        "ttl")
    assert [a.name for a in arms] == [
        "vllm", "kvsaga-serve:ttl", "kvsaga-serve:ttl --cpu-host=shared",
        "kvsaga-serve:ttl KVSAGA_CPU_SERIAL_BELOW=0 GOMP_SPINCOUNT=1"]
    assert arms[2].serve_args == ("--cpu-host", "shared") and arms[2].env == ()
    assert arms[3].env == (("KVSAGA_CPU_SERIAL_BELOW", "0"), ("GOMP_SPINCOUNT", "1"))
    for bad, what in (("sglang", "is not vllm"), ("kvsaga+lower=1", "is not NAME=VALUE"),
                      ("kvsaga+NOEQ", "is not NAME=VALUE"), ("kvsaga,kvsaga", "twice"),
                      (",", "names no server"), ("vllm+X=1", "is not vllm")):
        with pytest.raises(ValueError, match=what):
            serve_throughput.order_arms(bad, "ttl")


def test_table_reports_variants_beside_the_goal_arm():
    import argparse

    args = argparse.Namespace(requests=16, max_tokens=64, kv_memory=1 << 30, block_size=32,
                              max_num_seqs=16, repeat=1, order="vllm,kvsaga,kvsaga+X=1")
    table = serve_throughput._table(
        args, {"vllm": _result(100, 0.0), "kvsaga-serve:ttl": _result(120, 0.0),
               "kvsaga-serve:ttl X=1": _result(60, 0.0)}, "cmd")
    assert "kvsaga-serve / vLLM output tokens/s: **1.20x**" in table  # the plain arm judged
    assert "kvsaga-serve:ttl X=1, output tokens/s over: 0.60x vLLM, 0.50x kvsaga-serve" in table


def test_table_names_the_neighbours():
    import argparse

    args = argparse.Namespace(requests=8, max_tokens=96, kv_memory=1 << 30, block_size=32,
                              max_num_seqs=16, repeat=1, order="kvsaga", neighbours=1,
                              neighbour_duty=0.5, neighbour_delay=3.0)
    text = serve_throughput._table(args, {"kvsaga-serve:ttl": _result(120, 0.5)}, "cmd")
    assert "Beside 1 busy neighbour process(es) during each batch (busy 50% of each 100 ms, " \
           "from 3 s in)" in text
    args.neighbour_delay, args.neighbour_nice = 0.0, 19
    text = serve_throughput._table(args, {"kvsaga-serve:ttl": _result(120, 0.5)}, "cmd")
    assert "busy 50% of each 100 ms, at nice 19, from before its warm-up request" in text


def test_busy_neighbours_run_until_stopped_and_refuse_bad_settings():
    from replay.conditions import BusyNeighbours

    for bad in ((-1, 1.0, 0.0), (1, 0.0, 0.0), (1, 1.5, 0.0), (1, 1.0, -2.0),
                (1, 1.0, 0.0, 20), (1, 1.0, 0.0, -1)):
        with pytest.raises(ValueError, match="delay >= 0 and 0 <= nice <= 19"):
            BusyNeighbours(*bad)
    with BusyNeighbours(2, duty=0.5, nice=19) as n:
        procs = list(n.procs)
        assert len(procs) == 2
        # Each child lowers its own priority as it starts: wait for that (a loaded host can
        # take a while to run it), then check they all keep running.
        deadline = time.monotonic() + 30
        while (time.monotonic() < deadline
               and not all(os.getpriority(os.PRIO_PROCESS, p.pid) == 19 for p in procs)):
            time.sleep(0.05)
        assert all(os.getpriority(os.PRIO_PROCESS, p.pid) == 19 for p in procs)
        assert all(p.poll() is None for p in procs)
    assert n.procs == [] and all(p.returncode is not None for p in procs)


def test_table_under_a_cpu_quota_names_it_and_does_not_judge_the_goal():
    import argparse

    args = argparse.Namespace(requests=16, max_tokens=64, kv_memory=1 << 30, block_size=32,
                              max_num_seqs=16, repeat=1, order="vllm,kvsaga", cpu_quota=1.5)
    runs = {"vllm": {**_result(100, 0.0), "throttled_share": 0.8},
            "kvsaga-serve:ttl": {**_result(120, 0.0), "throttled_share": 0.25}}
    text = serve_throughput._table(args, runs, "cmd")
    assert "a CPU quota of 1.5 cores" in text and "not judged: under a CPU quota" in text
    header, sep, *rows = text.split("\n\n")[1].splitlines()
    assert header.count("|") == sep.count("|") == rows[0].count("|")
    assert "| 80% | 100.0 |" in rows[0] and "| 25% | 120.0 |" in rows[1]
    assert serve_throughput._throttled(
        {"periods": 10, "throttled": 2, "throttled_s": 0.5},
        {"periods": 30, "throttled": 12, "throttled_s": 1.5}) == {
            "throttled_share": 0.5, "throttled_s": 1.0}


def test_quota_group_throttles_a_busy_child_and_cleans_up():
    """A real cgroup with a quota of a twentieth of a core: a busy child moved in runs out of it
    in most periods; the cgroup is gone after. Skipped where no cgroup can be made."""
    import subprocess

    from replay.conditions import QuotaGroup

    with pytest.raises(ValueError, match="cores > 0"):
        QuotaGroup(0)
    try:
        group = QuotaGroup(0.05)
    except OSError as e:
        pytest.skip(f"no cgroup with a quota here: {e}")
    import signal

    # A child that starts a busy grandchild, as vLLM's API server starts its engine core.
    code = ("import subprocess, sys\n"
            "subprocess.Popen([sys.executable, '-c', 'while True: pass']).wait()")
    with group:
        child = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            inside: list[str] = []
            while len(inside) < 2 and time.monotonic() < deadline:  # the grandchild starts
                time.sleep(0.1)
                group.add_tree(child.pid)
                inside = (group.path / "cgroup.procs").read_text().split()
            # The busy grandchild runs out of its twentieth of a core within a few periods on an
            # idle host; a loaded one may give it less CPU than the quota for a while, so
            # read until a second of throttling has built up (or 30 s have passed).
            deadline = time.monotonic() + 30
            seen = group.throttling()
            while seen["throttled_s"] <= 0.3 and time.monotonic() < deadline:
                time.sleep(0.25)
                seen = group.throttling()
        finally:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert len(inside) == 2 and str(child.pid) in inside
    # Throttled periods are those where the group used its whole quota: on a loaded host the
    # child may get less than its fifth of a core in many periods, so the claim is that the
    # quota was enforced (several periods cut short, time held back), not in what share.
    assert seen["periods"] >= 5 and seen["throttled"] >= 3 and seen["throttled_s"] > 0.3, seen
    assert seen["throttled_s"] > 0.3 and not group.path.exists()
