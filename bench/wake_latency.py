"""How long a sleeping thread takes to wake on this machine now: a two-process ping-pong.

    python bench/wake_latency.py [--trips 3000] [--work-us 100] [--idle-spinners]

kvsaga-serve's engine threads sleep between parallel regions (`OMP_WAIT_POLICY=PASSIVE`)
and are woken some 130,000 times in a replay, so how long a wake-up takes stretches a live
replay's wall time (bench/RESULTS.md, "Why seed 118's kvsaga-serve arm ran faster under
load than quiet"). Two processes (no GIL between them) hand a byte back and forth over
pipes, each blocking in `read` until the other writes; the first busy-waits `--work-us`
between trips, as the engine computes between regions, so the other has time to fall
asleep (and its CPU to go idle) before it is woken. Prints the round trip's mean, median,
p90 and p99 in microseconds, and the cpuidle halts and the machine's idle and steal shares
over the run. `--idle-spinners` runs it with one SCHED_IDLE busy loop per CPU beside it
(bench/replay/conditions.py), the same condition as bench/agent_replay.py's flag. Seconds
to run; a probe of the machine's state, to print beside a live replay.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

from ascii_args import float_arg, int_arg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from replay.conditions import (  # noqa: E402
    IdleSpinners,
    delta,
    machine_times,
    round_conditions,
    sigterm_exits,
    spinners_cpu_s,
)

from kvsaga.cli import HelpFormatter  # noqa: E402


def ping_pong(trips: int, work_us: float, cpus: tuple[int, int] | None = None) -> list[float]:
    """Round trips in microseconds: this process writes a byte, a forked child echoes it
    (`cpus`: the two sides pinned to these CPUs, so every wake-up crosses CPUs, as the
    engine's two OpenMP threads do; None: where the kernel puts them)."""
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    mask = os.sched_getaffinity(0) if cpus is not None else None
    pid = os.fork()
    if pid == 0:  # the echo: sleeps in read until woken
        try:
            os.close(a_w)  # only the parent writes a, and reads b: a closed parent -> EOF
            os.close(b_r)
            if cpus is not None:
                os.sched_setaffinity(0, {cpus[1]})
            for _ in range(trips):
                if not os.read(a_r, 1):
                    break  # the parent stopped early
                os.write(b_w, b"x")
        finally:
            os._exit(0)
    os.close(a_r)
    os.close(b_w)
    out = []
    try:
        if cpus is not None:
            os.sched_setaffinity(0, {cpus[0]})
        for _ in range(trips):
            t = time.perf_counter()
            os.write(a_w, b"x")
            if not os.read(b_r, 1):
                raise RuntimeError("wake_latency: the echo process exited early")
            out.append((time.perf_counter() - t) * 1e6)
            end = time.perf_counter() + work_us / 1e6
            while time.perf_counter() < end:
                pass
    finally:
        if mask is not None:
            os.sched_setaffinity(0, mask)
        for fd in (a_w, b_r):  # the echo sees EOF (or EPIPE) and exits
            os.close(fd)
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return out


def summary(rtt_us: list[float]) -> dict[str, float]:
    s = sorted(rtt_us)
    return {"mean_us": statistics.fmean(s), "median_us": statistics.median(s),
            "p90_us": s[int(0.9 * (len(s) - 1))], "p99_us": s[int(0.99 * (len(s) - 1))]}


def share(cond: dict[str, float], key: str) -> str:
    """A share of `round_conditions` as a percentage; n/a where /proc/stat was not read."""
    return f"{cond[key]:.0%}" if key in cond else "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Linux only (fork, sched_setaffinity, /proc).",
        formatter_class=HelpFormatter)
    ap.add_argument("--trips", type=int_arg, default=3000, help="round trips")
    ap.add_argument("--work-us", type=float_arg, default=100.0,
                    help="busy microseconds between trips (the other side falls asleep)")
    ap.add_argument("--idle-spinners", action="store_true",
                    help="one SCHED_IDLE busy loop per CPU beside the ping-pong")
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.trips < 1 or args.work_us < 0:
        raise SystemExit(f"--trips must be >= 1 and --work-us >= 0, got {args.trips}, "
                         f"{args.work_us}")
    if not hasattr(os, "fork") or not hasattr(os, "sched_getaffinity"):
        raise SystemExit("wake_latency.py runs on Linux only (fork, sched_getaffinity)")
    with sigterm_exits(), IdleSpinners() if args.idle_spinners else contextlib.nullcontext():
        # IdleSpinners' start returns once every spinner runs SCHED_IDLE on its CPU.
        m0, spin0, t0 = machine_times(), spinners_cpu_s(), time.perf_counter()
        mine = sorted(os.sched_getaffinity(0))
        cpus = (mine[0], mine[1]) if len(mine) > 1 else None
        rtt = ping_pong(args.trips, args.work_us, cpus)
        wall = time.perf_counter() - t0
        cond = round_conditions(delta(m0, machine_times()), {}, wall,
                                spinners_cpu_s() - spin0)
    out = {**summary(rtt), **cond, "trips": args.trips, "work_us": args.work_us, "cpus": cpus,
           "idle_spinners": args.idle_spinners, "loadavg": os.getloadavg()[0]}
    halts = f", {cond['halts_per_s']:.0f} halts/s" if "halts_per_s" in cond else ""
    spun = (f", idle spinners {share(cond, 'machine_spinners_share')}"
            if args.idle_spinners else "")
    print(f"round trip us: mean {out['mean_us']:.1f}, median {out['median_us']:.1f}, p90 "
          f"{out['p90_us']:.1f}, p99 {out['p99_us']:.1f} ({args.trips} trips, "
          f"{args.work_us:g} us work between, {'across CPUs' if cpus else 'one CPU'}; "
          f"idle spinners {'on' if args.idle_spinners else 'off'}"
          f"; machine idle {share(cond, 'machine_idle_share')}, steal "
          f"{share(cond, 'machine_steal_share')}{spun}{halts}; load {out['loadavg']:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0

if __name__ == "__main__":
    sys.exit(main())
