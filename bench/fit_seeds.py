"""Every seed a fit or tune has read, in one registry, and the check every held-out or fresh
run makes against it.

Why one list: the workload generator draws the same sessions for a seed whatever the scale,
load or bench (`kvsaga.sim.workloads`; agent_replay's `sample_steps` uses the same
generator), so policies.py's fit trace "swe" at seed 201 and scheduling_mix.py's mix tenant
a at seed 201 are the same sessions. A run is held out only if no fit read its seed in
*any* bench: each entry point used to refuse only its own fit's seeds (review s48, bench
finding 1: session 45's "fresh" AFS seeds 201, 202 were eviction-policy tune seeds).

The held-out and fresh entry points that refuse these seeds: `bench/scheduling_fit.py
--held-out`, `bench/scheduling_mix.py --report --seeds` and `bench/policies.py`'s
evaluation (`--seeds`, and the seeds of a `--from-json` file). The fits themselves, and the
diagnoses that read fit seeds only, keep their own checks. The live replays
(agent_replay.py, vllm_scheduler_replay.py) have no held-out mode: their default seed 0 is a
fit seed, and a reading on them is called fresh by hand only; `fits_reading` says which fit
read a seed.

The values are the fits' own (nothing here was refitted); the modules that fit on them take
their constants from here, the vLLM gate fit's from bench/vllm_gate_fit.py (a stdlib-only
module the vLLM tests load on its own).
"""

from __future__ import annotations

from collections.abc import Iterable

from vllm_gate_fit import FIT_SEEDS as VLLM_GATE_FIT_SEEDS

# The workflow scheduler's parameter fit (bench/scheduling_fit.py; scheduling.FIT_SEEDS).
SCHEDULER_FIT_SEEDS = (101, 102, 103, 104, 105, 106)
# Agent Fair Share of compute's fit on both mixes and the AFS veto's calibration
# (bench/scheduling_mix.py FIT_SEEDS, policies_check.AFS_FIT_SEEDS; the tail guard's
# check, scheduling_tail_guard.TAIL_GUARD_SEEDS, is a subset).
AFS_FIT_SEEDS = tuple(range(102, 110))
# The eviction policies' tune (bench/policies.py: FAMILY_SEEDS, TRACE_SEEDS; that module
# says why each is there).
POLICY_FAMILY_SEEDS = (1, 101)
POLICY_TRACE_SEEDS = (102, 103, 201, 202, 301, 302, 401, 402, 951, 952)
# The cluster routers' knobs and thrash load (bench/cluster.py --fit).
CLUSTER_FIT_SEEDS = (1, 2)

FITS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("the workflow scheduler's fit (bench/scheduling_fit.py)", SCHEDULER_FIT_SEEDS),
    ("the AFS compute-share fit and veto calibration (bench/scheduling_mix.py)",
     AFS_FIT_SEEDS),
    ("the eviction policy tune (bench/policies.py --tune)",
     POLICY_FAMILY_SEEDS + POLICY_TRACE_SEEDS),
    ("the cluster router fit (bench/cluster.py --fit)", CLUSTER_FIT_SEEDS),
    ("the vLLM connector's gate fit (bench/vllm_gate_fit.py)", VLLM_GATE_FIT_SEEDS),
)
ALL_FIT_SEEDS = frozenset(s for _, seeds in FITS for s in seeds)


def fits_reading(seed: int) -> list[str]:
    """The fits that read `seed` (empty: none did)."""
    return [name for name, seeds in FITS if seed in seeds]


def fit_seed_error(seeds: Iterable[int], flag: str) -> str | None:
    """The error for a held-out or fresh run given `seeds` (named `flag` in it): each seed a
    fit read, with the fits that read it; None when no fit read any of them."""
    read = {s: fits_reading(s) for s in dict.fromkeys(seeds)}
    read = {s: names for s, names in read.items() if names}
    if not read:
        return None
    return (f"{flag}: seed(s) read by a fit, so not held out: "
            + "; ".join(f"{s} by {' and '.join(names)}" for s, names in read.items())
            + " (bench/fit_seeds.py lists every fit's seeds; pick others)")
