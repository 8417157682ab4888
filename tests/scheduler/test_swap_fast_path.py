"""The simulator's decode runs (its fast path) take the reference path's decisions under
every swap value of `readmit_charge` (kvsaga/scheduler/room_swap.py): the "room_returns"
values read the clock in their forecasts, so `refusal_until` holds no refusal while a
demoted step waits under them (session 33: before, the fast path held such refusals across
decode runs and its results differed from the reference's, on this trace under the round-39
to round-41 values and at bfcl 1x 25% under the default)."""

from __future__ import annotations

import pytest

from kvsaga.scheduler.room_swap import READMIT_ROOM_SWAP
from tests.scheduler.helpers import assert_fast_path_as_reference


@pytest.mark.parametrize("charge", READMIT_ROOM_SWAP)
def test_the_fast_path_equals_the_reference_under_each_swap_value(charge):
    assert_fast_path_as_reference("graph", admission_order="predicted", aging_s=5.0,
                                  readmit_charge=charge)
