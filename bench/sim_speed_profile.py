"""Where the simulator's time goes, for `python bench/sim_speed.py --profile` and `--split`:
cProfile's top entries of both paths, and the fast path's time split by part (schedule calls
by outcome, the manager's step calls, decode runs, policy hooks). A case is any object with
`name`, `trace()` and `config()` (bench/sim_speed.py's `Case`)."""

from __future__ import annotations

import cProfile
import pstats
import time

from kvsaga.sim.simulator import Simulator


def profile(case, top: int) -> None:
    """cProfile's top entries (own time) of the reference and the fast path on one case."""
    sessions, config = case.trace(), case.config()
    for reference in (True, False):
        prof = cProfile.Profile()
        prof.enable()
        Simulator(sessions, config, reference=reference).run()
        prof.disable()
        print(f"--- {case.name} ({'reference' if reference else 'fast path'})")
        pstats.Stats(prof).sort_stats("tottime").print_stats(top)


# What `--split` times, inclusive (a manager call made inside `schedule` counts in both).
SPLIT = [("kvsaga.manager", "KVCacheManager", ("begin_step", "allocate_slots", "_evict")),
         ("kvsaga.manager_signals", "SessionSignals", ("finish_step",)),
         ("kvsaga.manager_reads", "ManagerReads", ("lookup",)),
         ("kvsaga.scheduler.base", "Scheduler", ("admit_waiting",)),
         ("kvsaga.sim.decode_runs", "DecodeRuns", ("_decode_run", "_admits"))]
POLICY_HOOKS = ("blocks_cached", "blocks_uncached", "choose_victims", "step_started",
                "step_finished")


def split(case) -> dict[str, tuple[int, float]]:
    """Where one fast-path simulation of `case` spends its time: (calls, seconds) of
    `Scheduler.schedule` by outcome (a step admitted, or nobody admitted while something
    waits), of the manager's step calls, of the decode runs and of the policy's hooks,
    each inclusive, and of the whole run ("total"). Wall time of this process, with the
    timing's own overhead: shares, not rates."""
    import importlib

    from kvsaga.scheduler.base import Scheduler

    acc: dict[str, list] = {}

    def timed(label: str, fn):
        def call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                rec = acc.setdefault(label, [0, 0.0])
                rec[0] += 1
                rec[1] += time.perf_counter() - t
        return call

    def schedule(self, now, executor, _orig=Scheduler.schedule):
        waiting = self.num_waiting
        t = time.perf_counter()
        out = _orig(self, now, executor)
        kind = ("admits a step" if out.admitted else
                "admits nobody, something waits" if waiting and not out.preempted else "other")
        rec = acc.setdefault(f"schedule: {kind}", [0, 0.0])
        rec[0] += 1
        rec[1] += time.perf_counter() - t
        return out

    saved = [(Scheduler, "schedule", Scheduler.__dict__["schedule"])]
    Scheduler.schedule = schedule
    for module, cls_name, names in SPLIT:
        cls = getattr(importlib.import_module(module), cls_name)
        for n in names:
            saved.append((cls, n, cls.__dict__[n]))
            setattr(cls, n, timed(f"{cls_name}.{n}", cls.__dict__[n]))
    try:
        sim = Simulator(case.trace(), case.config())
        policy = sim.manager.policy
        for n in POLICY_HOOKS:
            if hasattr(policy, n):
                setattr(policy, n, timed(f"policy.{n}", getattr(policy, n)))
        sim.pool.observer = policy  # the pool re-reads the (now timed) observer calls
        t = time.perf_counter()
        sim.run()
        acc["total"] = [1, time.perf_counter() - t]
    finally:
        for cls, n, fn in saved:
            setattr(cls, n, fn)
    return {k: (v[0], v[1]) for k, v in acc.items()}


def print_split(case) -> None:
    parts = split(case)
    total = parts.pop("total")[1]
    print(f"--- {case.name}: {total:.3f} s (wall, timed), inclusive shares")
    for label, (n, sec) in sorted(parts.items(), key=lambda kv: -kv[1][1]):
        print(f"  {label:40s} {100 * sec / total:5.1f}%  {n:7,d} calls  "
              f"{1e6 * sec / n:8.1f} us/call")


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/sim_speed.py"))
