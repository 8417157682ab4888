"""What the machine did while an arm ran, and `--idle-spinners`.

kvsaga-serve's engine hands work between its OpenMP threads ~130,000 times in a seed-118 replay
(`OMP_WAIT_POLICY=PASSIVE`: a waiting thread sleeps, so every hand-over is a wake-up). How
long a wake-up takes depends on what the other CPU is doing at that instant (idle and
halted in a VM, running another job, running only idle-class work), not on the load
average, so a reading's wall time needs the conditions beside it: per round, the CPU time
the machine spent idle, stolen by the hypervisor and elsewhere, the times idle CPUs halted
(cpuidle), and the server's own CPU seconds, run-queue wait and context switches, which
say whether the server had more work or waited longer for the same work
(docs/engine_profiles.md, "Why the same replay ran faster under load").

`--idle-spinners` keeps one SCHED_IDLE busy loop per CPU of this process's affinity while
every arm runs: it takes no time from any other thread (the kernel runs an idle-class task
only when nothing else wants the CPU, and preempts it at once), but no CPU ever goes idle,
so a woken thread never waits for a halted CPU nor for a job pulled onto its CPU. The same
condition for every arm.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# /proc/stat's per-CPU columns, in order (USER_HZ ticks).
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
# One spinner: pins itself to CPU argv[1], turns SCHED_IDLE, then spins until its parent
# (pid argv[2]) is gone: a parent killed by a signal runs no `stop`, and an orphan would
# spin on forever, re-parented to init. The kernel kills it when the thread that started
# it ends (prctl PR_SET_PDEATHSIG, SIGKILL): its own check, every 1e6 iterations (tens of
# ms of CPU), needs CPU time that an idle-class process on a busy machine may not get for
# minutes (session 53: still spinning 60 s after its parent died, beside two busy loops).
# The check stays, for a parent gone before the prctl. nice 19 as well: its time lands in
# /proc/stat's nice column, which kvsaga-serve's thread governor
# (kvsaga/engine/cpu_threads.py) does not count as another job holding a core.
SPIN_CODE = ("import ctypes, os, signal, sys; cpu, parent = int(sys.argv[1]), int(sys.argv[2])\n"
             "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
             "os.nice(19); os.sched_setaffinity(0, {cpu}); "
             "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
             "while os.getppid() == parent:\n"
             "    for _ in range(1_000_000): pass\n")


def machine_times(stat: str | None = None) -> dict[str, float]:
    """Seconds every CPU together spent in each of `STAT_FIELDS` since boot (/proc/stat's
    "cpu" line), and `halts`: how often idle CPUs entered a cpuidle state other than
    polling (summed over CPUs; absent where sysfs has no cpuidle). Empty off Linux."""
    try:
        text = Path("/proc/stat").read_text() if stat is None else stat
    except OSError:
        return {}
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            out = {k: int(v) / hz for k, v in zip(STAT_FIELDS, parts[1:], strict=False)}
            break
    if stat is None:
        halts = cpuidle_entries()
        if halts is not None:
            out["halts"] = halts
    return out


def cpuidle_entries(root: Path = Path("/sys/devices/system/cpu")) -> int | None:
    """Entries into every non-polling cpuidle state of every CPU (None: no cpuidle)."""
    total, seen = 0, False
    for state in sorted(root.glob("cpu[0-9]*/cpuidle/state[0-9]*")):
        try:
            if (state / "name").read_text().strip().upper() == "POLL":
                continue
            total += int((state / "usage").read_text())
            seen = True
        except (OSError, ValueError):
            continue
    return total if seen else None


def process_times(pid: int, proc: Path = Path("/proc")) -> dict[str, float]:
    """A process's threads summed: CPU seconds on a CPU and waiting on a run queue
    (/proc/PID/task/TID/schedstat), voluntary and involuntary context switches (status).
    Threads that exited are missing; empty where /proc lacks the process or none of its
    threads has a schedstat (not measured, rather than zeros)."""
    out = {"cpu_s": 0.0, "runqueue_s": 0.0, "voluntary_switches": 0,
           "involuntary_switches": 0}
    seen = False
    try:
        tids = os.listdir(proc / str(pid) / "task")
    except OSError:
        return {}
    for tid in tids:
        base = proc / str(pid) / "task" / tid
        try:
            run_ns, wait_ns, _ = (int(x) for x in (base / "schedstat").read_text().split())
            status = (base / "status").read_text()
        except (OSError, ValueError):
            continue  # the thread exited, or no schedstat in this kernel
        seen = True
        out["cpu_s"] += run_ns / 1e9
        out["runqueue_s"] += wait_ns / 1e9
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key == "voluntary_ctxt_switches":
                out["voluntary_switches"] += int(value)
            elif key == "nonvoluntary_ctxt_switches":
                out["involuntary_switches"] += int(value)
    return out if seen else {}


def process_tree(root: int, proc: Path = Path("/proc")) -> list[int]:
    """`root` and every process descended from it (vLLM's engine core is a child of its
    API server); [] where /proc lacks `root`."""
    parent: dict[int, int] = {}
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:  # the parent is the 2nd field after the command, which may hold spaces
            stat = (entry / "stat").read_text()
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    if root not in parent:
        return []
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += [c for c, p in parent.items() if p == pid]
    return sorted(out)


def tree_times(root: int) -> dict[int, dict[str, float]]:
    """`process_times` of every process of `root`'s tree, by pid."""
    return {pid: t for pid in process_tree(root) if (t := process_times(pid))}


def tree_delta(before: dict[int, dict[str, float]], after: dict[int, dict[str, float]]
               ) -> dict[str, float]:
    """What a process tree did between two `tree_times`: a process in both counts its
    change, one started since counts whole (one that exited in between is lost)."""
    out: dict[str, float] = {}
    for pid, t in after.items():
        for k, v in t.items():
            out[k] = out.get(k, 0.0) + v - before.get(pid, {}).get(k, 0.0)
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """`after - before` for every key both have."""
    return {k: after[k] - before[k] for k in after if k in before}


def round_conditions(machine: dict[str, float], server: dict[str, float], wall_s: float,
                     spinners_cpu_s: float = 0.0) -> dict[str, float]:
    """One round's conditions from the deltas over its replay (`wall_s` long): the share
    of the machine's CPU time that was idle, stolen, taken by `--idle-spinners`
    (`spinners_cpu_s`) and busy elsewhere (other jobs, this client, and any server process
    that exited during the round: `tree_delta` loses it), halts a second, and
    the server's CPU seconds, run-queue seconds and context switches."""
    out: dict[str, float] = {}
    total = sum(machine.get(k, 0.0) for k in STAT_FIELDS)
    if total > 0:
        idle = machine.get("idle", 0.0) + machine.get("iowait", 0.0)
        steal = machine.get("steal", 0.0)
        out["machine_idle_share"] = idle / total
        out["machine_steal_share"] = steal / total
        out["machine_spinners_share"] = spinners_cpu_s / total
        out["machine_other_busy_share"] = max(
            0.0, (total - idle - steal - spinners_cpu_s - server.get("cpu_s", 0.0)) / total)
    if "halts" in machine and wall_s > 0:
        out["halts_per_s"] = machine["halts"] / wall_s
    for key, value in server.items():
        out[f"server_{key}"] = value
    return out


def conditions_text(c: dict[str, float]) -> str:
    """One round's conditions as the per-round line prints them ("" when none; "server
    n/a" when the machine's times were read but not the server's)."""
    parts = []
    if "machine_idle_share" in c:
        parts.append(f"idle {c['machine_idle_share']:.0%}, steal {c['machine_steal_share']:.0%}"
                     + (f", idle spinners {c['machine_spinners_share']:.0%}"
                        if c.get("machine_spinners_share") else "")
                     + f", others {c['machine_other_busy_share']:.0%}")
    if "halts_per_s" in c:
        parts.append(f"{c['halts_per_s']:.0f} halts/s")
    if "server_cpu_s" in c:
        parts.append(f"server {c['server_cpu_s']:.1f} CPU-s, run queue "
                     f"{c['server_runqueue_s']:.1f} s, switches "
                     f"{c['server_voluntary_switches']:,.0f} + "
                     f"{c['server_involuntary_switches']:,.0f} forced")
    elif parts:
        parts.append("server n/a")
    return "; ".join(parts)


RUNNING_SPINNERS: set[int] = set()  # pids of the spinners now running (`spinners_cpu_s`)


def spinners_cpu_s() -> float:
    """CPU seconds the running `IdleSpinners` have used so far."""
    return sum(process_times(pid).get("cpu_s", 0.0) for pid in sorted(RUNNING_SPINNERS))


class IdleSpinners:
    """`--idle-spinners`: one SCHED_IDLE busy-loop process per CPU of this process's
    affinity, from `start` to `stop` (a context manager). `start` returns only once every
    spinner runs idle-class on its CPU; if one fails (a CPU not in the affinity, no
    permission, a failed spawn), it stops those started and raises. A spinner dies with
    the thread that called `start` (the kernel kills it), even by a signal that skips
    `stop`: start them from the thread that outlives the measurement (the main one)."""

    START_TIMEOUT_S = 30.0  # Python's start-up on a loaded machine

    def __init__(self, cpus: list[int] | None = None) -> None:
        if not hasattr(os, "SCHED_IDLE") or not hasattr(os, "sched_getaffinity"):
            raise SystemExit("--idle-spinners needs Linux's SCHED_IDLE scheduling class and "
                             "sched_getaffinity")
        self.cpus = sorted(os.sched_getaffinity(0)) if cpus is None else list(cpus)
        self.procs: list[subprocess.Popen] = []

    def start(self) -> IdleSpinners:
        try:
            for cpu in self.cpus:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-c", SPIN_CODE, str(cpu), str(os.getpid())],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE))
                RUNNING_SPINNERS.add(self.procs[-1].pid)
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_idle(self) -> None:
        """Wait until every spinner runs SCHED_IDLE on its CPU; SystemExit naming the CPU
        of one that exited first or did not get there within `START_TIMEOUT_S`."""
        deadline = time.monotonic() + self.START_TIMEOUT_S
        for cpu, p in zip(self.cpus, self.procs, strict=True):
            while True:
                if p.poll() is not None:
                    err = p.stderr.read().decode(errors="replace").strip() if p.stderr else ""
                    last = err.splitlines()[-1] if err else "no message"
                    raise SystemExit(f"--idle-spinners: the spinner for CPU {cpu} exited "
                                     f"(code {p.returncode}) before it ran SCHED_IDLE: {last}")
                try:
                    if (os.sched_getscheduler(p.pid) == os.SCHED_IDLE
                            and os.sched_getaffinity(p.pid) == {cpu}):
                        break
                except OSError:
                    pass  # exited just now: poll() says so next turn
                if time.monotonic() > deadline:
                    raise SystemExit(f"--idle-spinners: the spinner for CPU {cpu} did not run "
                                     f"SCHED_IDLE on it within {self.START_TIMEOUT_S:g} s")
                time.sleep(0.01)

    def stop(self) -> None:
        _kill_and_reap(self.procs)
        for p in self.procs:
            if p.stderr:
                p.stderr.close()
            RUNNING_SPINNERS.discard(p.pid)
        self.procs = []

    def __enter__(self) -> IdleSpinners:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _kill_and_reap(procs: list[subprocess.Popen]) -> None:
    """Kill every process of `procs` still running, then wait for each."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


# A busy neighbour: after `delay` seconds, busy `duty` of every 100 ms (the rest asleep),
# at nice `nice` (0: normal priority) and on any CPU, until its parent dies.
NEIGHBOUR_CODE = ("import os, sys, time\n"
                  "delay, duty, parent = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])\n"
                  "os.nice(int(sys.argv[4]))\n"
                  "time.sleep(delay)\n"
                  "while os.getppid() == parent:\n"
                  "    start = time.monotonic()\n"
                  "    while time.monotonic() - start < 0.1 * duty: pass\n"
                  "    time.sleep(0.1 * (1.0 - duty))\n")


class BusyNeighbours:
    """Other jobs on the machine, on purpose: `count` busy-loop processes at nice `nice`
    (0: normal priority; 19: a background job), each busy `duty` of the time (in 100 ms
    periods) from `delay` seconds after `start` until `stop` (a context manager). At nice 0
    they take CPU from whatever else runs, as another tenant's job would. A neighbour exits
    by itself soon after this process dies."""

    def __init__(self, count: int, duty: float = 1.0, delay: float = 0.0,
                 nice: int = 0) -> None:
        if count < 0 or not 0.0 < duty <= 1.0 or delay < 0 or not 0 <= nice <= 19:
            raise ValueError(f"neighbours need count >= 0, 0 < duty <= 1, delay >= 0 and "
                             f"0 <= nice <= 19, got {count}, {duty}, {delay}, {nice}")
        self.count, self.duty, self.delay, self.nice = count, duty, delay, nice
        self.procs: list[subprocess.Popen] = []

    def start(self) -> BusyNeighbours:
        try:
            for _ in range(self.count):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-c", NEIGHBOUR_CODE, str(self.delay), str(self.duty),
                     str(os.getpid()), str(self.nice)], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _kill_and_reap(self.procs)
        self.procs = []

    def __enter__(self) -> BusyNeighbours:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class QuotaGroup:
    """A container's CPU limit, on purpose: a cgroup with a CFS quota of `cores` (per 100 ms
    period) that `add` moves server processes into (children they start later inherit it),
    as `docker run --cpus` or a Kubernetes CPU limit would put them. Needs a cgroup CPU
    hierarchy this process may write (root on a host that mounts it read-write, v1 or v2;
    on v2, the top must take processes back: the real root). A context manager: on exit,
    processes still inside go back to the hierarchy's top, and the cgroup is removed.

    Raises:
        ValueError: `cores` is not > 0.
        OSError: no writable hierarchy, or the cgroup cannot be made.
    """

    PERIOD_US = 100_000

    def __init__(self, cores: float) -> None:
        if not cores > 0:
            raise ValueError(f"a CPU quota needs cores > 0, got {cores}")
        from kvsaga.engine.cpu_threads import cgroup_cpu_dirs

        dirs = cgroup_cpu_dirs(Path("/proc/self/cgroup").read_text(),
                               Path("/proc/self/mountinfo").read_text())
        tops = [(v, d) for v, d in dirs if os.access(d, os.W_OK)
                and (v == "v1" or "cpu" in _read(d / "cgroup.subtree_control").split())]
        if not tops:
            raise OSError("no writable cgroup CPU hierarchy here (a quota needs root on a host "
                          "that mounts /sys/fs/cgroup read-write)")
        # The top of what this process sees of the hierarchy: the real root on a host,
        # inside a container its own cgroup (whose limit, if any, binds the new one too).
        self.version, self.top = tops[-1]
        self.cores = cores
        self.path = self.top / f"kvsaga-bench-{os.getpid()}"
        self.path.mkdir()
        quota = str(round(cores * self.PERIOD_US))
        try:
            if self.version == "v2":
                (self.path / "cpu.max").write_text(f"{quota} {self.PERIOD_US}\n")
            else:
                (self.path / "cpu.cfs_period_us").write_text(f"{self.PERIOD_US}\n")
                (self.path / "cpu.cfs_quota_us").write_text(quota + "\n")
        except OSError:
            self.path.rmdir()
            raise

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def add_tree(self, root: int) -> None:
        """`root` and every process below it (one already inside is written again)."""
        for pid in process_tree(root):
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                self.add(pid)

    def throttling(self) -> dict[str, float]:
        """The cgroup's CFS counters so far: periods it ran in, periods in which the quota
        ran out (`throttled`) and seconds its tasks waited for the next period."""
        stat = dict(line.split() for line in _read(self.path / "cpu.stat").splitlines())
        wait_s = (int(stat["throttled_usec"]) / 1e6 if "throttled_usec" in stat
                  else int(stat.get("throttled_time", 0)) / 1e9)
        return {"periods": float(stat.get("nr_periods", 0)),
                "throttled": float(stat.get("nr_throttled", 0)), "throttled_s": wait_s}

    def close(self) -> None:
        """Move what is still inside back to the top, then remove the cgroup (a process
        just killed leaves it a moment later: EBUSY is retried for up to 5 s)."""
        if not self.path.exists():
            return
        deadline = time.monotonic() + 5.0
        while True:
            for pid in _read(self.path / "cgroup.procs").split():
                with contextlib.suppress(OSError):  # gone meanwhile
                    (self.top / "cgroup.procs").write_text(pid + "\n")
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def __enter__(self) -> QuotaGroup:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM raises SystemExit(143) within the block, so `with` blocks (the spinners, the
    servers, temporary directories) unwind as on Ctrl-C; the previous handler is restored
    after. A no-op off the main thread, where Python cannot set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
