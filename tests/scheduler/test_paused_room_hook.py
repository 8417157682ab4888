"""The workflow scheduler tells a listening eviction policy the room a demoted session still
paused on its tool would lack were its step queued now (`EvictionPolicy.session_paused_room`,
`AdmissionOrder._tell_paused_rooms`): a figure worked out by hand, only on change, None once
its step queues, nothing measured for a policy that does not listen. (The engine and the
simulator drive the same scheduler class; the engine-simulator parity stream of
tests/engine/test_scheduler.py has no tool pause, so it tells no paused room and is not
used here.)"""

from __future__ import annotations

from kvsaga.policy import EvictionPolicy
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import free_counts_while_refused, manager, toks, wf


def _spy(m) -> list[tuple[str, int | None, float]]:
    calls: list[tuple[str, int | None, float]] = []
    m.policy.session_paused_room = lambda s, blocks, now: calls.append(
        (s.session_id, blocks, now))
    return calls


def _paused_demoted(listen: bool = True, decode: int = 1):
    """`p` (16 tokens) ran at 0 and paused; `a` (24 tokens, `decode` to decode: with 1 its
    step is done at once, and it stays admitted, paused) ran from 0.2; `p` is demoted at 0.5
    (still on its tool: no step queued); new session `n1` (40 tokens) queues at 0.6 and is
    refused by the gate (a's working set, 8 blocks, and n1's, 12, exceed the 16): the
    attempts that refuse it sort the queues."""
    m = manager(16)
    s = wf(m, backfill_window=0, readmit_charge="room")  # the pool's deficit alone
    ex = ToyExecutor(m)
    calls = _spy(m) if listen else []
    s.add(ToyRequest("p", toks(200, 16), max_new=1, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    s.add(ToyRequest("a", toks(0, 24), max_new=decode, last=False), 0.1)
    ex.run(s, s.schedule(0.2, ex), 0.2)
    s._demote_session("p", 0.5)
    s.add(ToyRequest("n1", toks(500, 40), max_new=1, arrival=0.6), 0.6)
    return m, s, ex, calls


def test_the_paused_room_is_the_hand_worked_figure_told_on_change_only():
    """p's context is 16 tokens; its next prompt is taken as 16 + the growth prior 8 = 24
    tokens, its reserve 64 decode tokens past that: 88 tokens, 22 blocks of 4. Its lookup
    hits 3 full blocks (the 4th holds the last token, which a prompt never hits), all
    cached: it takes 3 + (22 - 3) = 22 free-or-evictable blocks. Nothing runs (no running
    reserve) and all 16 blocks are free or evictable: 22 - 16 = 6."""
    m, s, ex, calls = _paused_demoted()
    assert not s.schedule(1.0, ex).admitted
    assert not s.running and m.pool.num_available == 16
    assert calls == [("p", 6, 1.0)]
    calls.clear()
    assert not s.schedule(2.0, ex).admitted  # nothing changed: nothing told
    assert calls == []
    # p's tool returns: its step queues (still demoted), and the paused figure is withdrawn
    s.add(ToyRequest("p", toks(200, 16) + toks(900, 4), max_new=1, arrival=2.5,
                     resumed=True), 2.5)
    assert "p" in s._deferred_waiting
    s.schedule(3.0, ex)
    assert calls == [("p", None, 3.0)]


def test_the_figure_is_measured_again_when_the_pool_changes(monkeypatch):
    """a decodes 20 tokens between attempts (its blocks grow, the free count falls; its
    reserve falls with them, so the true figure stays 22 + 4 - 9 = 17 here): at each attempt
    where the pool changed, p is measured again (here a figure that reads the free count,
    so each change is a new tell), and told only when the figure changed."""
    m, s, ex, calls = _paused_demoted(decode=20)
    monkeypatch.setattr(type(s), "paused_room_deficit",
                        lambda self, sid, running: 100 + self.manager.pool.num_available)
    free = free_counts_while_refused(m, s, ex, 9)
    assert len(free) >= 2  # a's decode took blocks: the pool changed with no queue change
    assert [b for _, b, _ in calls] == [100 + f for f in free]


def test_a_running_step_counts_its_reserve():
    """With a's step running (24 tokens, 20 to decode: its reserve target 43 tokens, 11
    blocks, of which it holds 7: 4 more) 9 blocks are free or evictable: p's 22 + 4 - 9 =
    17."""
    m, s, ex, calls = _paused_demoted(decode=20)
    assert not s.schedule(1.0, ex).admitted
    assert [r.session_id for r in s.running] == ["a"] and m.pool.num_available == 9
    assert calls == [("p", 17, 1.0)]


def test_a_policy_that_does_not_listen_costs_no_measurement(monkeypatch):
    measured = []
    monkeypatch.setattr(type(wf(manager(16))), "paused_room_deficit",
                        lambda self, sid, running: measured.append(sid) or 0)
    m, s, ex, _ = _paused_demoted(listen=False)
    assert not s.schedule(1.0, ex).admitted  # lru: the base class's hook
    assert measured == []
    calls = _spy(m)
    assert not s.schedule(2.0, ex).admitted
    assert measured == ["p"] and calls == [("p", 0, 2.0)]


def test_the_base_policy_hook_is_a_no_op():
    assert EvictionPolicy().session_paused_room(None, 3, 0.0) is None
