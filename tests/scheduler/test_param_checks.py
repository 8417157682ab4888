"""Regression (session 35, fuzz lane): every scheduler parameter refuses a bad value with a
ValueError naming it, at construction.

Found by trying bad values for each name `scheduler_params` lists, then driving the
accepted ones through tests/test_manager_stateful.py's `SchedulerMachine`:
- `make_scheduler("workflow", m, tenant_weights=1.5)` raised a TypeError ("'float' object is
  not iterable"), and tenant_weights="x" a ValueError from dict() that named nothing;
- horizon_steps=inf was accepted, then the first arrival's `schedule` raised OverflowError
  ("cannot convert float infinity to integer") out of the working-set charge: arrive one
  step, schedule.
"""

from __future__ import annotations

import math

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.scheduler import SCHEDULERS, make_scheduler, scheduler_params
from tests.sched_helpers import ToyExecutor, ToyRequest


def _manager() -> KVCacheManager:
    return KVCacheManager(KVSpec(1, 1, 4, block_size=4), 12, clock=lambda: 0.0)


@pytest.mark.parametrize("bad", [1.5, -1, "x", "predicted", True, [("a", 1.0)], {1: 1.0},
                                 {"a": math.inf}, {"a": math.nan}, {"a": 0.0}, {None: "1"}])
def test_tenant_weights_checked(bad):
    with pytest.raises(ValueError, match=r"scheduler parameter tenant_weights"):
        make_scheduler("workflow", _manager(), tenant_weights=bad)


def test_tenant_weights_good():
    s = make_scheduler("workflow", _manager(), tenant_weights={"a": 2, None: 0.5})
    assert s.tenant_weights == {"a": 2, None: 0.5}
    assert make_scheduler("workflow", _manager(), tenant_weights=None).tenant_weights == {}


def test_horizon_steps_must_be_finite():
    with pytest.raises(ValueError, match=r"horizon_steps must be a finite number >= 0, got inf"):
        make_scheduler("workflow", _manager(), horizon_steps=math.inf)


def test_huge_horizon_still_schedules():
    """A finite horizon, however large, is a working set to charge (the infinite one failed
    here, at the first schedule)."""
    m = _manager()
    s = make_scheduler("workflow", m, horizon_steps=1e300, max_num_seqs=2,
                       max_num_batched_tokens=8)
    s.add(ToyRequest("a", [1, 2, 3, 4, 5], 2, arrival=0.0), 0.0)
    ex = ToyExecutor(m)
    for t in range(6):
        ex.run(s, s.schedule(float(t), ex), float(t))
    m.check_integrity()


BAD = [-1, -0.5, "x", None, math.nan, -math.inf, [], {}]


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_parameter_refuses_bad_values_naming_itself(name):
    """Every parameter, every value from a list of bad ones: refused with a ValueError that
    names the parameter, or accepted (None and 0 mean something for some); never another
    error type."""
    refused = 0
    for p in scheduler_params(name):
        for v in BAD:
            try:
                make_scheduler(name, _manager(), **{p: v})
            except ValueError as e:
                assert p in str(e), (p, v, str(e))
                refused += 1
    assert refused >= len(scheduler_params(name)) * 4
