"""What an oracle admission order would give at bench/scheduling.py's 2x misses: the
default `workflow` scheduler with one change, sessions waiting for admission taken in order
of their true remaining steps (fewest first, ties in queue order). The trace knows each
session's step count; no online scheduler does (the Agent Execution Graph predicts a
workflow's mean). Under a saturated GPU, shortest-remaining-first is the order that lowers
mean waiting most, so this row says how much of a miss admission order could recover at
all. It is evidence for the report, never a default (the library's registry does not hold it), run
at the pressured points (capacity < 100%) of the report seed and the held-out seeds.

    python bench/scheduling.py              # its rows are in the per-family tables
"""

from __future__ import annotations

from typing import Any

from kvsaga.scheduler import WorkflowScheduler
from kvsaga.sim.simulator import SimConfig, Simulator

NAME = "workflow-oracle"


def remaining_steps(req: Any) -> int:
    """Steps the request's session has left, this one included (a simulated request)."""
    return len(req.session.steps) - req.k


class OracleOrder(WorkflowScheduler):
    """`workflow` with each tenant's admission queue in true-remaining-steps order."""

    name = NAME

    def _sort_pending(self) -> None:
        """Replaces the default's order (`admission_order`) at the same point of
        `_candidate`, at every call."""
        for q in self._pending.values():
            ordered = sorted(q, key=remaining_steps)  # stable: ties keep queue order
            q.clear()
            q.extend(ordered)


def simulator(sessions, cfg: SimConfig) -> Simulator:
    """A simulator of `cfg` (scheduler "workflow") whose scheduler is the oracle order, with
    the same parameters (it is not in the library's registry: nothing outside this bench
    can ask for it)."""
    sim = Simulator(sessions, cfg)
    sim.scheduler = OracleOrder(sim.manager, max_num_seqs=cfg.max_num_seqs,
                                max_num_batched_tokens=cfg.max_num_batched_tokens,
                                **(cfg.scheduler_params or {}))
    return sim


def oracle_tasks(families: list[str], grid, seed: int, policy: str) -> list[tuple]:
    """The oracle order at every pressured grid point (capacity < 100%) of `seed`."""
    return [(f, seed, load, frac, NAME, policy, None) for f in families
            for load, frac in grid if frac < 1]


def oracle_line(f: dict, w: dict, o: dict, free: dict | None) -> str:
    """The oracle order's mean TCT against fcfs+lru (`f`) and the default (`w`), and where
    the default's GPU time goes against the same trace with no memory pressure (`free`)."""
    line = (f" An oracle admission order (true remaining steps, fewest first; "
            f"bench/scheduling_oracle.py) gives {o['tct_mean_s']:.1f} s "
            f"({f['tct_mean_s'] / o['tct_mean_s']:.2f}x fcfs+lru).")
    if free is not None:
        line += (f" GPU time: {w['busy_s']:.0f} s in {w['num_batch_steps']} batch steps, "
                 f"of which {w['recomputed_tokens'] / max(w['computed_tokens'], 1):.0%} of "
                 f"the prefill tokens recomputed, against {free['busy_s']:.0f} s in "
                 f"{free['num_batch_steps']} batch steps at 100%.")
    return line


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/scheduling.py"))
