"""`bench/scheduling.py --tail-guard-check`: the runs that keep the tail guard
(`WorkflowScheduler(tail_wait_factor=...)`) off by default, split from
bench/scheduling_fit.py (whose `--fit` round 9 chose it on single families and whose `main`
runs this check) because it reads the two-tenant mixes, not the fit grid.
"""

from __future__ import annotations

from kvsaga.policy import DEFAULT_POLICY

# Why `tail_wait_factor` is 0 (off) by default.
# Round 9 (above) ranked p95 misses on the fit grid of single families at 1x-2x load; the
# mixes' slowdowns (bench/scheduling_mix.py) run each tenant alone on half the GPU, where web
# runs at 4x load (noisy's tenant a), a load that grid never had. There the guard multiplies
# the very p95 it exists to protect. AFS fit seeds only: the mixes' report seeds are refused.
TAIL_GUARD_POINTS = (("noisy", 0.5), ("noisy", 0.25), ("mix", 0.5))
TAIL_GUARD_FACTORS = (0.0, 3.0)  # off (today's default) vs round 9's pick
TAIL_GUARD_SEEDS = (102, 103, 104, 105)


def tail_guard_check(seeds: tuple[int, ...] = TAIL_GUARD_SEEDS) -> list[str]:
    """Mean / p95 TCT (s) of the graph policy under the workflow scheduler's defaults with
    `tail_wait_factor` at each of `TAIL_GUARD_FACTORS`, on each mix shared at its capacity
    and each tenant alone on half of it (`tenant_share(config, 2)`, the runs the mixes'
    slowdowns divide by); one line per (seed, mix, capacity)."""
    from scheduling import PRESET, capacity  # lazily: scheduling imports this module
    from scheduling_mix import FIT_SEEDS as AFS_FIT_SEEDS
    from scheduling_mix import MIXES, mix_trace

    from kvsaga.sim.compare import tenant_share
    from kvsaga.sim.simulator import SimConfig, simulate

    bad = [s for s in seeds if s not in AFS_FIT_SEEDS]
    if not seeds or bad:
        raise ValueError(f"--tail-guard-check runs on the AFS fit seeds "
                         f"{AFS_FIT_SEEDS[0]}-{AFS_FIT_SEEDS[-1]} only (the mixes' report "
                         f"seeds and fresh ones are never used to choose); got {bad or 'none'}")
    out = []
    for seed in seeds:
        for name, frac in TAIL_GUARD_POINTS:
            sessions = mix_trace(name, seed)
            cap = capacity(sessions, frac, len(MIXES[name]))
            cells = []
            for factor in TAIL_GUARD_FACTORS:
                config = SimConfig(preset=PRESET, num_gpu_blocks=cap, policy=DEFAULT_POLICY,
                                   scheduler="workflow",
                                   scheduler_params={"tail_wait_factor": factor})
                shared = simulate(sessions, config)
                half = tenant_share(config, 2)
                alone = [simulate([x for x in sessions if x.tenant == t], half)
                         for t, *_ in MIXES[name]]
                cells.append(f"factor {factor:g}: shared {shared.tct_mean_s:.1f}/"
                             f"{shared.tct_p95_s:.1f}; alone " + " ".join(
                                 f"{t} {r.tct_mean_s:.1f}/{r.tct_p95_s:.1f}"
                                 for (t, *_), r in zip(MIXES[name], alone, strict=True)))
            out.append(f"{seed} {name} {frac:.0%} {cap} blocks | " + " | ".join(cells))
    return out


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/scheduling.py"))
