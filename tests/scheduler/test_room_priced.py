"""`readmit_charge` "room_priced" (kvsaga/scheduler/room_swap.py, `--fit` round 30): round 29's
swap (a demoted session's step the gate refuses, admitted on the pool's check alone where the
shrink its admission makes brings the load within the tiers) made only where the mean wait of
a demoted session's step to be admitted again, observed so far, exceeds `PRICED_MARGIN` times
the recomputation the shrink's victims are expected to cost at the eviction policy's prices;
else it is charged "uncached". Refused before any such wait was seen; no timer; the value is
named and a refused value names it; the scheduler state machine runs with it under every
policy."""

from __future__ import annotations

import math

import pytest

from kvsaga.policy.cost import PrefillCost
from kvsaga.scheduler.room_swap import PRICED_MARGIN, READMIT_ROOM_PRICED, READMIT_ROOM_SWAP
from tests.sched_helpers import ToyRequest
from tests.scheduler.demoting_machine import DEMOTING, machines
from tests.scheduler.helpers import assert_charged_uncached, toks
from tests.scheduler.readmit_common import assert_value_named
from tests.scheduler.test_room_swap import _queued, assert_no_swap_with_both_back


def _price(s, victims):
    """The swap's price as the rule computes it, with nothing observed: each victim's whole
    own context recomputed after its shared prefix, at the default `PrefillCost`."""
    total = 0.0
    for v in victims:
        i = s.sessions[v]
        own = max(i.context - i.shared, 0)
        total += PrefillCost().recompute_s(own, i.context - own)
    return total


def test_priced_is_a_swap_value_named_after_rounds_29s():
    assert READMIT_ROOM_PRICED == "room_priced" and READMIT_ROOM_SWAP[2] == READMIT_ROOM_PRICED
    assert PRICED_MARGIN == 2.0


def test_refused_before_any_wait_to_be_admitted_again_was_seen():
    """`_queued`: admitting big's step would make the shrink demote o alone; no demoted
    session has been admitted again yet, so there is no wait to price the saving with: the
    step waits, charged "uncached" (as the default would)."""
    m, s, ex, big2 = _queued(READMIT_ROOM_PRICED, 10.0)
    assert s._swap_victims(big2, s.lookup(big2), 2.0) == ["o"]
    assert s._readmit_waits.mean(None) is None
    assert big2 not in s.schedule(2.0, ex).admitted
    assert "big" in s._deferred
    m.check_integrity()


@pytest.mark.parametrize("ratio,admitted", [(1.01, True), (0.99, False)])
def test_admitted_only_where_the_wait_saved_beats_the_recomputation(ratio, admitted):
    """With the mean observed wait to be admitted again at `ratio` times `PRICED_MARGIN`
    times o's expected recomputation (its whole own context: the returns seen lost all of
    theirs), the swap is made just above the price and refused just below it; made, big's
    step is charged its whole context, over the tiers until the next finish's shrink."""
    m, s, ex, big2 = _queued(READMIT_ROOM_PRICED, 10.0)
    s._observe_return(big2, s.lookup(big2).gpu_hit_blocks * m.block_size)  # once a step
    assert s._return_count == 1 and s._return_lost == 0.0  # big's context is still cached
    s._return_lost = 1.0
    price = _price(s, ["o"])
    assert price > 0.0
    s._readmit_waits.observe(None, ratio * PRICED_MARGIN * price)
    out = s.schedule(2.0, ex)
    assert s._return_count == 1 and s._return_lost == 1.0  # not observed twice
    assert s._victims_recompute_s(["o"]) == pytest.approx(price)
    assert (big2 in out.admitted) is admitted
    assert ("big" in s._deferred) is not admitted
    if admitted:
        assert s._committed > s.overcommit * s.capacity
    m.check_integrity()


def test_a_victim_whose_contexts_survive_costs_nothing():
    """The returns seen so far found their contexts cached (big's, demoted, was never
    evicted): the price is 0, and any wait observed pays for the swap."""
    m, s, ex, big2 = _queued(READMIT_ROOM_PRICED, 10.0)
    s._readmit_waits.observe(None, 1e-6)
    assert big2 in s.schedule(2.0, ex).admitted
    assert s._return_lost == 0.0 and s._victims_recompute_s(["o"]) == 0.0
    m.check_integrity()


def test_the_learned_lost_share_prices_the_victims():
    """The recomputation a victim costs is its own context's mean lost share over the
    returns observed so far (`_observe_return`), recomputed after the part kept: half lost,
    about half the tokens recomputed, on a larger cached prefix (so not just half the
    price); none observed, the whole own context."""
    _, s, _, _ = _queued(READMIT_ROOM_PRICED, 10.0)
    whole = s._victims_recompute_s(["o"])
    assert whole == pytest.approx(_price(s, ["o"]))
    s._return_lost, s._return_count = 1.0, 2
    i = s.sessions["o"]
    n = round(0.5 * max(i.context - i.shared, 0))
    assert s._victims_recompute_s(["o"]) == pytest.approx(
        PrefillCost().recompute_s(n, i.context - n))
    assert 0.0 < s._victims_recompute_s(["o"]) < whole
    assert s._victims_recompute_s([]) == 0.0


def test_a_policy_cost_model_prices_the_recomputation():
    """An eviction policy with its own cost model (`recompute_s`) prices the victims."""
    _, s, _, _ = _queued(READMIT_ROOM_PRICED, 10.0)

    class Flat:
        def recompute_s(self, num_tokens, context_tokens):
            return 7.0

    try:
        s.manager.policy.cost = Flat()
    except (AttributeError, TypeError):
        pytest.skip("the policy takes no cost attribute")
    assert s._victims_recompute_s(["o", "keep"]) == 14.0


def test_observed_waits_are_the_demoted_steps_waits_to_be_admitted_again():
    """The wait learned is a demoted session's step's, from its arrival to its admission
    (`LeaveForecast._step_admitted`): big's step, queued at 2.0 and admitted again once keep
    and o have run their last steps, is observed waiting from 2.0 to then."""
    m, s, ex, big2 = _queued(READMIT_ROOM_PRICED, 10.0)
    assert big2 not in s.schedule(2.0, ex).admitted
    for sid, base in (("keep", 300), ("o", 700)):
        prev = m.sessions[sid]
        s.add(ToyRequest(sid, list(prev.token_ids) + toks(base + 50, 2), max_new=1,
                         last=True, resumed=True, arrival=2.1, workflow="w"), 2.1)
    at = None
    for t in (2.1, 2.2, 2.3, 2.4, 2.5, 2.6):
        out = s.schedule(t, ex)
        if big2 in out.admitted:
            at = t
            break
        ex.run(s, out, t)
    assert at is not None and at > 2.1 and "big" not in s._deferred
    assert s._readmit_waits.mean(None) == pytest.approx(at - 2.0)
    m.check_integrity()


def test_no_swap_where_the_shrink_cannot_bring_the_load_within():
    """keep's and o's next steps queued (both active): nothing the shrink may demote, so no
    swap however long the observed waits."""
    assert_no_swap_with_both_back(READMIT_ROOM_PRICED, 10.0, wait_s=1e9)


def test_no_timer_and_the_uncached_fallback():
    """The price changes only with admissions and finishes: no refusal bound, no wake-up of
    its own. Where it does not swap it charges "uncached"."""
    _, s, ex, big2 = _queued(READMIT_ROOM_PRICED, 10.0)
    assert big2 not in s.schedule(2.0, ex).admitted
    assert s._overdue_next(2.0) == math.inf
    assert_charged_uncached(s, big2)


def test_value_is_named_and_refused_values_name_it():
    assert_value_named("room_priced", "room_price", "priced")


globals().update(machines("room_priced", {**DEMOTING, "readmit_charge": "room_priced"}))
