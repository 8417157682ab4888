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
keep their own checks. The replays of the vLLM connector's workload (`bench/agent_replay.py`,
`bench/vllm_scheduler_replay.py`'s report) refuse these seeds, the vLLM gate's seen seeds
too (`gate_seen`), when they write results (`--write-results`, `--json`), unless
`--fit-seeds` labels the run "fit seeds, not held out" (the report takes held-out seeds
beside them, named so: `held_out_ok`; it counts the gate's seen seeds only where an arm runs
the gate); their default seed 0 is a fit seed, so a quick look that writes nothing runs on
it with that note printed. `bench/serve_scheduler_replay.py` (the same sessions through
kvsaga-serve's scheduler, simulated; no vLLM gate runs, so the gate's seen seeds are held
out for it) applies the same rule to its `--json` (session 50); the three share
`run_seed_note`.

`VLLM_GATE_SEEN` counts only where the run measures the vLLM connector's gate (`gate_seen`):
its seeds were read to choose the gate's rules, which no simulated bench runs, and the
cluster report's own seeds 7, 11 and 12 are among them.

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
# The seeds the vLLM connector's gate rules were chosen after reading (the gate's parameters
# were fitted on VLLM_GATE_FIT_SEEDS only; these are the seeds its report had shown first):
# - 5-14: `idle_admit_s` 5 "was chosen after seeds 5-14 had been seen" (bench/RESULTS.md,
#   "Agent replay (`python bench/agent_replay.py --engine vllm ...`)"; docs/integrations.md,
#   the gate's measured figures);
# - 60-72: "60-65 are seen seeds for" the unhinted-pause expiry (`pause_quantile`'s rule,
#   docs/integrations.md), and "seeds 60-72 are seen seeds for" `expire_long_hints`
#   (bench/RESULTS.md, "Advance hints that held long pauses, a bound with memory, fresh seeds
#   73-75, ...");
# - 30: the fresh seed whose run found the ride-along stall, fixed since, so "not a report
#   seed for the fixed connector" (docs/integrations_benchmarks.md, end; bench/RESULTS.md,
#   "Agent replay on fresh seeds after room admission").
VLLM_GATE_SEEN_SEEDS = (*range(5, 15), 30, *range(60, 73))
VLLM_GATE_SEEN = ("the vLLM gate's rules chosen after reading them (idle_admit_s: 5-14; "
                  "pause expiry and expire_long_hints: 60-72; the ride-along fix: 30)",
                  VLLM_GATE_SEEN_SEEDS)

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


def fits_reading(seed: int, seen_ok: bool = False, gate_seen: bool = False) -> list[str]:
    """The fits that read `seed` (empty: none did); `seen_ok` leaves out `POLICY_SEEN`,
    `gate_seen` adds `VLLM_GATE_SEEN`."""
    fits = (*FITS, VLLM_GATE_SEEN) if gate_seen else FITS
    return [name for name, seeds in fits if seed in seeds
            and not (seen_ok and (name, seeds) == POLICY_SEEN)]


def fit_seed_error(seeds: Iterable[int], flag: str, seen_ok: bool = False,
                   gate_seen: bool = False) -> str | None:
    """The error for a held-out or fresh run given `seeds` (named `flag` in it): each seed a
    fit read, with the fits that read it; None when no fit read any of them. `seen_ok`:
    the policies evaluation's, which runs `POLICY_SEEN_SEEDS` as its own seen seeds (its
    default `EVAL_SEEDS` are among them) and labels them so; every other entry point
    refuses them. `gate_seen`: the run measures the vLLM connector's gate, so
    `VLLM_GATE_SEEN` is refused too."""
    read = {s: fits_reading(s, seen_ok, gate_seen) for s in dict.fromkeys(seeds)}
    read = {s: names for s, names in read.items() if names}
    if not read:
        return None
    return (f"{flag}: seed(s) read by a fit, so not held out: "
            + "; ".join(f"{s} by {' and '.join(names)}" for s, names in read.items())
            + " (bench/fit_seeds.py lists every fit's seeds; pick others)")


def diagnosis_header(seeds: Iterable[int], flag: str, gate_seen: bool = False,
                     held_out_ok: bool = False) -> str:
    """The first line of a diagnosis run on registry seeds (`--fit-seeds`), which says they
    are fit seeds, not held out, and which fit read each: the project's diagnoses read fit
    seeds (bench/RESULTS.md records `scheduling_mix.py --report` on AFS fit seeds), and the
    output must not pass for a held-out reading. `gate_seen`: as `fit_seed_error`'s.
    `held_out_ok`: the run may read fresh seeds beside the fit seeds (the vLLM replay's
    report, whose recorded sections group fit seeds 0-4 apart from fresh ones: review s49,
    gatediff finding 1); the line then names those "held out", apart.

    Raises:
        ValueError: a seed no fit read (with `held_out_ok`: every seed): run as a diagnosis
            it would be used up unreported (a fresh seed runs without `--fit-seeds`).
    """
    seeds = list(dict.fromkeys(seeds))
    fresh = [s for s in seeds if not fits_reading(s, gate_seen=gate_seen)]
    if fresh and (not held_out_ok or len(fresh) == len(seeds)):
        raise ValueError(f"{flag} with --fit-seeds: seed(s) no fit read: "
                         f"{', '.join(map(str, fresh))} (--fit-seeds is for diagnoses on the "
                         "seeds of bench/fit_seeds.py"
                         + (", beside held-out seeds or not" if held_out_ok else "")
                         + "; run held-out seeds alone without it)")
    return ("fit seeds, not held out (a diagnosis): "
            + "; ".join(f"{s} by {' and '.join(fits_reading(s, gate_seen=gate_seen))}"
                        for s in seeds if s not in fresh)
            + (f"; held out: {', '.join(map(str, fresh))}" if fresh else ""))


def run_seed_note(seeds: Iterable[int], flag: str, *, fit_seeds: bool, writes: bool,
                  refused: str, gate_seen: bool = False,
                  held_out_ok: bool = False) -> str | None:
    """The rule every replay that writes results applies to its seeds (`flag` names them):
    the line it prints first, saying which seeds a fit read (None: every seed is held out).
    `fit_seeds` (its `--fit-seeds`): a diagnosis on registry seeds, `diagnosis_header`'s
    line. Without it, a seed a fit read is refused where the run `writes` results (the
    error ends with `refused`, which names `--fit-seeds`), and only noted, "(nothing
    written)", where it writes none. `gate_seen`, `held_out_ok`: `diagnosis_header`'s (a
    run that writes nothing names held-out seeds beside the fit seeds whatever
    `held_out_ok`). Shared by bench/agent_replay.py, bench/vllm_replay_seeds.py (the vLLM
    replay's report) and bench/serve_scheduler_replay.py, each before its first replay.

    Raises:
        ValueError: the refusal, or `diagnosis_header`'s.
    """
    seeds = list(seeds)
    if fit_seeds:
        return diagnosis_header(seeds, flag, gate_seen, held_out_ok)
    err = fit_seed_error(seeds, flag, gate_seen=gate_seen)
    if err is None:
        return None
    if writes:
        raise ValueError(f"{err}; {refused}")
    return diagnosis_header(seeds, flag, gate_seen, held_out_ok=True) + " (nothing written)"


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(
        __file__, __doc__, "bench/policies.py", "bench/scheduling.py", "bench/scheduling_fit.py",
        "bench/scheduling_mix.py", "bench/cluster.py", "bench/agent_replay.py",
        "bench/vllm_scheduler_replay.py", "bench/serve_scheduler_replay.py"))
