"""`readmit_charge` "room_returns_fair" (kvsaga/scheduler/room_swap.py, `--fit` round 32):
round 31's "room_returns" that also refuses a swap whose victims include a session of a
tenant other than the admitted step's while that tenant is at or below its fair share by
Agent Fair Share's deficit (`FairShare.deficits`, the measure the admission order picks
tenants by; a tenant not backlogged has none kept and counts as exactly at its share). With
one tenant it decides as "room_returns"."""

from __future__ import annotations

import pytest

from kvsaga.scheduler.room_swap import (
    PRICED_MARGIN,
    READMIT_ROOM_RETURNS,
    READMIT_ROOM_RETURNS_FAIR,
    READMIT_ROOM_SWAP,
)
from tests.sched_helpers import ToyRequest
from tests.scheduler.demoting_machine import DEMOTING, machines
from tests.scheduler.helpers import big_demoted, decision_trace, toks
from tests.scheduler.readmit_common import assert_value_named
from tests.scheduler.test_room_priced import _price
from tests.scheduler.test_room_returns import _clears_in
from tests.scheduler.test_room_swap import _queued


def _two_tenants(charge, o_tenant, deficit=None):
    """`tests.scheduler.helpers.big_demoted` with tenants: keep and big of tenant "A"
    (weight 3), o of `o_tenant` (weight 1 for "B": its memory share, a quarter of the
    32-block tiers, is below o's 13 blocks, so the shrink may take o). big is demoted, o
    takes its room and pauses; big's next step is queued at 2.0, every pause expected to
    last 10 s, the shortage predicted to clear before o's return (o costs its
    recomputation alone) and a learned wait far above the margin: "room_returns" swaps,
    demoting o. `deficit` given: "B" is backlogged (a step of a new session of "B" waits)
    with that AFS deficit. Returns (manager, scheduler, executor, big's step)."""
    m, s, ex, big2 = big_demoted(charge, "A", o_tenant, tenant_weights={"A": 3.0, "B": 1.0})
    assert s.sessions["o"].tenant == o_tenant and big2.tenant == "A"
    s._expected_pause = lambda sess: 10.0
    s.add(big2, 2.0)
    if deficit is not None:
        s.add(ToyRequest("n", toks(2000, 100), max_new=1, last=False, workflow="w",
                         tenant="B", arrival=1.5), 1.5)
        assert "B" in s.deficits
        s._fair.deficits["B"] = deficit
    assert s._swap_victims(big2, s.lookup(big2), 2.0) == ["o"]
    _clears_in(s, s._return_at("o") - 2.0 - 0.01)
    s._readmit_waits.observe(None, 100.0 * PRICED_MARGIN * _price(s, ["o"]) + 1.0)
    return m, s, ex, big2


def test_fair_follows_room_returns():
    assert READMIT_ROOM_RETURNS_FAIR == "room_returns_fair"
    i = READMIT_ROOM_SWAP.index(READMIT_ROOM_RETURNS_FAIR)
    assert READMIT_ROOM_SWAP[i - 1] == READMIT_ROOM_RETURNS


def _outcome(s, ex):
    out = s.schedule(2.0, ex)
    return (sorted(r.session_id for r in out.admitted), sorted(s.sessions), sorted(s._deferred),
            s._committed)


@pytest.mark.parametrize("o_tenant,deficit,fair_swaps", [
    ("B", None, False),   # B not backlogged: at its share (no deficit kept), refused
    ("B", 0.0, False),    # backlogged exactly at its share: refused
    ("B", 0.4, False),    # below its share (owed admissions): refused
    ("B", -0.4, True),    # above its share (admitted more than its weight): allowed
    ("A", None, True),    # the victim is of big's own tenant: allowed
])
def test_a_victim_of_another_tenant_at_or_below_its_share_refuses_the_swap(
        o_tenant, deficit, fair_swaps):
    """On the same two-tenant state "room_returns" swaps (big's step admitted on room, o
    left admitted for the shrink, the load over the tiers); "room_returns_fair" swaps only
    where o is of big's own tenant or of a tenant above its fair share by AFS's deficit.
    Refused, it schedules as "uncached" does (here AFS's memory share demotes o at once for
    big's tenant, within its share, when o is of "B": `_reclaim_share`)."""
    runs = {}
    for charge in ("uncached", READMIT_ROOM_RETURNS, READMIT_ROOM_RETURNS_FAIR):
        m, s, ex, big2 = _two_tenants(charge, o_tenant, deficit)
        swaps = s._readmits_swap(big2, s.lookup(big2), 2.0)
        runs[charge] = (swaps, _outcome(s, ex))
        m.check_integrity()
    assert runs["uncached"][0] is False and runs[READMIT_ROOM_RETURNS][0] is True
    assert runs[READMIT_ROOM_RETURNS][1][0] == ["big"] and "o" in runs[READMIT_ROOM_RETURNS][1][1]
    assert runs[READMIT_ROOM_RETURNS][1] != runs["uncached"][1]
    assert runs[READMIT_ROOM_RETURNS_FAIR][0] is fair_swaps
    like = READMIT_ROOM_RETURNS if fair_swaps else "uncached"
    assert runs[READMIT_ROOM_RETURNS_FAIR][1] == runs[like][1]


def test_fair_victims_reads_the_deficits():
    """`_fair_victims` alone: a victim of the step's own tenant never refuses; another
    tenant's refuses at deficit >= 0 or absent, not below 0."""
    _, s, _, big2 = _two_tenants(READMIT_ROOM_RETURNS_FAIR, "B", 0.0)
    assert not s._fair_victims(big2, ["o"])
    assert s._fair_victims(big2, [])
    s._fair.deficits["B"] = -1e-9
    assert s._fair_victims(big2, ["o"])
    del s._fair.deficits["B"]
    assert not s._fair_victims(big2, ["o"])


@pytest.mark.parametrize("pause_s", [10.0, 0.1])
@pytest.mark.parametrize("wait_scale,clear_shift", [(100.0, -0.01), (100.0, 1.0), (0.5, -0.01)])
def test_one_tenant_decides_as_room_returns(pause_s, wait_scale, clear_shift):
    """One tenant (`_queued`, no tenants): the same decisions, the same admitted steps and
    the same state as "room_returns" over a few steps, swap or not."""
    runs = []
    for charge in (READMIT_ROOM_RETURNS, READMIT_ROOM_RETURNS_FAIR):
        m, s, ex, big2 = _queued(charge, pause_s)
        back = s._return_at("o")
        _clears_in(s, back - 2.0 + clear_shift)
        s._readmit_waits.observe(None, wait_scale * PRICED_MARGIN * _price(s, ["o"]) + 1e-3)
        runs.append(decision_trace(m, s, ex))
    assert runs[0] == runs[1]


def test_value_is_named_and_refused_values_name_it():
    assert_value_named("room_returns_fair", "room_return_fair")


globals().update(machines("room_returns_fair",
                          {**DEMOTING, "readmit_charge": "room_returns_fair"}))
