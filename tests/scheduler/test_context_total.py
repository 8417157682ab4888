"""Review s50 scheduler 2: `WaitCauses._context_blocks` summed the admitted sessions'
context blocks afresh on every read (per admission attempt, per shrink check: a shrink under
shrink_on="contexts" was quadratic). It is now a running total kept by `_set_blocks` and
`Demotions._forget`. Here random small traces run through kvsaga.sim under fcfs and many
workflow parameter sets, and every read of the total is checked against the full sum (also
an invariant of `DemotingMachine`'s books). Likewise the count of resumed steps waiting
that `DecodeStall._demoted_waiting` reads (review s50 scheduler 3)."""

from __future__ import annotations

import math
import random

import pytest

from kvsaga.scheduler.decode_stall import DecodeStall
from kvsaga.scheduler.wait_causes import WaitCauses
from kvsaga.sim.config import SimConfig
from kvsaga.sim.simulator import Simulator, blocks_needed
from kvsaga.sim.trace import Session, SharedPrefix, Step

PARAMS = [
    {},
    {"admission_order": "fifo"},
    {"admission_order": "gittins"},
    {"readmit_order": "first"},
    {"undo_demotion": True},
    {"undo_demotion": "unclaimed"},
    {"readmit_charge": "room"},
    {"readmit_charge": "uncached"},
    {"readmit_charge": "room_contexts"},
    {"paused_growth": True, "queue_shrink": True},
    {"growth_quantile": 0.9},
    {"growth_reserve": 1.0, "paused_reserve": True},
    {"tail_wait_factor": 3.0},
    {"shrink_order": "smallest", "shrink_on": "contexts"},
    {"decode_prefill_when": "recompute"},
    {"max_wait_s": 5.0, "idle_admit_s": math.inf},
    {"tenant_weights": {"a": 3.0, "b": 1.0}},
]
PREFIX = {"g0": 0, "g1": 16, "g2": 100}


def _trace(rng: random.Random, n: int) -> list[Session]:
    out = []
    for i in range(n):
        k = rng.randint(1, 5)
        steps = tuple(Step(rng.randint(1, 300), rng.randint(1, 60),
                           None if j == k - 1 else rng.choice(["x", "y", None]),
                           0.0 if j == k - 1 else rng.choice([0.0, 0.5, 3.0, 30.0, 200.0]))
                      for j in range(k))
        g = rng.choice(sorted(PREFIX))
        out.append(Session(f"s{i}", rng.choice(["w1", "w2"]), rng.uniform(0, 60),
                           SharedPrefix(g, PREFIX[g]), steps,
                           tenant=rng.choice([None, "a", "b", "c"])))
    return out


def run_seed(seed: int) -> int:
    """One random trace and configuration through the simulator (as `Simulator.run`
    does, checked); the numbers of reads checked so far (total, count)."""
    rng = random.Random(seed)
    sessions = _trace(rng, rng.randint(2, 12))
    name = "fcfs" if rng.random() < 0.15 else "workflow"
    params = {} if name == "fcfs" else dict(rng.choice(PARAMS))
    need = max(blocks_needed(s, SimConfig().cost.kv_spec) for s in sessions)
    cfg = SimConfig(num_gpu_blocks=need + rng.randint(0, 40),
                    num_host_blocks=rng.choice([None, 0, 20, 200]),
                    max_num_batched_tokens=rng.choice([64, 256, 2048]),
                    max_num_seqs=rng.choice([2, 4, 64]),
                    policy=rng.choice(["lru", "graph", "saga", "ttl", "adaptive"]),
                    scheduler=name, scheduler_params=params)
    Simulator(sessions, cfg).run()
    return reads


reads = [0, 0]
_summed = WaitCauses._context_blocks


def _checked(self) -> int:
    reads[0] += 1
    total = _summed(self)
    assert total == self._context_blocks_summed(), (total, self._context_blocks_summed())
    return total


_counted = DecodeStall._demoted_waiting


def _checked_count(self, need: int) -> bool:
    """Review s50 scheduler 3: the resumed steps waiting, counted as they queue and leave
    (was a scan of every waiting step per decode step), checked against the scan."""
    reads[1] += 1
    assert self._pending_resumed == self._demoted_waiting_scanned()
    return _counted(self, need)


@pytest.fixture
def checked_total(monkeypatch):
    reads[:] = [0, 0]
    monkeypatch.setattr(WaitCauses, "_context_blocks", _checked)
    monkeypatch.setattr(DecodeStall, "_demoted_waiting", _checked_count)


@pytest.mark.parametrize("first", range(0, 60, 20))
def test_the_running_total_is_the_sum_at_every_read(checked_total, first):
    for seed in range(first, first + 20):
        run_seed(seed)
    assert reads[0] > 0 and reads[1] > 0  # the checks ran
