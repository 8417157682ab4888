"""Agent Fair Share of the memory in the shrink: when the admitted working sets outgrow the
tiers because one tenant's active sessions grew past its share, the shrink does not demote
another tenant's paused session within its share (it did: a light tenant's contexts were
demoted, and then evicted, for a heavy tenant's growth)."""

from __future__ import annotations

from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, toks, wf


def _grow_a_past_its_share(**kw):
    """A and B each admit a session and pause; A comes back with a prompt far larger than
    predicted and keeps decoding, B's next step finishes meanwhile. Returns the scheduler
    once B has paused again."""
    m = manager(32)  # 128 tokens: each tenant's share is 16 blocks
    s = wf(m, reserve_decode_tokens=0, **kw)
    ex = ToyExecutor(m)
    a = ToyRequest("A0", toks(0, 40), tenant="A", max_new=1, last=False)
    b = ToyRequest("B0", toks(5000, 20), tenant="B", max_new=1, last=False)
    for r in (a, b):
        s.add(r, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    assert set(s.sessions) == {"A0", "B0"}
    a2 = ToyRequest("A0", a.token_ids + toks(100, 59), tenant="A", max_new=6, last=False,
                    resumed=True, arrival=1.0)
    b2 = ToyRequest("B0", b.token_ids + toks(6000, 1), tenant="B", max_new=1, last=False,
                    resumed=True, arrival=1.0)
    s.add(a2, 1.0)
    s.add(b2, 1.0)
    now = 1.0
    while b2 not in ex.run(s, s.schedule(now, ex), now, tool_s=5.0):
        now += 0.1
    assert a2 in s.running  # A's session is active, decoding
    m.check_integrity()
    return s


def test_shrink_keeps_a_paused_session_within_its_share():
    # "step" (the default): A's charge is its prompt + its predicted growth, over the tiers;
    # under "once" A is charged the larger of its prompt and its predicted context, and the
    # commitment lands exactly on the tiers, so the premise (over them) needs the old charge.
    s = _grow_a_past_its_share(growth_charge="step")
    assert "B0" in s.sessions and s.num_demotions == 0  # B is not demoted ...
    shares = s._shares(s.overcommit * s.capacity)
    held = s._tenant_blocks
    assert held["A"] > shares["A"] and held["B"] <= shares["B"]
    assert s._committed > s.capacity  # ... for A's growth past its share


def test_shrink_demotes_the_paused_session_of_the_tenant_above_its_share():
    """The other side, with both tenants holding a paused session: A's resumed step
    outgrows its prediction and takes A above its share while B is within its own; when B's
    next step finishes (the shrink runs), A's paused session A1 is demoted and B's B0 kept
    (the shares' test, not the demotion order, picks it)."""
    m = manager(32)  # 128 tokens: each tenant's share is 16 blocks
    s = wf(m, reserve_decode_tokens=0)
    ex = ToyExecutor(m)
    first = [ToyRequest("A0", toks(0, 16), tenant="A", max_new=1, last=False),
             ToyRequest("A1", toks(1000, 16), tenant="A", max_new=1, last=False),
             ToyRequest("B0", toks(5000, 20), tenant="B", max_new=1, last=False)]
    for r in first:
        s.add(r, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    assert set(s.sessions) == {"A0", "A1", "B0"} and s.num_demotions == 0
    a2 = ToyRequest("A0", first[0].token_ids + toks(100, 60), tenant="A", max_new=6,
                    last=False, resumed=True, arrival=1.0)
    b2 = ToyRequest("B0", first[2].token_ids + toks(6000, 1), tenant="B", max_new=1,
                    last=False, resumed=True, arrival=1.0)
    s.add(a2, 1.0)
    s.add(b2, 1.0)
    now = 1.0
    while b2 not in ex.run(s, s.schedule(now, ex), now, tool_s=5.0):
        now += 0.1
    assert a2 in s.running  # A's session is active: only A1 is A's to demote
    assert set(s.sessions) == {"A0", "B0"} and s.num_demotions == 1
    shares = s._shares(s.overcommit * s.capacity)
    assert s._tenant_blocks["B"] <= shares["B"] < s._tenant_blocks["A"]
    m.check_integrity()


def test_shrink_still_demotes_a_paused_session_above_its_share():
    """One tenant alone (no share binds) is shrunk as before: A's resumed step outgrows its
    prediction and A's own paused session, away longest, is demoted."""
    m = manager(32)
    s = wf(m, reserve_decode_tokens=0)
    ex = ToyExecutor(m)
    reqs = [ToyRequest(f"A{i}", toks(1000 * i, 28), tenant="A", max_new=1, last=False)
            for i in range(2)]
    for r in reqs:
        s.add(r, 0.0)
        ex.run(s, s.schedule(0.0, ex), 0.0, tool_s=50.0 if r.session_id == "A1" else 1.0)
    a0 = reqs[0]
    nxt = ToyRequest("A0", a0.token_ids + toks(500, 40), tenant="A", max_new=1, last=False,
                     resumed=True, arrival=1.0)
    s.add(nxt, 1.0)
    ex.run(s, s.schedule(1.0, ex), 1.0)
    ex.run(s, s.schedule(1.1, ex), 1.1)
    assert "A1" not in s.sessions and s.num_demotions >= 1  # its own paused session goes
