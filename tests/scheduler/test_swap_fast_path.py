"""The simulator's decode runs (its fast path) take the reference path's decisions under
every swap value of `readmit_charge` (kvsaga/scheduler/room_swap.py): the "room_returns"
values read the clock in their forecasts, so `refusal_until` holds no refusal while a
demoted step waits under them (session 33: before, the fast path held such refusals across
decode runs and its results differed from the reference's, on this trace under the round-39
to round-41 values and at bfcl 1x 25% under the default)."""

from __future__ import annotations

import pytest

from kvsaga.scheduler.room_swap import READMIT_ROOM_SWAP
from kvsaga.sim.simulator import SimConfig, Simulator
from tests.sim.test_decode_runs import same, tiny_trace


@pytest.mark.parametrize("charge", READMIT_ROOM_SWAP)
def test_the_fast_path_equals_the_reference_under_each_swap_value(charge):
    config = SimConfig(num_gpu_blocks=380, scheduler="workflow", policy="graph",
                       scheduler_params={"admission_order": "predicted", "aging_s": 5.0,
                                         "readmit_charge": charge})
    rows = []
    for reference in (True, False):
        sim = Simulator(tiny_trace(), config, reference=reference)
        rows.append((sim.run().to_dict(), sim.scheduler.num_session_admissions))
    assert same(rows[0][0], rows[1][0]) and rows[0][1] == rows[1][1]
