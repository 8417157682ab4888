"""Every seed a fit, tune or choice of a default has read, in one registry, and the check
every held-out or fresh run makes against it.

Why one list: the workload generator draws the same sessions for a seed whatever the scale,
load or bench (`kvsaga.sim.workloads`; agent_replay's `sample_steps` uses the same
generator), so policies.py's fit trace "swe" at seed 201 and scheduling_mix.py's mix tenant
a at seed 201 are the same sessions. A run is held out only if no fit read its seed in
*any* bench: each entry point used to refuse only its own fit's seeds (review s48, bench
finding 1: session 45's "fresh" AFS seeds 201, 202 were eviction-policy tune seeds).

The held-out and fresh entry points that refuse these seeds: `bench/scheduling_fit.py
--held-out`, `bench/scheduling_mix.py --report --seeds`, `bench/cluster.py`'s report
(`--seed`) and `bench/policies.py`'s evaluation (`--seeds`, and the seeds of a
`--from-json` file; it runs the seen seeds of the default policy's keep itself, labelled
seen, so it does not refuse those: `seen_ok`). `scheduling_mix.py --report` and
`cluster.py` take `--fit-seeds` for a diagnosis on registry seeds: the output then says
"fit seeds, not held out". The fits themselves, and the diagnoses that read fit seeds only,
keep their own checks. The live replays (agent_replay.py, vllm_scheduler_replay.py) have no
held-out mode: their default seed 0 is a fit seed, and a reading on them is called fresh by
hand only; `fits_reading` says which fit read a seed.

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
# The 24 held-out seeds the eviction policies' evaluation had run by session 34
# (bench/policies_seen.py SEEN_ALL: policies.SEEN and the pairs run once since). The tune
# picked graph[spread=1]; the lead kept graph[demoted_release=1] because it led on these
# seeds (docs/policies.md, "Session 34's walk"): a choice between candidates made by
# reading them, so a reading of the default policy on them is not held out.
POLICY_SEEN_SEEDS = (501, 502, 601, 602, 701, 702, 801, 802, 901, 902, 911, 912, 921, 922,
                     931, 932, 941, 942, 961, 962, 971, 972, 981, 982)
POLICY_SEEN = ("the default eviction policy's keep over the tune's pick, session 34 "
               "(bench/policies_seen.py)", POLICY_SEEN_SEEDS)

FITS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("the workflow scheduler's fit (bench/scheduling_fit.py)", SCHEDULER_FIT_SEEDS),
    ("the AFS compute-share fit and veto calibration (bench/scheduling_mix.py)",
     AFS_FIT_SEEDS),
    ("the eviction policy tune (bench/policies.py --tune)",
     POLICY_FAMILY_SEEDS + POLICY_TRACE_SEEDS),
    ("the cluster router fit (bench/cluster.py --fit)", CLUSTER_FIT_SEEDS),
    ("the vLLM connector's gate fit (bench/vllm_gate_fit.py)", VLLM_GATE_FIT_SEEDS),
    POLICY_SEEN,
)
ALL_FIT_SEEDS = frozenset(s for _, seeds in FITS for s in seeds)


def fits_reading(seed: int, seen_ok: bool = False) -> list[str]:
    """The fits that read `seed` (empty: none did); `seen_ok` leaves out `POLICY_SEEN`."""
    return [name for name, seeds in FITS if seed in seeds
            and not (seen_ok and (name, seeds) == POLICY_SEEN)]


def fit_seed_error(seeds: Iterable[int], flag: str, seen_ok: bool = False) -> str | None:
    """The error for a held-out or fresh run given `seeds` (named `flag` in it): each seed a
    fit read, with the fits that read it; None when no fit read any of them. `seen_ok`:
    the policies evaluation's, which runs `POLICY_SEEN_SEEDS` as its own seen seeds (its
    default `EVAL_SEEDS` are among them) and labels them so; every other entry point
    refuses them."""
    read = {s: fits_reading(s, seen_ok) for s in dict.fromkeys(seeds)}
    read = {s: names for s, names in read.items() if names}
    if not read:
        return None
    return (f"{flag}: seed(s) read by a fit, so not held out: "
            + "; ".join(f"{s} by {' and '.join(names)}" for s, names in read.items())
            + " (bench/fit_seeds.py lists every fit's seeds; pick others)")


def diagnosis_header(seeds: Iterable[int], flag: str) -> str:
    """The first line of a diagnosis run on registry seeds (`--fit-seeds`), which says they
    are fit seeds, not held out, and which fit read each: the project's diagnoses read fit
    seeds (bench/RESULTS.md records `scheduling_mix.py --report` on AFS fit seeds), and the
    output must not pass for a held-out reading.

    Raises:
        ValueError: a seed no fit read: run as a diagnosis it would be used up unreported
            (a fresh seed runs without `--fit-seeds`).
    """
    seeds = list(dict.fromkeys(seeds))
    if fresh := [s for s in seeds if not fits_reading(s)]:
        raise ValueError(f"{flag} with --fit-seeds: seed(s) no fit read: "
                         f"{', '.join(map(str, fresh))} (--fit-seeds is for diagnoses on the "
                         "seeds of bench/fit_seeds.py; run a held-out seed without it)")
    return ("fit seeds, not held out (a diagnosis): "
            + "; ".join(f"{s} by {' and '.join(fits_reading(s))}" for s in seeds))
