"""`hindsight`: Belady's rule told when each step was admitted in an earlier run, and the
least recomputation of several such runs: a tighter offline reference than `belady`.

`belady` (kvsaga/policy/belady.py) reads the future from `TraceOracle`: a paused session's
blocks are next needed when its tool returns (the step's *release*). Under the scheduler in
use a released step then waits for admission, and a cold context (one that eviction took)
waits behind warm ones, so the wait can exceed the pause: Belady keeps a context "needed
now" that then queues for seconds and drops one whose session is admitted first. That is
why online policies beat it on several held-out cases (bench/RESULTS.md, "Eviction policies
(held-out ...)": belady above the best of lru, saga and ttl).

`HindsightOracle` is a `TraceOracle` that
- records, for every step (session, k), when it was released and when it was first admitted
  (`recorded_waits()`: admission minus release, for k >= 1: the steps that read a context back);
- given such waits from an earlier run of the same trace, answers that a paused session's
  blocks are next needed at its step's release plus that step's earlier wait: the step's
  start as it was then, moved with its release. A step released before that time stays
  "paused" (not needed now) until it is admitted or that time passes.

`best_offline` runs `belady` and `oracle-ttl` under such oracles, from the trace's own
times (the plain references), from each schedule it is given (the online policies' runs,
recorded by `record`) and from plain belady's, then again from the best run found
(unless its waits have steered them already), and returns the least recomputation of them
(`Reference`). Every one of these runs is a feasible run of the same simulator, scheduler and
capacity, so the figure is an achievable recomputation, at most plain belady's and
oracle-ttl's: a reference, **not a lower bound**.
It is not always an upper bound on the exact optimum either: the scheduler reads the policy's
execution graph where it keeps one (`Scheduler._graph`: the `workflow` scheduler's admission
order, kvsaga/scheduler/admission_order.py, workflow.py, working_set_gate.py). `oracle-ttl`
(like ttl, saga and graph) keeps one, `belady` and the exhaustive search's scripted policy
(kvsaga/sim/exhaustive.py) do not, so under such a scheduler an oracle-ttl run is scheduled
differently from every run the plain search tried, not only with other victims, and can
recompute less than the optimum it found. Under `fcfs` (whose admissions read no graph) only
the victims differ, so the figure is never below that optimum; under `workflow` the belady
runs (`best_offline(..., policies=("belady",))`) are not (the search prices swaps and churn
with the run's cost model, as belady does: `ScriptedPolicy(cost=config.cost)`), and the
oracle-ttl runs are not below the search fed oracle-ttl's graph
(`exhaustive_optimum(..., fed="oracle-ttl")`: the graph learns from hooks, not from the
oracle, so whatever waits steer it), so the least of those two optima bounds the figure
(bench/policies_reference.py counts the cases below it).
Its gap to the exact optimum where that can be searched (tiny traces):
bench/policies_reference.py; against the online policies on the fit set:
bench/policies_hindsight.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kvsaga.policy import make_policy
from kvsaga.policy.base import EvictionPolicy
from kvsaga.policy.belady import BeladyPolicy, ClairvoyantTTLPolicy
from kvsaga.sim.metrics import SimResult
from kvsaga.sim.oracle import _PAUSED, TraceOracle
from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.sim.trace import Session

OFFLINE = {"belady": BeladyPolicy, "oracle-ttl": ClairvoyantTTLPolicy}  # read the oracle
Waits = Mapping[tuple[str, int], float]  # (session id, step index) -> admission wait, s


class HindsightOracle(TraceOracle):
    """A `TraceOracle` that records each step's admission wait and, given an earlier run's
    waits, moves each paused session's next use to its release plus that wait.

    Args:
        sessions, block_size, synth: as `TraceOracle`.
        waits: (session id, step index) -> seconds from the step's release to its admission
            in an earlier run; steps not named wait 0 (plain `TraceOracle` answers).

    Set `clock` (a callable returning the simulated time) before the replay starts;
    `record` and `best_offline` do.
    """

    def __init__(self, sessions: Sequence[Session], block_size: int, synth=None,
                 waits: Waits | None = None) -> None:
        super().__init__(sessions, block_size, synth)
        self.waits: dict[tuple[str, int], float] = {}
        for key, w in (waits or {}).items():
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(f"HindsightOracle: the wait of step {key!r} must be a "
                                 f"finite number >= 0, got {w!r}")
            self.waits[key] = float(w)
        self.clock = None
        self._step: dict[str, int] = {}  # session -> index of its current or next step
        self.released_at: dict[tuple[str, int], float] = {}
        self.started_at: dict[tuple[str, int], float] = {}

    def _now(self) -> float:
        if self.clock is None:
            raise RuntimeError("HindsightOracle.clock is not set: give it the replay's clock "
                               "(e.g. `oracle.clock = lambda: sim.now`) before the run")
        return self.clock()

    def released(self, session_id: str) -> None:
        now = self._now()
        self.released_at.setdefault((session_id, self._step.get(session_id, 0)), now)
        if self._state.get(session_id) == _PAUSED and self._ready[session_id] > now:
            return  # the earlier run admitted this step later: not needed before then
        super().released(session_id)

    def started(self, session_id: str) -> None:
        self.started_at.setdefault((session_id, self._step.get(session_id, 0)), self._now())
        super().started(session_id)

    def finished(self, session_id: str, now: float, tool_s: float) -> None:
        k = self._step.get(session_id, 0) + 1
        self._step[session_id] = k
        super().finished(session_id, now, tool_s + self.waits.get((session_id, k), 0.0))

    def recorded_waits(self) -> dict[tuple[str, int], float]:
        """This run's admission waits of the steps that read a context back (k >= 1)."""
        return {key: max(self.started_at[key] - t, 0.0)
                for key, t in self.released_at.items() if key[1] and key in self.started_at}


@dataclass(frozen=True)
class Run:
    """One recorded run: what it used and what it did."""
    source: str  # the policy, or `belady<-NAME`: belady with run NAME's waits
    result: SimResult
    waits: dict[tuple[str, int], float] = field(repr=False)
    demotions: int = 0  # sessions the scheduler demoted (the `workflow` scheduler's count)


def record(sessions: Sequence[Session], config: SimConfig, policy: EvictionPolicy | str,
           waits: Waits | None = None, source: str | None = None) -> Run:
    """Run `policy` (an instance, or a name built with the run's cost model) on the trace
    and record its schedule. An offline policy (`OFFLINE`) must be named: the one built here
    reads a `HindsightOracle` with `waits`; any other policy's run is only watched (its
    decisions do not read the oracle, so its result is what it is alone)."""
    name = policy if isinstance(policy, str) else policy.name
    oracle = HindsightOracle(sessions, config.cost.kv_spec.block_size, waits=waits)
    if name in OFFLINE:
        if not isinstance(policy, str):
            raise ValueError(f"record: give the offline policy {name!r} by name: it is built "
                             "here to read this run's HindsightOracle, and an instance would "
                             "read another oracle")
        policy = OFFLINE[name](oracle=oracle, cost=config.cost)
    elif waits:
        raise ValueError(f"record: waits steer the offline policies {sorted(OFFLINE)} only, "
                         f"not {name!r}")
    elif isinstance(policy, str):
        policy = make_policy(policy, cost=config.cost)
    if getattr(policy, "needs_oracle", False) and getattr(policy, "oracle", None) is not oracle:
        raise ValueError(f"record: offline policy {name!r} is not one of {sorted(OFFLINE)}")
    sim = Simulator(sessions, config, policy=policy)
    sim.oracle = oracle  # the replay reports to it (a belady reads it too)
    oracle.clock = lambda: sim.now
    result = sim.run()
    return Run(source or name, result, oracle.recorded_waits(),
               getattr(sim.scheduler, "num_demotions", 0))


@dataclass(frozen=True)
class Reference:
    """The result of `best_offline`: the least recomputation of its runs and all of them."""
    best: Run
    runs: tuple[Run, ...]

    @property
    def recomputed_tokens(self) -> int:
        return self.best.result.recomputed_tokens


def best_offline(sessions: Sequence[Session], config: SimConfig,
                 schedules: Sequence[Run] = (), rounds: int = 1,
                 policies: Sequence[str] = tuple(OFFLINE)) -> Reference:
    """Each offline policy of `policies` from the trace's own times, from the waits of each
    given run and of belady's own, then `rounds` more times from the best offline run so
    far; the least of these offline runs.

    Args:
        sessions: the trace.
        config: capacity, preset, scheduler (its policy is ignored).
        schedules: recorded runs of the same trace and config (`record`) whose waits steer
            the offline policies; their own results are not candidates.
        rounds: further runs of each offline policy from the best run's waits, at most; a
            round stops them when the best run's waits have already steered them.
        policies: the offline policies run (names of `OFFLINE`).
    """
    if rounds < 0:
        raise ValueError(f"best_offline: rounds must be >= 0, got {rounds!r}")
    if not policies or any(p not in OFFLINE for p in policies):
        raise ValueError(f"best_offline: policies must name some of {sorted(OFFLINE)}, got "
                         f"{list(policies)!r}")
    runs = [record(sessions, config, p) for p in policies]
    for src in (runs[0], *schedules):
        runs += [record(sessions, config, p, src.waits, f"{p}<-{src.source}")
                 for p in policies]
    tried = {runs[0].source, *(r.source for r in schedules)}
    for _ in range(rounds):
        src = min(runs, key=lambda r: r.result.recomputed_tokens)
        if src.source in tried:
            break  # its waits already steered every offline policy: a round would repeat runs
        tried.add(src.source)
        runs += [record(sessions, config, p, src.waits, f"{p}<-{src.source}")
                 for p in policies]
    best = min(runs, key=lambda r: r.result.recomputed_tokens)
    return Reference(best, tuple(runs))
