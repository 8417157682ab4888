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

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# /proc/stat's per-CPU columns, in order (USER_HZ ticks).
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
SPIN_CODE = ("import os, sys; cpu = int(sys.argv[1]); os.sched_setaffinity(0, {cpu}); "
             "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
             "while True: pass")


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
    Threads that exited are missing; empty where /proc lacks the process."""
    out = {"cpu_s": 0.0, "runqueue_s": 0.0, "voluntary_switches": 0,
           "involuntary_switches": 0}
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
        out["cpu_s"] += run_ns / 1e9
        out["runqueue_s"] += wait_ns / 1e9
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key == "voluntary_ctxt_switches":
                out["voluntary_switches"] += int(value)
            elif key == "nonvoluntary_ctxt_switches":
                out["involuntary_switches"] += int(value)
    return out


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
    (`spinners_cpu_s`) and busy elsewhere (other jobs and this client), halts a second, and
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
    """One round's conditions as the per-round line prints them ("" when none)."""
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
    return "; ".join(parts)


RUNNING_SPINNERS: set[int] = set()  # pids of the spinners now running (`spinners_cpu_s`)


def spinners_cpu_s() -> float:
    """CPU seconds the running `IdleSpinners` have used so far."""
    return sum(process_times(pid).get("cpu_s", 0.0) for pid in sorted(RUNNING_SPINNERS))


class IdleSpinners:
    """`--idle-spinners`: one SCHED_IDLE busy-loop process per CPU of this process's
    affinity, from `start` to `stop` (a context manager)."""

    def __init__(self, cpus: list[int] | None = None) -> None:
        self.cpus = sorted(os.sched_getaffinity(0)) if cpus is None else cpus
        self.procs: list[subprocess.Popen] = []

    def start(self) -> IdleSpinners:
        if not hasattr(os, "SCHED_IDLE"):
            raise SystemExit("--idle-spinners needs Linux's SCHED_IDLE scheduling class")
        for cpu in self.cpus:
            self.procs.append(subprocess.Popen([sys.executable, "-c", SPIN_CODE, str(cpu)],
                                               stdin=subprocess.DEVNULL))
            RUNNING_SPINNERS.add(self.procs[-1].pid)
        return self

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
            RUNNING_SPINNERS.discard(p.pid)
        self.procs = []

    def __enter__(self) -> IdleSpinners:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
