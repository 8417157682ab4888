"""kvsaga.engine.cpu_threads: the load other processes put on this process's CPUs, read
from /proc/stat, and the governor that sizes torch's team to the cores they leave."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvsaga.engine import cpu_threads
from kvsaga.engine.cpu_threads import (
    ForeignLoad,
    MissingCPU,
    ThreadGovernor,
    cpu_seconds,
    threads_for,
)


def stat_text(busy: dict[int, int], idle: dict[int, int] | None = None,
              nice: dict[int, int] | None = None) -> str:
    """/proc/stat with CPUs 0-3, CPU n busy `busy[n]` ticks in all (split over user, system
    and steal), niced `nice[n]` (default 0), idle `idle[n]` (default 1000) and waiting on
    I/O 7."""
    idle, nice = idle or {}, nice or {}
    lines = ["cpu  1 2 3 4 5 6 7 8 0 0"]
    for cpu in range(4):
        b = busy.get(cpu, 0)
        user, system, steal = b - b // 2, b // 4, b // 2 - b // 4
        lines.append(f"cpu{cpu} {user} {nice.get(cpu, 0)} {system} {idle.get(cpu, 1000)} 7 0 0 "
                     f"{steal} 5 0")
    lines += ["intr 12345 0 0", "ctxt 999", "btime 1700000000"]
    return "\n".join(lines) + "\n"


def test_cpu_seconds_count_the_chosen_cpus_busy_and_in_all():
    text = stat_text({0: 100, 1: 40, 2: 1000})
    busy, total = cpu_seconds(text, frozenset({0, 1}), tick_s=0.01)
    assert busy == pytest.approx(1.40) and total == pytest.approx(1.40 + 2 * 10.07)
    assert cpu_seconds(text, frozenset({2}), tick_s=0.01)[0] == pytest.approx(10.0)
    with pytest.raises(MissingCPU, match=r"no line for CPU\(s\) \[7\]"):
        cpu_seconds(text, frozenset({0, 7}), tick_s=0.01)


def test_niced_time_is_busy_only_when_asked():
    """Lower-priority processes (nice > 0) hold no core from a nice-0 server: their column
    counts as busy only for a server that runs niced itself."""
    text = stat_text({0: 100}, nice={0: 300})
    assert cpu_seconds(text, frozenset({0}), 0.01, count_nice=False)[0] == pytest.approx(1.0)
    assert cpu_seconds(text, frozenset({0}), 0.01, count_nice=True)[0] == pytest.approx(4.0)
    assert cpu_seconds(text, frozenset({0}), 0.01)[1] == pytest.approx(4.0 + 10.07)


class Host:
    """A scripted host: wall clock, per-CPU busy ticks and this process's CPU seconds."""

    def __init__(self) -> None:
        self.now = 0.0
        self.ticks = {0: 0, 1: 0}
        self.idle = {0: 0, 1: 0}
        self.own = 0.0
        self.cpus = frozenset({0, 1})  # the process's affinity

    def run(self, seconds: float, foreign: float, own: float) -> None:
        """`seconds` pass with other processes using `foreign` cores and this one `own`,
        spread over CPUs 0 and 1 (100 ticks a second)."""
        self.now += seconds
        per_cpu = round((foreign + own) * seconds * 100 / 2)
        for cpu in self.ticks:
            self.ticks[cpu] += per_cpu
            self.idle[cpu] += round(seconds * 100) - per_cpu
        self.own += own * seconds

    def load(self) -> ForeignLoad:
        return ForeignLoad(lambda: self.cpus, lambda: stat_text(self.ticks, self.idle),
                           own_cpu_s=lambda: self.own, clock=lambda: self.now)


def test_foreign_load_is_the_cpus_busy_time_less_this_process_own():
    host = Host()
    load = host.load()
    assert load.sample() is None  # the first read starts the window
    host.run(2.0, foreign=0.9, own=1.1)
    assert load.sample() == pytest.approx(0.9)
    assert load.sample() is None  # no time passed
    host.run(1.0, foreign=0.0, own=2.0)
    assert load.sample() == pytest.approx(0.0) and load.window_s == 1.0
    host.cpus = frozenset({0})  # taskset moved the process: a new window starts
    host.run(1.0, foreign=0.0, own=0.5)
    assert load.sample() is None and load.cpus == {0}
    host.run(1.0, foreign=0.6, own=0.0)
    assert load.sample() == pytest.approx(0.3)  # CPU 0's half of the 0.6 cores
    with pytest.raises(ValueError, match="at least one CPU"):
        ForeignLoad(frozenset, lambda: "")


def _beside_busy_child(code: str, loads: list[ForeignLoad]) -> tuple[list[float | None], float]:
    """Each load's reading over one 0.8 s window while a child runs `code` (a busy loop),
    and the cores the child used over it (its own CPU time, /proc/PID/stat). Skips where
    /proc/stat shows zeros (a sandbox)."""
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.2)  # the child's start-up
        start, t0 = _cpu_s(child.pid), time.monotonic()
        for load in loads:
            load.sample()
        time.sleep(0.8)
        try:
            readings = [load.sample() for load in loads]
        except ValueError as e:  # a sandbox's /proc/stat with zeros
            pytest.skip(str(e))
        return readings, (_cpu_s(child.pid) - start) / (time.monotonic() - t0)
    finally:
        child.kill()
        child.wait()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (/proc/PID/stat)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_niced_job_on_this_host_is_not_counted():
    """The same window read with and without the nice column differs by at least what a
    nice-19 busy child used: its time lands in that column. (On a host busy with nice-0 work
    the child gets almost nothing, and the check with it; other niced jobs on the host land
    in the column too, so the difference is bounded below only: a CI run beside a niced
    simulation read 1.18 cores of difference against the child's own share.)"""
    import os

    if ForeignLoad.open() is None:
        pytest.skip("no /proc/stat here")
    cpus = lambda: frozenset(os.sched_getaffinity(0))  # noqa: E731
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    loads = [ForeignLoad(cpus, Path("/proc/stat").read_text, tick_s=tick, count_nice=c)
             for c in (False, True)]
    (without, with_nice), used = _beside_busy_child(
        "import os\nos.nice(19)\nwhile True: pass", loads)
    assert used - 0.15 <= with_nice - without <= len(cpus()) + 0.15


def _window_with_child_cpu(load: ForeignLoad, cpu_s: float, bound_s: float = 120.0
                           ) -> tuple[float | None, float]:
    """`load`'s reading over one window inside which a busy child used at least `cpu_s` CPU
    seconds, and the child's CPU seconds counted inside it. The window lasts as long as
    the child needs, so the host's load changes its length, not the check (a fixed 0.8 s
    window gave the child 0.07 cores at a load average of 23 on 2 cores). Skips where
    /proc/stat shows zeros (a sandbox)."""
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        load.sample()  # the window opens before the child's count starts ...
        start = _cpu_s(child.pid)
        deadline = time.monotonic() + bound_s
        while (used := _cpu_s(child.pid) - start) < cpu_s:
            assert time.monotonic() < deadline, f"the child used {used} CPU-s in {bound_s} s"
            time.sleep(0.05)
        try:
            return load.sample(), used  # ... and closes after it ends
        except ValueError as e:  # a sandbox's /proc/stat with zeros
            pytest.skip(str(e))
    finally:
        child.kill()
        child.wait()


def test_open_reads_this_host_in_cores():
    """The real reader, its tick unit included: over a window, the reading covers a busy
    child's own CPU time, and no more than the CPUs can hold; other jobs on a loaded host
    only add to it."""
    load = ForeignLoad.open()
    if load is None:
        pytest.skip("no /proc/stat here")
    cores, used = _window_with_child_cpu(load, cpu_s=0.4)
    assert cores is not None and used >= 0.4
    # In CPU seconds over the window (its length is the host's business): ticks are 10 ms
    # per CPU at each end, hence the 0.1 s.
    assert used - 0.1 <= cores * load.window_s
    assert cores <= len(load.cpus) + 0.1


@pytest.mark.parametrize(("cpus", "foreign", "most", "want"), [
    (2, 0.0, 2, 2), (2, 0.3, 2, 2), (2, 0.5, 2, 2), (2, 0.74, 2, 2), (2, 0.75, 2, 1),
    (2, 0.86, 2, 1), (2, 1.0, 2, 1), (2, 2.0, 2, 1), (16, 3.2, 16, 13), (16, 3.8, 16, 12),
    (16, 0.0, 4, 4), (16, 12.6, 4, 4), (16, 12.8, 4, 3)])
def test_a_thread_comes_off_for_each_core_others_hold(cpus, foreign, most, want):
    """Holding a core: using three quarters of it or more (cpu_threads.HELD); the team stays
    within 1 and the start count."""
    assert threads_for(cpus, foreign, most) == want


def _on(host: Host, max_threads: int) -> tuple[ThreadGovernor, list[int]]:
    """A governor on `host`'s load and clock, its first window started; and the counts it
    sets, in order."""
    sets: list[int] = []
    gov = ThreadGovernor(host.load(), max_threads, sets.append, clock=lambda: host.now)
    gov.load.sample()
    return gov, sets


def test_the_governor_changes_the_team_after_two_windows_that_agree():
    host = Host()
    gov, sets = _on(host, 2)
    assert gov.poll() is None  # inside the first window: nothing read
    host.run(1.0, foreign=0.9, own=1.1)  # a neighbour arrives
    assert gov.poll() is None and gov.foreign_cores == pytest.approx(0.9)  # one window
    host.run(1.0, foreign=0.1, own=1.9)  # it was a burst
    assert gov.poll() is None
    host.run(1.0, foreign=0.95, own=1.0)
    assert gov.poll() is None
    host.run(1.0, foreign=1.0, own=1.0)  # second window in a row that asks for 1
    assert gov.poll() == 1 and gov.threads == 1 and sets == [1]
    host.run(1.0, foreign=1.0, own=1.0)
    assert gov.poll() is None  # already there
    host.run(1.0, foreign=0.05, own=1.0)  # the neighbour leaves
    assert gov.poll() is None
    host.run(1.0, foreign=0.0, own=1.0)
    assert gov.poll() == 2 and sets == [1, 2] and gov.changes == 2


class Scripted:
    """A load reader on `cpus` CPUs that returns `values` in turn (an exception is raised)."""

    def __init__(self, cpus: int, values: list) -> None:
        self.cpus = frozenset(range(cpus))
        self.values = list(values)
        self.window_s = 1.0

    def sample(self):
        v = self.values.pop(0)
        if isinstance(v, BaseException):
            raise v
        return v


def _governor(load, max_threads: int, sets: list[int]) -> tuple[ThreadGovernor, list[float]]:
    clock = [0.0]
    gov = ThreadGovernor(load, max_threads, sets.append, clock=lambda: clock[0])
    return gov, clock


def _windows(gov: ThreadGovernor, clock: list[float], n: int) -> list[int | None]:
    out = []
    for _ in range(n):
        clock[0] += 1.0
        out.append(gov.poll())
    return out


def test_two_windows_that_ask_the_same_way_move_to_the_nearer_ask():
    # 16 cores, a neighbour of 3.4 then 3.8 cores: asks of 13 and 12, both below 16.
    sets: list[int] = []
    gov, clock = _governor(Scripted(16, [3.4, 3.8, 3.4, 3.4, 0.2, 2.0]), 16, sets)
    assert _windows(gov, clock, 2) == [None, 13]
    assert _windows(gov, clock, 2) == [None, None]  # 13 asked twice: already there
    # Then asks of 16 and 14, both above 13: up to 14, the nearer.
    assert _windows(gov, clock, 2) == [None, 14] and sets == [13, 14]


def test_an_error_turns_the_governor_off_and_keeps_the_team(caplog):
    sets: list[int] = []
    gov, clock = _governor(Scripted(2, [1.0, OSError("too many open files"), 1.0]), 2, sets)
    with caplog.at_level("WARNING"):
        assert _windows(gov, clock, 3) == [None, None, None]
    assert gov.failed == "OSError: too many open files" and gov.threads == 2 and sets == []
    assert "CPU threads stay at 2 from now on: OSError" in caplog.text

    def refuse(n: int) -> None:
        raise RuntimeError("no")

    gov = ThreadGovernor(Scripted(2, [1.0, 1.0]), 2, refuse, clock=lambda: clock[0])
    assert _windows(gov, clock, 2) == [None, None]
    assert gov.failed == "RuntimeError: no" and gov.threads == 2


def test_a_cpu_missing_from_proc_stat_starts_a_new_window_and_drops_the_ask():
    host = Host()
    gov, sets = _on(host, 2)
    host.run(1.0, foreign=1.0, own=1.0)
    assert gov.poll() is None  # asks for 1 thread once
    host.cpus = frozenset({0, 1, 7})  # CPU 7 went offline after the affinity was read
    host.run(1.0, foreign=1.0, own=1.0)
    assert gov.poll() is None and gov.failed is None
    host.cpus = frozenset({0, 1})
    host.run(1.0, foreign=1.0, own=1.0)
    assert gov.poll() is None  # a new window starts: the earlier ask pairs with nothing
    host.run(1.0, foreign=1.0, own=1.0)
    assert gov.poll() is None  # the first ask of the new windows
    host.run(1.0, foreign=1.0, own=1.0)
    assert gov.poll() == 1 and sets == [1]


def test_counters_that_do_not_move_turn_the_governor_off():
    """A sandbox (gVisor) shows /proc/stat with zeros: nothing can be read, so nothing is
    decided on a reading of 0."""
    now = [0.0]
    load = ForeignLoad(lambda: frozenset({0, 1}), lambda: stat_text({}, {0: 0, 1: 0}),
                       own_cpu_s=lambda: 0.0, clock=lambda: now[0])
    gov = ThreadGovernor(load, 2, lambda n: None, clock=lambda: now[0])
    load.sample()
    now[0] += 1.0
    assert gov.poll() is None
    assert gov.failed is not None and "did not move" in gov.failed


def test_fewer_then_more_is_no_change():
    sets: list[int] = []
    gov, clock = _governor(Scripted(16, [3.0, 0.0, 3.0, 3.0]), 16, sets)
    assert _windows(gov, clock, 2) == [None, None]  # 13, then 16 (the current count)
    assert _windows(gov, clock, 2) == [None, 13] and sets == [13]
    gov, clock = _governor(Scripted(16, [3.0, 3.0, 0.2, 6.0, 0.2, 0.2]), 16, sets)
    assert _windows(gov, clock, 2) == [None, 13]
    assert _windows(gov, clock, 2) == [None, None]  # up to 16, then down to 10: no change
    assert _windows(gov, clock, 2) == [None, 16] and sets == [13, 13, 16]


def test_the_governor_never_goes_above_its_start_count():
    host = Host()
    gov, sets = _on(host, 1)
    for _ in range(4):
        host.run(1.0, foreign=0.0, own=1.0)
        assert gov.poll() is None
    assert sets == [] and gov.threads == 1
    with pytest.raises(ValueError, match="max_threads"):
        ThreadGovernor(host.load(), max_threads=0, set_threads=sets.append)
    with pytest.raises(ValueError, match="period_s"):
        ThreadGovernor(host.load(), max_threads=2, set_threads=sets.append, period_s=0)


def test_governor_only_for_a_cpu_engine_under_adaptive(monkeypatch: pytest.MonkeyPatch):
    # No CPU quota here, whatever this host has (tests/engine/test_cpu_quota.py).
    monkeypatch.setattr(cpu_threads.CpuQuota, "read", lambda self: None)
    monkeypatch.delenv("KVSAGA_CPU_THREADS", raising=False)
    assert cpu_threads.governor_for("cpu") == (None, None)  # fixed by default
    monkeypatch.setenv("KVSAGA_CPU_THREADS", "adaptive")
    assert cpu_threads.governor_for("cuda") == (None, None)
    gov, bound = cpu_threads.governor_for("cpu")
    assert bound is None
    if ForeignLoad.open() is None:  # not Linux: nothing to read, nothing governed
        assert gov is None
    else:
        import torch

        assert gov is not None and gov.threads == torch.get_num_threads()
        assert gov.max_threads == max(cpu_threads.team_ceiling(), gov.threads)
    monkeypatch.setenv("KVSAGA_CPU_THREADS", "sometimes")
    with pytest.raises(ValueError, match="KVSAGA_CPU_THREADS='sometimes'"):
        cpu_threads.governor_for("cpu")


def test_no_proc_stat_means_no_governor(monkeypatch: pytest.MonkeyPatch):
    def missing(self):
        raise FileNotFoundError("/proc/stat")

    monkeypatch.setattr(cpu_threads.Path, "read_text", missing)
    assert ForeignLoad.open() is None
    monkeypatch.setenv("KVSAGA_CPU_THREADS", "adaptive")
    assert cpu_threads.governor_for("cpu")[0] is None


def test_the_ceiling_is_the_count_before_kvsaga_changed_it(monkeypatch: pytest.MonkeyPatch):
    """Not torch's count when a governor starts: an engine before it may have lowered that
    (for every thread started later), and the next engine kept it as its ceiling for good."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(cpu_threads, "_untouched", None)  # a process kvsaga never changed
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(3)
        assert cpu_threads.team_ceiling() == 3
        torch.set_num_threads(1)  # what a governor that shrank the team left behind
        assert cpu_threads.team_ceiling() == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "2,1")  # the outermost team's count
        assert cpu_threads.team_ceiling() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "many")
        assert cpu_threads.team_ceiling() == 3
    finally:
        torch.set_num_threads(before)
