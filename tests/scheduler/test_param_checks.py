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
from kvsaga.scheduler.base import MAX_COUNT, MAX_HORIZON_STEPS
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
    """A horizon up to its bound, with the largest growth prior, is a working set to charge
    (the infinite one failed here, at the first schedule)."""
    m = _manager()
    s = make_scheduler("workflow", m, horizon_steps=MAX_HORIZON_STEPS,
                       prior_growth_tokens=MAX_COUNT, max_num_seqs=2, max_num_batched_tokens=8)
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


@pytest.mark.parametrize("param,value", [
    ("backfill_window", 2**63),  # passed, then `islice` raised inside `schedule`
    ("decode_prefill_tokens", 10**400),  # OverflowError inside `schedule`
    ("prior_growth_tokens", 10**400),  # OverflowError at construction
    ("horizon_steps", 1e308),  # horizon x growth overflowed to inf inside `schedule`
    ("overcommit", 10**400),  # an int beyond float range: OverflowError, naming nothing
    ("demote_factor", -10**400),
    ("length_prior", 10**400),  # OverflowError at construction (its own check)
    ("growth_reserve", 1e308),  # z x sd overflowed to inf inside `schedule` (review s50 4)
], ids=lambda v: v if isinstance(v, str) else "")
def test_huge_values_are_refused_naming_the_parameter(param, value):
    """Review s47 sched 3: values far above any sane one (they may come through
    `scheduler_params` JSON) were accepted and crashed mid-run, or raised OverflowError
    naming nothing; each is refused at construction with a ValueError naming it."""
    with pytest.raises(ValueError, match=rf"scheduler parameter {param} must be a"):
        make_scheduler("workflow", _manager(), **{param: value})


def test_the_error_names_the_bound_broken():
    with pytest.raises(ValueError, match=r"backfill_window must be an integer <= 2147483647, "
                                         r"got 9223372036854775808"):
        make_scheduler("workflow", _manager(), backfill_window=2**63)
    with pytest.raises(ValueError, match=r"horizon_steps must be a number <= 1e\+09, "
                                         r"got 1e\+308"):
        make_scheduler("workflow", _manager(), horizon_steps=1e308)
    with pytest.raises(ValueError, match=r"overcommit must be a number within float range, "
                                         r"got an integer of 1329 bits"):
        make_scheduler("workflow", _manager(), overcommit=10**400)


@pytest.mark.parametrize("param,value", [("backfill_window", MAX_COUNT),
                                         ("decode_prefill_tokens", MAX_COUNT)])
def test_the_bounds_themselves_schedule(param, value):
    """The largest accepted window and cap run (the window tries every waiting session,
    the cap caps nothing)."""
    m = _manager()
    s = make_scheduler("workflow", m, max_num_seqs=2, max_num_batched_tokens=8,
                       **{param: value})
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", [1, 2, 3, 4, 5], 2, arrival=0.0), 0.0)
    s.add(ToyRequest("b", [9, 8, 7, 6], 2, arrival=0.0), 0.0)
    for t in range(6):
        ex.run(s, s.schedule(float(t), ex), float(t))
    assert not s.has_work
    m.check_integrity()


def _grow(growth_reserve: float) -> None:
    """Session a's steps grow by 4 then 20 tokens (a growth spread of several tokens),
    then b arrives: admission computes `growth_reserve` z x that spread."""
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 64, policy="lru", clock=lambda: 0.0)
    s = make_scheduler("workflow", m, growth_reserve=growth_reserve)
    ex = ToyExecutor(m)
    a = ToyRequest("a", list(range(8)), 2, last=False)
    s.add(a, 0.0)
    for k in range(20):
        now = float(k)
        ex.run(s, s.schedule(now, ex), now)
        if k in (3, 7):
            more = list(range(100, 104)) if k == 3 else list(range(200, 220))
            a = ToyRequest("a", a.token_ids + more, 2, last=False, resumed=True,
                           arrival=now + 1)
            s.add(a, now + 1)
        if k == 11:
            s.add(ToyRequest("b", list(range(300, 308)), 2, arrival=now + 1), now + 1)
    m.check_integrity()
    # (z = 0 keeps nothing; the bound keeps more room than the pool has)
    assert (s._reserve_blocks() > m.pool.num_blocks) == (growth_reserve > 0)


def test_growth_reserve_bound():
    """Review s50 scheduler 4: growth_reserve=1e308 was taken (only inf was refused), then
    `_reserve_blocks` raised OverflowError at b's admission once a's growth spread was a few
    tokens. It is refused naming the bound; the bound itself runs that trace through."""
    with pytest.raises(ValueError, match=r"growth_reserve must be a number <= 1e\+06, "
                                         r"got 1e\+308"):
        _grow(1e308)
    with pytest.raises(ValueError, match=r"growth_reserve must be finite, got inf"):
        make_scheduler("workflow", _manager(), growth_reserve=math.inf)
    _grow(1e6)  # `working_set_gate.MAX_GROWTH_RESERVE`
    _grow(0.0)
