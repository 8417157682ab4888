"""Bounded waiting (`WorkflowScheduler(max_wait_s=...)`, the reserve stated in
`kvsaga.scheduler.admission_order`): a large session that small ones keep passing (another
tenant's entitled sessions, or a cheaper predicted order) is admitted within `max_wait_s`
plus the time the sessions admitted then take to leave; driven through the real scheduler
and manager."""

from __future__ import annotations

import math

import pytest

from kvsaga.scheduler import make_scheduler
from tests.sched_helpers import ToyRequest, drive
from tests.scheduler.helpers import manager, toks, wf

SMALLS = 150  # one small session arrives per step for this many steps
LARGE_AT = 3.0  # the large session arrives once small ones are admitted
DRAIN = 4  # steps a small session admitted before the reserve takes to leave, with slack


def _stream(large_tenant: str | None, small_tenant: str | None) -> list:
    """A small session (four tokens of output, then it ends) each step, and a large one at
    `LARGE_AT`: enough small ones are admitted at once that it never fits beside them."""
    arrivals = [(LARGE_AT, ToyRequest("L", toks(0, 48), tenant=large_tenant,
                                      arrival=LARGE_AT))]
    arrivals += [(float(t), ToyRequest(f"s{t}", toks(1000 * (t + 1), 8), max_new=4,
                                       tenant=small_tenant, arrival=float(t)))
                 for t in range(SMALLS)]
    return arrivals


CASES = {
    # Fifo, two tenants: the small sessions' tenant is below its share of the tiers, so its
    # sessions are tried whenever the large one (beyond its own tenant's share) does not fit.
    "other tenant's entitled sessions": ({"admission_order": "fifo"}, "A", "B"),
    # One tenant, predicted order: every small session is predicted cheaper, so it leads
    # the queue; aging brings the large one forward only after aging_s x ln(cost ratio).
    "cheaper predicted sessions": ({"admission_order": "predicted", "aging_s": 1000.0},
                                   None, None),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("max_wait_s", [10.0, 30.0])
def test_a_large_session_is_admitted_within_the_bound(case, max_wait_s):
    params, large, small = CASES[case]
    m = manager(16)
    s = wf(m, max_wait_s=max_wait_s, **params)
    admitted, _ = drive(s, _stream(large, small))
    at = dict((sid, t) for t, sid in admitted)
    bound = LARGE_AT + max_wait_s
    assert bound - DRAIN < at["L"] <= bound + DRAIN, (case, at["L"])
    # Nothing went ahead of it once its wait passed the bound.
    assert not [sid for t, sid in admitted if bound < t < at["L"]]
    assert len(at) == SMALLS + 1  # and every session got in


@pytest.mark.parametrize("case", CASES)
def test_without_the_reserve_the_stream_starves_it(case):
    """The same stream with a bound past its end: the large session waits for the whole
    stream (the reserve is what bounds it, not the order or the shares)."""
    params, large, small = CASES[case]
    m = manager(16)
    s = wf(m, max_wait_s=1e6, **params)
    admitted, _ = drive(s, _stream(large, small))
    at = dict((sid, t) for t, sid in admitted)
    assert at["L"] >= SMALLS - DRAIN, (case, at["L"])


def test_reserve_time_enters_wake_and_refusal():
    """The reserve starts at a time known in advance: a refusal before it lasts until it
    (`refusal_until`), and with nothing to run the scheduler asks to be woken then."""
    m = manager(16)
    s = wf(m, max_wait_s=5.0, admission_order="predicted")
    assert s.reserve_at == math.inf and s.wake_time == math.inf
    s.add(ToyRequest("a", toks(0, 8), arrival=2.0), 2.0)
    assert s.reserve_at == 7.0
    assert s.refusal_until(3.0) <= 7.0
    assert s.wake_time <= 7.0


@pytest.mark.parametrize("bad", [math.inf, -1.0, float("nan"), "10"])
def test_bad_max_wait_s_is_rejected(bad):
    with pytest.raises(ValueError, match="max_wait_s"):
        make_scheduler("workflow", manager(16), max_wait_s=bad)
