"""Torch's thread count on a CPU that other jobs may share, adjusted while the engine runs.

A CPU engine's decode step is hundreds of small parallel ops, each ending at a barrier of
torch's OpenMP team. When another process holds one of the cores the team runs on, every
barrier waits for the thread that the kernel has descheduled, and a team sized for the whole
machine runs slower than a smaller one: on the 2-vCPU host beside one busy process, 8
concurrent requests decoded 1.37x faster on one thread than on two (docs/engine_profiles.md,
"Threads"). On a host of its own the same team is the fast choice. `ThreadGovernor` picks
between them at run time: it reads how much CPU other processes used on this process's cores
(`ForeignLoad`, from /proc/stat less this process's own CPU time) and takes threads off the
team for the cores they hold, never going above the count it was started with.

The rule (`threads_for`): a thread comes off the team for each core other processes hold,
where using three quarters of a core counts as holding it (`HELD`), and a change needs two
consecutive windows that both ask for fewer threads (or both for more), so one burst of
another job does not move it. Why three quarters and not a half (the first rule, rounding):
a neighbour using about half a core sat on the rounding edge, and the team flipped to one
thread and back, which cost more than sharing a core with it (bench/RESULTS.md, "kvsaga-serve
sizes its thread team to the cores other jobs leave"); a thread that shares its core with a
neighbour still does some of the work, so the team should shrink only once the neighbour
takes most of that core. Linux only (/proc/stat); elsewhere `ForeignLoad.open` returns None
and nothing is adjusted. It sees CPU time, not a cgroup's CPU quota.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# /proc/stat's per-CPU columns (USER_HZ ticks): user nice system idle iowait irq softirq
# steal [guest guest_nice]. Busy is every column but idle and iowait, steal included (the
# hypervisor gave the core to someone else); guest time is already inside user and nice.
# "nice" is user time of processes of lower priority (nice > 0): under the kernel's fair
# scheduler a nice-19 job gets about 1.5% of a core against a nice-0 thread, so it holds no
# core from a server at nice 0, and its time is not counted as busy then.
_IDLE_COLUMNS = (3, 4)
_NICE_COLUMN = 1
_BUSY_COLUMNS = 8
PERIOD_S = 1.0  # one window of the governor: how often it reads the load
HELD = 0.75  # the share of a core that other processes use when they hold it (`threads_for`)


class MissingCPU(ValueError):
    """/proc/stat has no line for a CPU of the set (gone offline since the affinity was
    read)."""


def cpu_seconds(stat: str, cpus: frozenset[int], tick_s: float,
                count_nice: bool = True) -> tuple[float, float]:
    """(busy, all) CPU seconds the CPUs `cpus` have spent since boot, from the text of
    /proc/stat: busy leaves out idle and iowait (and nice, unless `count_nice`); all counts
    every column.

    Raises:
        MissingCPU: a CPU of `cpus` has no line. ValueError: a line is not numbers.
    """
    skip = _IDLE_COLUMNS if count_nice else (*_IDLE_COLUMNS, _NICE_COLUMN)
    busy, total, seen = 0, 0, set()
    for line in stat.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        cpu = int(name[3:])
        if cpu not in cpus:
            continue
        fields = [int(x) for x in rest.split()][:_BUSY_COLUMNS]
        busy += sum(v for i, v in enumerate(fields) if i not in skip)
        total += sum(fields)
        seen.add(cpu)
    if seen != cpus:
        raise MissingCPU(f"/proc/stat has no line for CPU(s) {sorted(cpus - seen)}")
    return busy * tick_s, total * tick_s


class ForeignLoad:
    """Cores' worth of CPU that other processes used on this process's CPUs.

    Each `sample()` returns the average over the time since the previous one (`window_s`):
    the CPUs' busy time less this process's own CPU time (every thread of it), divided by
    the wall time. The first sample only starts the window (None). The CPU set is read
    again at every sample (`read_cpus`: the process's affinity, which taskset or a cpuset
    may change); a sample that finds it changed starts a new window instead (None).

    Args:
        read_cpus: the CPUs to watch.
        read_stat: returns /proc/stat's text.
        own_cpu_s: this process's CPU seconds (user + system, every thread).
        clock: seconds, monotonic.
        tick_s: seconds a /proc/stat tick stands for.
        count_nice: count lower-priority processes' time (the nice column) as busy: only
            for a process that runs niced itself (its own time lands there).
    """

    def __init__(self, read_cpus: Callable[[], frozenset[int]], read_stat: Callable[[], str],
                 own_cpu_s: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic, tick_s: float = 0.01,
                 count_nice: bool = False) -> None:
        self._count_nice = count_nice
        self._read_cpus = read_cpus
        self._read_stat = read_stat
        self._own_cpu_s = own_cpu_s
        self._clock = clock
        self._tick_s = tick_s
        self.cpus = self._cpus()
        self.window_s = 0.0  # the length of the last window read
        self._last: tuple[float, float, float, float] | None = None

    def _cpus(self) -> frozenset[int]:
        cpus = frozenset(self._read_cpus())
        if not cpus:
            raise ValueError("the CPU set must name at least one CPU")
        return cpus

    @classmethod
    def open(cls) -> ForeignLoad | None:
        """The load on this process's CPUs (its affinity), or None where it cannot be read
        (no /proc/stat, no affinity: not Linux)."""
        try:
            stat = Path("/proc/stat")
            load = cls(lambda: frozenset(os.sched_getaffinity(0)), stat.read_text,
                       tick_s=1.0 / os.sysconf("SC_CLK_TCK"),
                       count_nice=os.getpriority(os.PRIO_PROCESS, 0) > 0)
            load.sample()
        except (AttributeError, OSError, ValueError) as e:
            log.info("CPU threads stay fixed: the host's CPU load cannot be read (%s)", e)
            return None
        return load

    def sample(self) -> float | None:
        """Other processes' cores, averaged since the previous sample (>= 0); None on the
        first one, when no time has passed, or when the CPU set changed (a CPU that
        /proc/stat lacks, gone offline since the affinity was read, counts as a change).

        Raises:
            ValueError: the set is empty, a line is not numbers, or the counters did not
                move over a window of 0.1 s or more (a sandbox such as gVisor shows zeros).
            OSError: /proc/stat cannot be read.
        """
        cpus = self._cpus()
        changed, self.cpus = cpus != self.cpus, cpus
        try:
            busy, total = cpu_seconds(self._read_stat(), cpus, self._tick_s,
                                      self._count_nice)
        except MissingCPU:
            self._last = None
            return None
        now = (self._clock(), busy, self._own_cpu_s(), total)
        last, self._last = self._last, now
        if last is None or changed or now[0] <= last[0]:
            return None
        self.window_s = now[0] - last[0]
        if now[3] == last[3] and self.window_s >= 0.1:
            raise ValueError("/proc/stat's CPU counters did not move (a sandbox that shows "
                             "zeros?): other processes' load cannot be read")
        # Ticks are coarse (10 ms) against the process clock: clamp the difference at 0.
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / self.window_s)


def threads_for(cpus: int, foreign_cores: float, max_threads: int) -> int:
    """The team for `cpus` cores of which other processes use `foreign_cores`: one thread
    fewer for each core they hold (`HELD` of a core or more counts as a whole one), at least
    1 and at most `max_threads`."""
    held = math.floor(max(0.0, foreign_cores) + 1.0 - HELD)
    return max(1, min(max_threads, cpus - held))


class ThreadGovernor:
    """Sizes torch's thread team to the cores other processes leave (the module docstring).

    Call `poll()` from the thread that runs the model, between steps and while idle
    (torch.set_num_threads sets that thread's OpenMP team, and the count threads started
    later begin with); it reads the load once a `period_s` window has passed and changes
    the count when two consecutive windows both ask for fewer threads, or both for more, to
    the nearer of the two asks. An error reading the load or setting the count turns it
    off for good (`failed`), with one warning, and leaves the team as it is.

    Args:
        load: the load reader.
        max_threads: the most threads to use (the count the engine was started with).
        set_threads: sets the team's size (torch.set_num_threads, on the model's thread).
        period_s: seconds a window lasts.
        clock: seconds, monotonic (the load's clock should be the same).
    """

    def __init__(self, load: ForeignLoad, max_threads: int, set_threads: Callable[[int], None],
                 period_s: float = PERIOD_S, clock: Callable[[], float] = time.monotonic) -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, got {max_threads}")
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        self.load = load
        self.max_threads = max_threads
        self.threads = max_threads  # the count in force
        self.foreign_cores = 0.0  # the last window's reading
        self.changes = 0
        self.failed: str | None = None  # why it stopped, once an error turned it off
        self._set = set_threads
        self._period_s = period_s
        self._clock = clock
        self._next = clock() + period_s
        self._asked: int | None = None  # the previous window's count, when it differed

    def poll(self) -> int | None:
        """Read the load if a window has passed; returns the new thread count when it
        changed, else None."""
        if self.failed is not None:
            return None
        now = self._clock()
        if now < self._next:
            return None
        self._next = now + self._period_s
        try:
            return self._decide()
        except Exception as e:  # the server goes on with the team it has
            self.failed = f"{type(e).__name__}: {e}"
            log.warning("CPU threads stay at %d from now on: %s", self.threads, self.failed)
            return None

    def _decide(self) -> int | None:
        foreign = self.load.sample()
        if foreign is None:  # no window read: an ask from before it pairs with nothing
            self._asked = None
            return None
        self.foreign_cores = foreign
        want = threads_for(len(self.load.cpus), foreign, self.max_threads)
        asked, self._asked = self._asked, None
        if want == self.threads:
            return None
        if asked is None or (asked < self.threads) != (want < self.threads):
            self._asked = want  # the first window to ask this way: wait for a second
            return None
        new = max(want, asked) if want < self.threads else min(want, asked)
        self._set(new)
        log.info("CPU threads %d -> %d: other processes used %.2f of %d cores over the last "
                 "%.1f s", self.threads, new, foreign, len(self.load.cpus),
                 self.load.window_s)
        self.threads = new
        self.changes += 1
        return new


def governor_for(device_type: str) -> ThreadGovernor | None:
    """The governor an engine on `device_type` runs under: one for a CPU engine when
    KVSAGA_CPU_THREADS is "adaptive" and the load can be read, else None. Call it on the
    thread that runs the model (its torch thread count is the one governed).

    Raises:
        ValueError: KVSAGA_CPU_THREADS is not "fixed" or "adaptive".
    """
    from kvsaga import envs

    if envs.KVSAGA_CPU_THREADS != "adaptive" or device_type != "cpu":
        return None
    load = ForeignLoad.open()
    if load is None:
        return None
    import torch

    return ThreadGovernor(load, torch.get_num_threads(), torch.set_num_threads)
