"""Torch's thread count on a CPU that other jobs may share, adjusted while the engine runs.

A CPU engine's decode step is hundreds of small parallel ops, each ending at a barrier of
torch's OpenMP team. When another process holds one of the cores the team runs on, every
barrier waits for the thread that the kernel has descheduled, and a team sized for the whole
machine runs slower than a smaller one: on the 2-vCPU host beside one busy process, 8
concurrent requests decoded 1.37x faster on one thread than on two (docs/engine_profiles.md,
"Threads"). On a host of its own the same team is the fast choice. `ThreadGovernor` picks
between them at run time: it reads how much CPU other processes used on this process's cores
(`ForeignLoad`, from /proc/stat less this process's own CPU time) and takes threads off the
team for the cores they hold, never going above its ceiling (`team_ceiling`).

The rule (`threads_for`): a thread comes off the team for each core other processes hold,
where using three quarters of a core counts as holding it (`HELD`), and a change needs two
consecutive windows that both ask for fewer threads (or both for more), so one burst of
another job does not move it. Why three quarters and not a half (the first rule, rounding):
a neighbour using about half a core sat on the rounding edge, and the team flipped to one
thread and back, which cost more than sharing a core with it (bench/RESULTS.md, "kvsaga-serve
sizes its thread team to the cores other jobs leave"); a thread that shares its core with a
neighbour still does some of the work, so the team should shrink only once the neighbour
takes most of that core. Linux only (/proc/stat); elsewhere `ForeignLoad.open` returns None
and nothing is adjusted.

A container's CPU limit is the other case (`CpuQuota`): `docker run --cpus 2` or a
Kubernetes CPU limit is a quota of CPU time per period (CFS bandwidth), not fewer cores, so
the affinity, and with it torch's default team, still spans every core of the host. A team
much wider than the quota spends it in a fraction of each period and is then stopped, all of
it, until the next. So the team never exceeds the quota's cores rounded up
(`quota_threads`, at least 1): at the engine's start in either mode unless OMP_NUM_THREADS
says otherwise (`governor_for`), and in every window under the governor, which follows a
quota changed while it runs (a resized pod).
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


def _unescape(field: str) -> str:
    """A /proc/self/mountinfo path field: space, tab, newline and backslash come as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def cgroup_cpu_dirs(cgroup: str, mountinfo: str) -> list[tuple[str, Path]]:
    """The cgroup directories whose CPU limit binds a process, from its own cgroup up to each
    hierarchy's root, each with its version ("v1": cpu.cfs_quota_us, "v2": cpu.max), from the
    text of its /proc/PID/cgroup and /proc/PID/mountinfo.

    A process's cgroup path is relative to its hierarchy's root; a mount shows the part of
    the hierarchy under its `root` field (a container's own cgroup, or "/"). A path outside
    the mount's root (a sibling of it, or a process moved out of its cgroup namespace's root:
    a path with "..") is not in what the mount shows, so that hierarchy gives no directory
    (none of the mount's directories is known to be an ancestor).
    """
    paths: dict[str, str] = {}
    for line in cgroup.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        if fields[0] == "0" and not fields[1]:
            paths["v2"] = fields[2]
        elif "cpu" in fields[1].split(","):
            paths["v1"] = fields[2]
    dirs: list[tuple[str, Path]] = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        mount_fields, fs_fields = left.split(), right.split()
        if not sep or len(mount_fields) < 5 or len(fs_fields) < 3:
            continue
        fstype, options = fs_fields[0], fs_fields[2].split(",")
        version = ("v2" if fstype == "cgroup2"
                   else "v1" if fstype == "cgroup" and "cpu" in options else None)
        if version is None or version not in paths:
            continue
        root = _unescape(mount_fields[3]).rstrip("/")
        mount = Path(_unescape(mount_fields[4]))
        path = paths[version]
        if ".." in path.split("/") or not (path == root or path.startswith(root + "/")):
            continue
        rel = path[len(root):].strip("/")
        d = mount / rel if rel else mount
        while True:
            if (version, d) not in dirs:
                dirs.append((version, d))
            if d == mount:
                break
            d = d.parent
    return dirs


def _read_limit(version: str, d: Path) -> float | None:
    """The cores the cgroup at `d` may use (quota / period), or None where it sets no limit
    (or has no such files, the controller not being enabled there, or they cannot be read:
    an ancestor's files may be closed to this process, and the other levels still count).

    Raises:
        ValueError: a file that is not numbers.
    """
    try:
        if version == "v2":
            quota, _, period = (d / "cpu.max").read_text().strip().partition(" ")
            if quota == "max":
                return None
        else:
            quota = (d / "cpu.cfs_quota_us").read_text().strip()
            period = (d / "cpu.cfs_period_us").read_text().strip()
            if int(quota) < 0:
                return None
    except (FileNotFoundError, PermissionError):
        return None
    if int(period) <= 0 or int(quota) <= 0:
        raise ValueError(f"{d}: quota {quota!r} over period {period!r} is not a limit")
    return int(quota) / int(period)


class CpuQuota:
    """The CPU bandwidth limit (CFS quota) of the cgroups a process runs in, in cores: the
    least of its own cgroup's and every ancestor's, cgroup v1 and v2 alike (the module
    docstring says why it bounds the team).

    `read()` reads the limits again each call (a quota may change while the process runs:
    `docker update --cpus`, a pod resized in place), and finds the directories again when
    the process's cgroup changed.

    Args:
        proc: the process's /proc directory (/proc/self).
    """

    def __init__(self, proc: Path = Path("/proc/self")) -> None:
        self._proc = proc
        self._cgroup: str | None = None
        self._dirs: list[tuple[str, Path]] = []

    def read(self) -> float | None:
        """The limit in cores, or None where no cgroup sets one.

        Raises:
            OSError: /proc/self/cgroup or mountinfo cannot be read.
            ValueError: a limit file that is not numbers.
        """
        cgroup = (self._proc / "cgroup").read_text()
        if cgroup != self._cgroup:
            self._dirs = cgroup_cpu_dirs(cgroup, (self._proc / "mountinfo").read_text())
            self._cgroup = cgroup
        limits = [x for x in (_read_limit(v, d) for v, d in self._dirs) if x is not None]
        return min(limits, default=None)


def open_quota() -> tuple[CpuQuota | None, float | None]:
    """(a reader of this process's CPU quota, the quota in cores now); (None, None) where it
    cannot be read (not Linux, no cgroup file system)."""
    try:
        reader = CpuQuota()
        return reader, reader.read()
    except (OSError, ValueError) as e:
        log.debug("no CPU quota read: %s", e)
        return None, None


def cpu_quota() -> float | None:
    """This process's CPU quota in cores (`CpuQuota`), or None where none is set or it
    cannot be read."""
    return open_quota()[1]


def quota_threads(quota: float | None) -> int | None:
    """The team a quota of `quota` cores bounds: its cores rounded up, at least 1 (None: no
    quota, no bound). Up, not down: kvsaga's workers sleep rather than spin while they wait,
    so a team one thread wider than the quota loses a little to being stopped at the end of
    each period and gains the fraction of a core it can use. On the 2-vCPU host, 16 requests
    x 64 tokens under a 1.5-core quota, two threads served 1.37x one thread's tokens/s;
    under a 1.0-core quota one thread served 1.07x two's (bench/RESULTS.md, "kvsaga-serve's
    threads within a container's CPU quota"). A runtime whose waiters spin, as llama.cpp's
    barriers do, would round down."""
    if quota is None:
        return None
    return max(1, math.ceil(quota - 1e-9))


def usable_cores() -> int:
    """The cores this process's thread teams should span: its affinity, bounded by its CPU
    quota rounded up (`quota_threads`)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    bound = quota_threads(cpu_quota())
    return cores if bound is None else min(cores, bound)


def use_threads(threads: int) -> None:
    """torch.set_num_threads(threads) on this thread, where its count differs (it sets the
    count threads started later begin with too)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


# torch's count before kvsaga first changed it in this process (`team_ceiling`).
_untouched: int | None = None


def team_ceiling() -> int:
    """The most threads a governor gives torch's team: OMP_NUM_THREADS where set, else
    torch's count before kvsaga first changed it in this process (torch's default, a count
    the user set, or a replica's share under kvsaga-serve --replicas), recorded at the
    first call, which `governor_for` makes before it changes anything.

    Not torch's count now: an engine before this one in the process may have lowered it
    (torch.set_num_threads sets the count threads started later begin with), and taking
    that as the ceiling kept every later engine of the process at it for good. Not the
    CPUs in the affinity either: torch's default is one thread per physical core, and a
    ceiling of every hyperthread would let the team grow past it on a free host."""
    global _untouched
    if _untouched is None:
        import torch

        _untouched = torch.get_num_threads()
    return _omp_num_threads() or _untouched


def _omp_num_threads() -> int | None:
    """OMP_NUM_THREADS's count for the outermost team (its first field), None where it is
    unset or not a count (ASCII digits, as libgomp reads it: "²" passed str.isdigit, then
    int() raised)."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isascii() and first.isdigit() and int(first) > 0 else None


def threads_for(cpus: int, foreign_cores: float, max_threads: int,
                quota: float | None = None) -> int:
    """The team for `cpus` cores of which other processes use `foreign_cores`: one thread
    fewer for each core they hold (`HELD` of a core or more counts as a whole one), at least
    1 and at most `max_threads` and a CPU quota of `quota` cores rounded up."""
    held = math.floor(max(0.0, foreign_cores) + 1.0 - HELD)
    bound = quota_threads(quota)
    most = max_threads if bound is None else min(max_threads, bound)
    return max(1, min(most, cpus - held))


class ThreadGovernor:
    """Sizes torch's thread team to the cores other processes leave (the module docstring).

    Call `poll()` from the thread that runs the model, between steps and while idle
    (torch.set_num_threads sets that thread's OpenMP team, and the count threads started
    later begin with); it reads the load once a `period_s` window has passed and changes
    the count when two consecutive windows both ask for fewer threads, or both for more, to
    the nearer of the two asks. A CPU quota (`read_quota`) is read in every window too, and
    one that a team larger than its cores rounded up now exceeds shrinks the team at once (a
    quota is set, not a reading that one window may get wrong). An error reading the load
    or setting the count turns it off for good (`failed`), with one warning, and leaves the
    team as it is.

    Args:
        load: the load reader.
        max_threads: the most threads to use (`governor_for`: `team_ceiling()`).
        set_threads: sets the team's size (torch.set_num_threads, on the model's thread).
        period_s: seconds a window lasts.
        clock: seconds, monotonic (the load's clock should be the same).
        read_quota: the CPU quota in cores, None for none (`CpuQuota.read`); None: no quota
            is read.
        threads: the count in force at the start (default `max_threads`).
    """

    def __init__(self, load: ForeignLoad, max_threads: int, set_threads: Callable[[int], None],
                 period_s: float = PERIOD_S, clock: Callable[[], float] = time.monotonic,
                 read_quota: Callable[[], float | None] | None = None,
                 threads: int | None = None) -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, got {max_threads}")
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        threads = max_threads if threads is None else threads
        if not 1 <= threads <= max_threads:
            raise ValueError(f"threads must be in [1, max_threads={max_threads}], got {threads}")
        self.load = load
        self.max_threads = max_threads
        self.threads = threads  # the count in force
        self.foreign_cores = 0.0  # the last window's reading
        self.quota_cores: float | None = None  # the last window's CPU quota (None: none)
        self._read_quota = read_quota
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
        if self._read_quota is not None:
            self.quota_cores = self._read_quota()
            bound = quota_threads(self.quota_cores)
            if bound is not None and bound < self.threads:
                self._asked = None
                return self._change(bound, f"the CPU quota is {self.quota_cores:g} cores")
        foreign = self.load.sample()
        if foreign is None:  # no window read: an ask from before it pairs with nothing
            self._asked = None
            return None
        self.foreign_cores = foreign
        want = threads_for(len(self.load.cpus), foreign, self.max_threads, self.quota_cores)
        asked, self._asked = self._asked, None
        if want == self.threads:
            return None
        if asked is None or (asked < self.threads) != (want < self.threads):
            self._asked = want  # the first window to ask this way: wait for a second
            return None
        new = max(want, asked) if want < self.threads else min(want, asked)
        return self._change(new, f"other processes used {foreign:.2f} of "
                                 f"{len(self.load.cpus)} cores over the last "
                                 f"{self.load.window_s:.1f} s")

    def _change(self, new: int, why: str) -> int:
        self._set(new)
        log.info("CPU threads %d -> %d: %s", self.threads, new, why)
        self.threads = new
        self.changes += 1
        return new


def governor_for(device_type: str) -> tuple[ThreadGovernor | None, int | None]:
    """Start a CPU engine's threads: call it on the thread that runs the model, before its
    first step (torch's count is that thread's, and the count threads started later begin
    with). Returns (the governor or None, the quota's bound on the team or None).

    On a CPU engine whose thread count OMP_NUM_THREADS does not set, torch's team first
    comes down to the process's CPU quota rounded up to cores, if it has one and the team is
    larger (`quota_threads`, the bound returned), in either mode. Then under
    KVSAGA_CPU_THREADS=adaptive, where the load can be read, the governor sizes the team
    from then on: to the cores other processes leave, and to the quota as it changes unless
    OMP_NUM_THREADS is set, never above `team_ceiling()` (or the count torch has now, where
    that is more); else no governor. An OMP_NUM_THREADS you set is never lowered for the
    quota. What this and the governor set is the caller's to undo when the model is done.

    Raises:
        ValueError: KVSAGA_CPU_THREADS is not "fixed" or "adaptive".
    """
    from kvsaga import envs

    adaptive = envs.KVSAGA_CPU_THREADS == "adaptive"
    if device_type != "cpu":
        return None, None
    import torch

    ceiling = team_ceiling()  # (recorded before anything is changed)
    started = torch.get_num_threads()
    reader, quota = ((None, None) if os.environ.get("OMP_NUM_THREADS", "").strip()
                     else open_quota())
    bound = quota_threads(quota)
    if bound is not None and bound < started:
        torch.set_num_threads(bound)
        log.info("CPU threads %d -> %d: the CPU quota is %g cores (set OMP_NUM_THREADS to "
                 "choose the count)", started, bound, quota)
    if not adaptive:
        return None, bound
    load = ForeignLoad.open()
    if load is None:
        return None, bound
    gov = ThreadGovernor(load, max(ceiling, started), torch.set_num_threads,
                         read_quota=None if reader is None else reader.read,
                         threads=torch.get_num_threads())
    gov.quota_cores = quota
    return gov, bound
