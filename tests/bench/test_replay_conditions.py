"""bench/replay/conditions.py: the machine's and the server tree's times over a round, read
from /proc and sysfs (here from fake trees), `--idle-spinners`' processes, and
bench/wake_latency.py's probe."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from replay import conditions as c  # noqa: E402

STAT = ("cpu  100 20 30 400 10 0 5 35 0 0\n"
        "cpu0 50 10 15 200 5 0 2 18 0 0\nbtime 1\n")


def test_machine_times_reads_the_all_cpu_line_in_seconds() -> None:
    hz = os.sysconf("SC_CLK_TCK")
    got = c.machine_times(STAT)
    assert got == {k: v / hz for k, v in zip(c.STAT_FIELDS, (100, 20, 30, 400, 10, 0, 5, 35),
                                              strict=True)}


def _state(root: Path, cpu: int, i: int, name: str, usage: int) -> None:
    d = root / f"cpu{cpu}" / "cpuidle" / f"state{i}"
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "usage").write_text(f"{usage}\n")


def test_cpuidle_entries_sum_every_cpus_non_polling_states(tmp_path: Path) -> None:
    assert c.cpuidle_entries(tmp_path) is None  # no cpuidle at all
    _state(tmp_path, 0, 0, "POLL", 1000)
    assert c.cpuidle_entries(tmp_path) is None  # polling only: nothing halts
    _state(tmp_path, 0, 1, "haltpoll idle", 7)
    _state(tmp_path, 1, 0, "POLL", 5)
    _state(tmp_path, 1, 1, "C1", 4)
    assert c.cpuidle_entries(tmp_path) == 11


def _proc(root: Path, pid: int, ppid: int, comm: str, threads: dict[int, tuple]) -> None:
    d = root / str(pid)
    (d / "task").mkdir(parents=True)
    (d / "stat").write_text(f"{pid} ({comm}) S {ppid} 1 1 0 -1\n")
    for tid, (run_ns, wait_ns, vol, inv) in threads.items():
        t = d / "task" / str(tid)
        t.mkdir()
        (t / "schedstat").write_text(f"{int(run_ns)} {int(wait_ns)} 9\n")
        (t / "status").write_text(f"Name:\tx\nvoluntary_ctxt_switches:\t{vol}\n"
                                  f"nonvoluntary_ctxt_switches:\t{inv}\n")


def test_process_times_and_tree_sum_threads_and_children(tmp_path: Path) -> None:
    _proc(tmp_path, 10, 1, "kvsaga serve", {10: (2e9, 1e9, 5, 1), 11: (3e9, 0.5e9, 7, 2)})
    _proc(tmp_path, 12, 10, "child) x", {12: (1e9, 0, 1, 0)})  # ")" in its name
    _proc(tmp_path, 13, 1, "other", {13: (9e9, 9e9, 9, 9)})
    (tmp_path / "self").mkdir()  # not a pid: skipped
    assert c.process_times(10, tmp_path) == {"cpu_s": 5.0, "runqueue_s": 1.5,
                                             "voluntary_switches": 12,
                                             "involuntary_switches": 3}
    assert c.process_times(99, tmp_path) == {}
    (tmp_path / "14" / "task" / "14").mkdir(parents=True)  # no schedstat: not measured
    assert c.process_times(14, tmp_path) == {}
    assert c.process_tree(10, tmp_path) == [10, 12]
    assert c.process_tree(99, tmp_path) == []


def test_tree_delta_counts_a_process_started_since_whole() -> None:
    before = {10: {"cpu_s": 1.0, "voluntary_switches": 4}, 11: {"cpu_s": 5.0}}
    after = {10: {"cpu_s": 3.5, "voluntary_switches": 10}, 12: {"cpu_s": 2.0}}
    assert c.tree_delta(before, after) == {"cpu_s": 4.5, "voluntary_switches": 6}


def test_round_conditions_split_the_machines_time() -> None:
    machine = {"user": 50.0, "nice": 10.0, "system": 10.0, "idle": 15.0, "iowait": 5.0,
               "irq": 0.0, "softirq": 0.0, "steal": 10.0, "halts": 300}
    server = {"cpu_s": 30.0, "runqueue_s": 4.0, "voluntary_switches": 1000,
              "involuntary_switches": 20}
    got = c.round_conditions(machine, server, wall_s=50.0)
    assert got["machine_idle_share"] == pytest.approx(0.2)
    assert got["machine_steal_share"] == pytest.approx(0.1)
    assert got["machine_other_busy_share"] == pytest.approx(0.4)
    spun = c.round_conditions(machine, server, wall_s=50.0, spinners_cpu_s=15.0)
    assert spun["machine_spinners_share"] == pytest.approx(0.15)
    assert spun["machine_other_busy_share"] == pytest.approx(0.25)
    assert "idle spinners 15%, others 25%" in c.conditions_text(spun)
    assert got["halts_per_s"] == pytest.approx(6.0)
    assert got["server_cpu_s"] == 30.0 and got["server_involuntary_switches"] == 20
    text = c.conditions_text(got)
    assert text == ("idle 20%, steal 10%, others 40%; 6 halts/s; server 30.0 CPU-s, run "
                    "queue 4.0 s, switches 1,000 + 20 forced")
    assert c.conditions_text({}) == ""
    no_server = c.round_conditions(machine, {}, wall_s=50.0)
    assert c.conditions_text(no_server).endswith("; 6 halts/s; server n/a")


LINUX_ONLY = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's SCHED_IDLE only")


def _gone(pid: int) -> bool:
    """No such process (an unreaped zombie of ours counts as gone: it spins no more)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


@LINUX_ONLY
def test_idle_spinners_run_idle_class_one_per_cpu_and_stop() -> None:
    cpus = sorted(os.sched_getaffinity(0))[:1]
    with c.IdleSpinners(cpus) as spin:
        (p,) = spin.procs
        # start returned: the spinner already runs idle-class on its CPU
        assert os.sched_getscheduler(p.pid) == os.SCHED_IDLE
        assert os.sched_getaffinity(p.pid) == set(cpus)
        assert p.poll() is None
        assert sorted(c.RUNNING_SPINNERS) == [p.pid]
        deadline = time.monotonic() + 30  # a correctness wait: the spinner gets CPU time
        while c.spinners_cpu_s() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.spinners_cpu_s() > 0
    assert spin.procs == [] and p.poll() is not None and not c.RUNNING_SPINNERS
    assert c.spinners_cpu_s() == 0


@LINUX_ONLY
def test_a_spinner_that_fails_stops_the_others_and_names_its_cpu() -> None:
    good = sorted(os.sched_getaffinity(0))[0]
    spin = c.IdleSpinners([good, 100_000])
    with pytest.raises(SystemExit, match="CPU 100000 exited .*before it ran SCHED_IDLE"):
        spin.start()
    assert spin.procs == [] and not c.RUNNING_SPINNERS


SIGTERMED = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from replay import conditions as c
with c.sigterm_exits(), c.IdleSpinners(sorted(os.sched_getaffinity(0))[:1]) as spin:
    print(" ".join(str(p.pid) for p in spin.procs), flush=True)
    time.sleep(600)
"""


@LINUX_ONLY
@pytest.mark.parametrize("handled", [True, False])
def test_spinners_die_with_a_sigtermed_parent(handled: bool) -> None:
    """SIGTERM with `sigterm_exits`: `stop` runs; without it (or SIGKILL) the parent runs
    nothing, and each spinner notices its parent is gone and exits by itself."""
    import signal
    import subprocess

    code = SIGTERMED if handled else SIGTERMED.replace("c.sigterm_exits(), ", "")
    bench = str(Path(__file__).resolve().parents[2] / "bench")
    parent = subprocess.Popen([sys.executable, "-c", code, bench], stdout=subprocess.PIPE,
                              text=True)
    try:
        pids = [int(x) for x in parent.stdout.readline().split()]
        assert pids and not any(_gone(p) for p in pids)
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=60)
        deadline = time.monotonic() + 60  # a correctness wait, not a timing bound
        while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(p) for p in pids)
        assert parent.returncode == (143 if handled else -signal.SIGTERM)
    finally:
        parent.kill()
        parent.wait()


@LINUX_ONLY
def test_a_spinner_that_gets_no_cpu_dies_with_its_parent() -> None:
    """SIGSTOP stands in for a machine too busy to give an idle-class spinner any CPU (CI:
    60 s after its parent died, beside two busy loops, it had not run its own check once).
    The kernel kills it with its parent (PR_SET_PDEATHSIG), stopped or not; before, it
    stayed until it got CPU again."""
    import contextlib
    import signal
    import subprocess

    code = SIGTERMED.replace("c.sigterm_exits(), ", "")
    bench = str(Path(__file__).resolve().parents[2] / "bench")
    parent = subprocess.Popen([sys.executable, "-c", code, bench], stdout=subprocess.PIPE,
                              text=True)
    pids: list[int] = []
    try:
        pids = [int(x) for x in parent.stdout.readline().split()]
        assert pids and not any(_gone(p) for p in pids)
        for p in pids:
            os.kill(p, signal.SIGSTOP)
        parent.kill()
        parent.wait(timeout=60)
        deadline = time.monotonic() + 60  # a correctness wait, not a timing bound
        while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(p) for p in pids)
    finally:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        parent.kill()
        parent.wait()


def test_wake_latency_probe_times_every_trip_and_writes_its_figures(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.bench_scripts import load_bench

    mod = load_bench("wake_latency")
    rtt = mod.ping_pong(50, 0.0)
    assert len(rtt) == 50 and all(x > 0 for x in rtt)
    assert mod.summary([4.0, 1.0, 3.0, 2.0]) == {"mean_us": 2.5, "median_us": 2.5,
                                                 "p90_us": 3.0, "p99_us": 3.0}
    out = tmp_path / "wake.json"
    assert mod.main(["--trips", "20", "--work-us", "5", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["trips"] == 20 and got["idle_spinners"] is False
    assert got["median_us"] > 0 and 0 <= got["machine_idle_share"] <= 1
    assert "n/a" not in capsys.readouterr().out
    monkeypatch.setattr(mod, "machine_times", dict)  # no /proc/stat: not measured
    assert mod.main(["--trips", "5", "--work-us", "0"]) == 0
    assert "machine idle n/a, steal n/a" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--trips"):
        mod.main(["--trips", "0"])


@LINUX_ONLY
def test_wake_latency_counts_the_spinners_apart(tmp_path: Path) -> None:
    from tests.bench_scripts import load_bench

    out = tmp_path / "wake.json"
    assert load_bench("wake_latency").main(["--trips", "200", "--work-us", "200",
                                            "--idle-spinners", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["idle_spinners"] is True and not c.RUNNING_SPINNERS
    assert 0 <= got["machine_spinners_share"] <= 1  # present: their CPU time was passed
    assert got["machine_idle_share"] + got["machine_spinners_share"] <= 1 + 1e-9


def test_ping_pong_child_exits_when_the_parent_stops_early(monkeypatch) -> None:
    """The parent failing mid-run closes its pipe ends and reaps the echo: no hang."""
    from tests.bench_scripts import load_bench

    mod = load_bench("wake_latency")
    calls = 0
    real = mod.time.perf_counter
    me = threading.get_ident()

    def failing() -> float:  # `time` is the process's module: other threads call it too
        nonlocal calls
        if threading.get_ident() != me:  # (one an earlier test left running got the Ctrl-C)
            return real()
        calls += 1
        if calls > 20:
            raise KeyboardInterrupt
        return real()

    forked = []

    def fork() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    real_fork = os.fork
    monkeypatch.setattr(mod.os, "fork", fork)
    monkeypatch.setattr(mod.time, "perf_counter", failing)
    with pytest.raises(KeyboardInterrupt):
        mod.ping_pong(1000, 0.0)
    monkeypatch.undo()
    (pid,) = forked
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # the echo was reaped
