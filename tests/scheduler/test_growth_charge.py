"""What the `workflow` gate charges for growth still to come (`growth_charge`) and the room it
keeps for growth above the means (`growth_reserve`; kvsaga/scheduler/working_set_gate.py):
an admitted step is charged its expected reply alone (its prompt already holds the tool's
observation), a queued or paused session its observation and reply; the reserve, from the
learned spread of the growth, keeps an admitted paused session's context resident where a
session admitted on the means would have its step evict it."""

from __future__ import annotations

import math

import pytest

from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import BS, growing_charges, manager, toks, wf


def _charges(steps: int, **kw) -> list[tuple[int | None, int, int | None]]:
    """`growing_charges` with paused sessions charged their growth (`paused_growth`)."""
    return growing_charges(steps, paused_growth=True, **kw)


def test_an_admitted_step_is_charged_its_reply_and_a_paused_one_its_observation_too():
    step = _charges(6)  # the default
    remaining = _charges(6, growth_charge="remaining")
    once = _charges(6, growth_charge="once")
    # Nothing observed yet: all charge the prompt + the prior growth (8 tokens).
    assert step[0] == remaining[0] == once[0] == (
        None, math.ceil((20 + 8) / BS), math.ceil((21 + 8) / BS))
    for k in range(3, 6):  # the growth table has seen 16-token growth by now
        prompt = 20 + 16 * k
        last_finish = prompt - 16 + 1  # the previous step's context at its finish
        assert remaining[k][1] == math.ceil((prompt + 1) / BS)  # the 1-token reply only
        assert step[k][1] == math.ceil((prompt + 16) / BS)  # the observation again
        # "once": the context predicted at its queueing, not the growth again on the prompt.
        assert once[k][1] == math.ceil(max(prompt, last_finish + 16) / BS) < step[k][1]
        # Queued and paused: the observation and the reply are still to come, either way.
        assert remaining[k][0] == step[k][0] == once[k][0] == math.ceil((last_finish + 16) / BS)
        if k < 5:
            assert remaining[k][2] == step[k][2] == once[k][2] == math.ceil(
                (prompt + 1 + 16) / BS)


def _pause_a(m, s, growths: list[int]) -> tuple[ToyExecutor, list[int], float]:
    """Session a run one step per growth in `growths` (its prompt grows by that many tokens
    before the next step), paused after the last. Returns (executor, its next prompt, t)."""
    ex = ToyExecutor(m)
    prompt, t = toks(0, 8), 0.0
    for k, g in enumerate(growths):
        s.add(ToyRequest("a", list(prompt), max_new=1, last=False, arrival=t,
                         resumed=k > 0), t)
        ex.run(s, s.schedule(t, ex), t)
        prompt = prompt + [1] + toks(1000 + 100 * k, g - 1)
        t += 1.0
    return ex, prompt, t


def _resident(m, sid: str) -> int:
    """How many blocks of the session's context are still cached on the GPU."""
    return sum(m.index.get(h) is not None for h in m.sessions[sid].block_hashes)


def _c_then_a(z: float, growths: list[int], observation: int):
    """a paused after `growths`; c (92 tokens) arrives; then a's next step with a tool
    observation of `observation` tokens. Returns (manager, scheduler, admitted at c's
    arrival, what held c back then (None: nothing), c's resident blocks once a's step ran,
    the reserve's blocks before c came)."""
    m = manager(40)
    s = wf(m, growth_charge="remaining", growth_reserve=z)
    ex, prompt, t = _pause_a(m, s, growths)
    reserve = s._reserve_blocks()
    c = ToyRequest("c", toks(500, 92), max_new=1, last=False, arrival=t)
    s.add(c, t)
    out = s.schedule(t, ex)
    first = [r.session_id for r in out.admitted]
    cause = s._cause  # this batch step's, reset at the next
    ex.run(s, out, t)
    while s.running:  # c's prefill (chunked) to its pause
        t += 1.0
        ex.run(s, s.schedule(t, ex), t)
    t += 1.0
    a = ToyRequest("a", prompt + toks(2000, observation), max_new=1, last=False,
                   arrival=t, resumed=True)
    s.add(a, t)
    while s.running or a in s.waiting:
        ex.run(s, s.schedule(t, ex), t)
        m.check_integrity()
        t += 1.0
    c_resident = _resident(m, "c") if "c" in m.sessions else 0
    return m, s, first, cause, c_resident, reserve


def test_the_reserve_keeps_a_paused_context_when_growth_is_spread():
    """a's steps grew by 4, 28, 4 tokens (spread: sd ~11): with a 1-sd reserve the gate
    keeps 3 blocks free, and c (whose working set fits on the means alone) waits; without
    it c is admitted, pauses, and a's next step, whose observation is above the mean, takes
    blocks of c's context (admitted, paused): c must recompute them."""
    growths = [4, 28, 4, 28]
    m0, s0, first0, cause0, c0, _ = _c_then_a(0.0, growths, 24)
    m1, s1, first1, cause1, c1, reserve = _c_then_a(1.0, growths, 24)
    assert reserve == 3  # sqrt(128) tokens = 2.8 blocks
    assert first0 == ["c"] and first1 == []
    assert cause0 is None and cause1 == "growth"  # refused for the room kept, at c's arrival
    assert c0 < len(m0.sessions["c"].block_hashes)  # without: c's context was evicted
    assert c1 == 0 and "c" not in s1.sessions  # with: c had no context to lose yet
    assert _resident(m1, "a") == len(m1.sessions["a"].block_hashes)


def test_no_spread_no_reserve():
    """Growth that never varies (12, 12, 12 tokens: a's context as long as above) has no
    spread: the reserve keeps nothing free and c is admitted as without it."""
    _, _, first, cause, _, reserve = _c_then_a(1.0, [12, 12, 12, 28], 0)
    assert reserve == 0
    assert first == ["c"] and cause is None


@pytest.mark.parametrize("kw,match", [
    ({"growth_charge": "all"}, "growth_charge must be one of once, step, remaining, prompt"),
    ({"growth_reserve": -1.0}, "growth_reserve must be a number >= 0"),
    ({"growth_reserve": math.inf}, "growth_reserve must be finite"),
    ({"growth_reserve": "1"}, "growth_reserve must be a number"),
    ({"paused_reserve": "yes"}, "paused_reserve must be True, False or .short."),
    ({"paused_reserve": 1}, "paused_reserve must be True, False or .short."),
    ({"growth_charge": "remaining", "growth_quantile": 0.9}, "exclude each other")])
def test_bad_parameters_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        wf(manager(16), **kw)


def _paused_a_then_c(**kw):
    """a (20 tokens) run to a pause on a 16-block manager, then c (36 tokens) arrives: the
    scheduler and who was admitted at c's arrival."""
    m = manager(16)
    s = wf(m, paused_growth=False, growth_charge="remaining", **kw)
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", toks(0, 20), max_new=1, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    s.add(ToyRequest("c", toks(500, 36), max_new=1, last=False, arrival=1.0), 1.0)
    return s, [r.session_id for r in s.schedule(1.0, ex).admitted]


def test_paused_reserve_keeps_a_paused_sessions_growth_free_without_charging_it():
    """a paused holds 6 blocks (21 tokens) and is charged them alone; its next step is
    expected to add 8 (the prior): 2 blocks more. c's admitted step is charged its prompt
    and the 1-token reply a's step showed: 10 blocks. 6 + 10 fills the 16: admitted, unless
    `paused_reserve` keeps a's 2 free."""
    s, admitted = _paused_a_then_c()
    assert admitted == ["c"]
    s, admitted = _paused_a_then_c(paused_reserve=True)
    assert admitted == []
    assert s.sessions["a"].blocks == 6 and s._committed == 6  # charged its context only
    assert s._paused_extra == 2 and s.num_demotions == 0


def test_short_paused_reserve_keeps_no_room_while_nobody_was_demoted():
    """`paused_reserve` "short": with no demoted session the tiers are not known to be
    short, so c is admitted as without the reserve (True refuses it: above)."""
    s, admitted = _paused_a_then_c(paused_reserve="short")
    assert admitted == ["c"]
    assert s._paused_extra == 2 and s.num_demotions == 0  # a's growth known, not kept


def _demoted_b_then_c_and_b(reserve):
    """a and b (20 tokens each) run to a pause on a 16-block manager; b is demoted (the
    scheduler's own demotion); c (36 tokens) arrives, then b's next step (53 tokens, 20 of
    them cached). Returns (scheduler, admitted at c's arrival, admitted at b's)."""
    m = manager(16)
    s = wf(m, paused_growth=False, growth_charge="remaining", paused_reserve=reserve)
    ex = ToyExecutor(m)
    for sid, base in (("a", 0), ("b", 100)):
        s.add(ToyRequest(sid, toks(base, 20), max_new=1, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    s._demote_session("b", 0.5)
    s.add(ToyRequest("c", toks(500, 36), max_new=1, last=False, arrival=1.0), 1.0)
    out = s.schedule(1.0, ex)
    at_c = [r.session_id for r in out.admitted]
    ex.run(s, out, 1.0)
    b = ToyRequest("b", toks(100, 21) + toks(900, 32), max_new=1, last=False, arrival=2.0,
                   resumed=True)
    s.add(b, 2.0)
    out = s.schedule(2.0, ex)
    at_b = [r.session_id for r in out.admitted]
    ex.run(s, out, 2.0)
    m.check_integrity()
    return s, at_c, at_b


def test_short_paused_reserve_holds_new_sessions_while_a_demoted_one_waits():
    """b demoted: the tiers are short. a paused (6 blocks, 2 more of growth to come) and c
    (10 blocks) fill the 16 on the charges alone: without the reserve c is admitted; with
    "short" (as with True) it waits, a's growth kept free. b's step, work under way, is
    charged its 33 uncached tokens and its 1-token reply (9 blocks): beside a's 6 it fits
    without the room for a's growth (2), so "short" admits it; True holds it back too."""
    _, at_c, _ = _demoted_b_then_c_and_b(False)
    assert at_c == ["c"]
    for reserve in (True, "short"):
        s, at_c, at_b = _demoted_b_then_c_and_b(reserve)
        assert at_c == []
        assert s._paused_extra == 2 and s.sessions["a"].blocks == 6
        assert at_b == (["b"] if reserve == "short" else [])
