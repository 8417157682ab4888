"""Per-victim regret against the future: what a policy evicted that was needed soonest.

`record_regret(sim)` makes a simulator's policy note, at every victim search, each victim's
class and its next use from a `TraceOracle` that the simulator feeds (its own, or one set as
`sim.oracle` before the run: an oracle only the policy holds would never hear what happens,
and every live block would read as needed now). Classes, from the manager's view:

- `demoted`: a live session's block while the scheduler has demoted the session
  (`session_deferred`): its next step waits to be admitted again, whatever its tool does;
- `paused`: a live session's block, the session waiting on its tool (or its tool returned
  and the simulator has not yet queued the step: then needed at once);
- `queued`: a live session's block, its tool returned and its step waits for admission;
- `running`: a live session's block while its step is open (a preempted retry);
- `plain`: cache owned by no session (a shared prefix, or an ended session's) that a later
  step reads;
- `dead`: cache owned by no session that no later step reads.

A victim is *reused* when a later step reads it (its eviction costs a rebuild), with the
time until then; it is *premature* when some block left cached at that search is next used
later than it (Belady would have taken that one instead), and its *regret* is how much
sooner it is needed than the latest next use among the blocks left (seconds, capped at
`horizon_s`). The oracle's next use of a live session's block is its trace release time;
the step that reads it may start later (admission), so each session victim also records
the simulated time until its session's next step actually started (`median_step_s`).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvsaga.pool import CACHED
from kvsaga.sim.oracle import TraceOracle

if TYPE_CHECKING:
    from kvsaga.sim.simulator import Simulator

CLASSES = ("demoted", "paused", "queued", "running", "plain", "dead")


@dataclass
class ClassRegret:
    """What one class of victims cost."""

    victims: int = 0
    premature: int = 0
    reused: int = 0  # victims read again later at all
    regret_s: list[float] = field(default_factory=list)
    next_use_s: list[float] = field(default_factory=list)  # of the reused victims
    evicted: list[tuple[float, str]] = field(default_factory=list)  # (when, session)


@dataclass
class RegretLog:
    """Per class, over a whole run."""

    horizon_s: float
    by_class: dict[str, ClassRegret] = field(default_factory=lambda: defaultdict(ClassRegret))
    starts: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def _until_step(self, c: ClassRegret) -> float:
        """Median simulated seconds from a session victim's eviction to its session's next
        step start (inf: none, or no session victims)."""
        waits = []
        for when, sid in c.evicted:
            st = self.starts.get(sid, [])
            i = bisect_right(st, when)
            waits.append(st[i] - when if i < len(st) else math.inf)
        waits.sort()
        return waits[len(waits) // 2] if waits else math.inf

    def summary(self) -> dict[str, dict[str, float]]:
        total = sum(c.victims for c in self.by_class.values()) or 1
        out = {}
        for name in CLASSES:
            c = self.by_class.get(name)
            if c is None or not c.victims:
                continue
            reg, nxt = sorted(c.regret_s), sorted(c.next_use_s)
            out[name] = {
                "share": c.victims / total, "victims": c.victims,
                "premature": c.premature / c.victims, "reused": c.reused,
                "median_regret_s": reg[len(reg) // 2] if reg else 0.0,
                "median_next_use_s": nxt[len(nxt) // 2] if nxt else math.inf,
                "median_step_s": self._until_step(c),
            }
        return out


def record_regret(sim: Simulator, horizon_s: float = 600.0) -> RegretLog:
    """Make `sim`'s policy log its victims' regret during `sim.run()` (call it before).

    The next uses come from `sim.oracle`, which the replay feeds: the simulator's own when
    its policy reads one, else a new one set there (as `hindsight.record` does).

    Returns:
        The log that fills as the simulation runs.
    """
    if sim.now != 0.0:
        raise ValueError(f"record_regret: the simulation has already run to {sim.now} s; "
                         "call it on a fresh Simulator, before run()")
    policy = sim.manager.policy
    oracle = sim.oracle
    if oracle is None:
        oracle = sim.oracle = TraceOracle(sim.sessions, sim.block_size, sim.synth)
    log = RegretLog(horizon_s)
    choose = policy.choose_victims
    demoted: set[str] = set()
    deferred_hook, started_hook = policy.session_deferred, policy.step_started

    def session_deferred(session, deferred: bool, now: float) -> None:
        (demoted.add if deferred else demoted.discard)(session.session_id)
        deferred_hook(session, deferred, now)

    def step_started(session, now: float) -> None:
        log.starts[session.session_id].append(now)
        started_hook(session, now)

    def next_use(b: int, now: float) -> float:
        view = policy.view
        return oracle.next_use(view.block_owner[b], view.block_hash[b],
                               view.block_position[b], now)

    def classify(b: int, nu: float, now: float) -> str:
        manager = policy.view  # in a simulation, the manager itself
        owner = manager.block_owner[b]
        s = manager.sessions.get(owner) if owner is not None else None
        if s is None:
            return "dead" if math.isinf(nu) else "plain"
        if s.is_running:
            return "running"
        if owner in demoted:
            return "demoted"
        return "queued" if oracle.is_waiting(owner) else "paused"

    def recording(num_blocks: int, now: float) -> list[int]:
        victims = choose(num_blocks, now)
        if not victims:
            return victims
        state = policy.view.pool.state
        chosen = set(victims)
        kept = [next_use(b, now) for b in range(len(state))
                if state[b] == CACHED and b not in chosen]
        latest = max(kept, default=-math.inf)
        for b in victims:
            nu = next_use(b, now)
            c = log.by_class[classify(b, nu, now)]
            c.victims += 1
            owner = policy.view.block_owner[b]
            if owner is not None:
                c.evicted.append((now, owner))
            if not math.isinf(nu):
                c.reused += 1
                c.next_use_s.append(nu - now)
            if nu < latest:
                c.premature += 1
                # The regret, not the latest next use, is capped: capping the latter at
                # now + horizon_s made a victim needed past that read as a negative regret.
                c.regret_s.append(min(latest - nu, horizon_s))
        return victims

    policy.choose_victims = recording
    # LRU on the C++ core lets the manager evict its queue's head without asking
    # choose_victims (the same victims); the log must see every choice.
    policy.victim_queue = None
    policy.session_deferred = session_deferred
    policy.step_started = step_started
    return log
