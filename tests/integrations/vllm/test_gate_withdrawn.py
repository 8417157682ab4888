"""Review s52 (diffvleft): a session's step run as two requests (vLLM's n = 2 children, or
two concurrent steps) through vLLM's real scheduler and BlockPool, where vLLM preempts a
child (freeing its blocks) and the client aborts it while requeued. The connector flags
each such request `withdrawn`, not only the step's last: none of its partial output is
learned by the gate."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from vllm.v1.request import RequestStatus  # noqa: E402

from .harness import BLOCK_SIZE, TOKEN, make_request, make_scheduler, run, step  # noqa: E402


def _prompt(tag: int, blocks: int) -> list[int]:
    return [10_000 + tag * 500 + i for i in range(blocks * BLOCK_SIZE)]


def _two_children(hf_model_dir, max_tokens: tuple[int, int], until):
    """B completes a step (at t=100, hinted 30 s); at t=110 a session-less request that
    outgrows the blocks and B's next step as two requests arrive; vLLM runs them, with the
    clock advancing, until `until(kids)` holds (B's children preempted as wanted). Also
    returns the gate's state after step 1 (`_gate_state`)."""
    s = make_scheduler(hf_model_dir, 40, connector=True, policy="ttl")
    t = [100.0]
    s.connector.clock = lambda: t[0]
    a1 = _prompt(97, 6)
    run(s, [make_request(a1, 2, {"session_id": "B", "tool": "t", "expected_s": 30})])
    g = s.connector.gate
    before = _gate_state(g)
    t[0] = 110.0
    other = make_request(_prompt(2, 16), 300)
    s.add_request(other)
    step(s)
    kids = [make_request(a1 + [TOKEN] * 2 + _prompt(99, 1), n, {"session_id": "B"})
            for n in max_tokens]
    for k in kids:
        s.add_request(k)
    for _ in range(2000):
        t[0] += 0.01
        step(s)
        if until(kids):
            break
        assert not other.is_finished(), "the scenario must preempt B's children"
    else:
        raise AssertionError("B's children were not preempted")
    return s, t, kids, a1, before


def _gate_state(g) -> tuple:
    b = g.sessions["B"]
    return ((b.context, b.last_finish, b.paused_at, b.expected_s), g.order.done["B"],
            g._growth.changes, g._growth.mean("default"))


def _resend(s, t, a1) -> list[float]:
    """B's client resends the step 0.5 s after the aborts: the workflow's observed pauses."""
    t[0] += 0.5
    s.add_request(make_request(a1 + [TOKEN] * 2 + _prompt(99, 1), 2, {"session_id": "B"}))
    step(s)
    return list(s.connector.gate.pauses.observed.get("default", ()))


def test_a_step_whose_every_request_was_preempted_then_aborted_is_undone(hf_model_dir):
    """Both children preempted, then both aborted (the client gave up on the n = 2 request).
    The first abort reached the gate as a finish (flagged withdrawn only if last), its
    partial output became the step's context, and with the gate's branch for a withdrawn
    last request the step was counted, its growth learned, B paused at the abort while the
    policy put it back at 100, and the resend learned as a tool pause of 0.5 s."""
    s, t, kids, a1, before = _two_children(
        hf_model_dir, (300, 300),
        lambda kids: all(k.status == RequestStatus.PREEMPTED for k in kids))
    g = s.connector.gate
    observed = list(g.pauses.observed["default"])  # B's pause 100 -> 110, at its admission
    assert all(k.num_tokens > before[0][0] for k in kids)  # partial output, to be discarded
    t[0] = 120.0
    s.finish_requests([k.request_id for k in kids], RequestStatus.FINISHED_ABORTED)
    assert _gate_state(g) == before
    assert before[0][2:] == (100.0, 30.0)  # paused since step 1's end, with its hint
    assert "B" not in g.pauses.paused_since and not g._step_context and not g._flights
    assert s.connector.policy.views["B"].paused_at == 100.0  # the gate and policy agree
    assert _resend(s, t, a1) == observed  # no pause of ~0 s learned


def test_a_held_step_whose_last_request_was_withdrawn_ends_at_what_the_first_reached(
        hf_model_dir):
    """The first child finished (its blocks retained: B held), the second was preempted and
    aborted. The step ran, at the first child's context: the gate learned the withdrawn
    child's prompt and discarded partial output as B's context (and growth) instead."""
    s, t, kids, a1, _ = _two_children(
        hf_model_dir, (4, 300),
        lambda kids: kids[0].is_finished() and kids[1].status == RequestStatus.PREEMPTED)
    c, g = s.connector, s.connector.gate
    assert "B" in c.holds
    reached = kids[0].num_tokens
    assert kids[1].num_tokens > reached
    done = g.order.done["B"][1]
    t[0] = 120.0
    s.finish_requests([kids[1].request_id], RequestStatus.FINISHED_ABORTED)
    b = g.sessions["B"]
    assert (b.context, b.last_finish, b.paused_at) == (reached, reached, 120.0)
    assert g.order.done["B"][1] == done + 1 and g.pauses.paused_since["B"] == 120.0
    assert c.policy.views["B"].paused_at == 120.0 and "B" in c.holds
    assert not g._step_context and not g._flights


def _recorded(policy) -> list[str]:
    """The connector's policy's step ends, in order: `step_finished` or `resume_withdrawn`."""
    calls: list[str] = []
    for name in ("step_finished", "resume_withdrawn"):
        told = getattr(policy, name)
        setattr(policy, name, lambda *a, _t=told, _n=name, **k: (calls.append(_n), _t(*a, **k)))
    return calls


def _b_paused_after_one_step(hf_model_dir):
    """A connector scheduler (ttl) whose session B ran one step at t=100 with a context under
    one block (nothing kept): the scheduler, its connector and gate, the settable clock, the
    policy's step ends so far (`_recorded`) and B's first prompt."""
    s = make_scheduler(hf_model_dir, 40, connector=True, policy="ttl")
    c, g = s.connector, s.connector.gate
    t = [100.0]
    c.clock = lambda: t[0]
    calls = _recorded(c.policy)
    a1 = [20_000 + i for i in range(8)]  # B's context stays under one block: nothing kept
    run(s, [make_request(a1, 2, {"session_id": "B", "tool": "t", "expected_s": 30})])
    assert calls == ["step_finished"] and "B" not in c.holds
    return s, c, g, t, calls, a1


def test_an_unheld_step_whose_last_request_was_withdrawn_ran_for_the_policy_as_for_the_gate(
        hf_model_dir):
    """Review s52 diffvleft 3: B's step runs as two requests; the first finishes with no full
    block to keep (nothing held), the second is preempted and aborted. The step ran (the
    first finished): the gate ended it at the abort, but the connector told the policy
    `resume_withdrawn`, which put B's pause back at step 1's end (100 against the gate's
    120): the policy learned one step fewer and, at the resend, a pause longer by the step's
    run. Both now end the step at the abort, as in the held case."""
    s, c, g, t, calls, a1 = _b_paused_after_one_step(hf_model_dir)
    t[0] = 110.0
    other = make_request(_prompt(2, 16), 300)
    s.add_request(other)
    step(s)
    kids = [make_request(a1 + [TOKEN] * 2 + [1], 2, {"session_id": "B"}),
            make_request(a1 + [TOKEN] * 2 + _prompt(99, 1), 300, {"session_id": "B"})]
    for k in kids:
        s.add_request(k)
    for _ in range(2000):
        t[0] += 0.01
        step(s)
        if kids[0].is_finished() and kids[1].status == RequestStatus.PREEMPTED:
            break
        assert not other.is_finished(), "the scenario must preempt B's second request"
    else:
        raise AssertionError("B's second request was not preempted")
    assert "B" not in c.holds and c.stats.retained_steps == 0
    done = g.order.done["B"][1]
    t[0] = 120.0
    s.finish_requests([kids[1].request_id], RequestStatus.FINISHED_ABORTED)
    b = g.sessions["B"]
    assert (b.context, b.paused_at, b.expected_s) == (kids[0].num_tokens, 120.0, None)
    assert g.order.done["B"][1] == done + 1 and g.pauses.paused_since["B"] == 120.0
    assert calls == ["step_finished"] * 2
    view = c.policy.views["B"]
    assert view.paused_at == 120.0 and not view.running
    assert not g._step_context and not g._flights and "B" not in c._flights
    assert not c._step_ran


def test_a_step_aborted_while_running_with_nothing_kept_ran_for_the_policy_as_for_the_gate(
        hf_model_dir):
    """Review s54 vleft3 (s53's leftover): B's context stays under one block, so nothing is
    kept; its next step runs (allocated, decoding) and its client aborts it. The gate
    counted the step (it ran: `withdrawn` is only a request preempted and aborted while
    requeued) and paused B at the abort, but the connector told the policy
    `resume_withdrawn`, which put B's pause back at step 1's end (100 against the gate's
    120), as if the step never ran; the same abort with a block kept was `step_finished`.
    Both now say the step ran."""
    s, c, g, t, calls, a1 = _b_paused_after_one_step(hf_model_dir)
    assert c.policy.views["B"].paused_at == 100.0
    t[0] = 110.0
    b2 = make_request(a1 + [TOKEN] * 2 + [1], 300, {"session_id": "B"})
    s.add_request(b2)
    for _ in range(3):
        t[0] += 1.0
        step(s)
    assert b2.status == RequestStatus.RUNNING and b2.num_tokens < BLOCK_SIZE
    done = g.order.done["B"][1]
    t[0] = 120.0
    s.finish_requests([b2.request_id], RequestStatus.FINISHED_ABORTED)
    b = g.sessions["B"]
    assert (b.context, b.paused_at) == (b2.num_tokens, 120.0)  # the gate: the step ran
    assert g.order.done["B"][1] == done + 1 and g.pauses.paused_since["B"] == 120.0
    assert calls == ["step_finished"] * 2  # the policy too
    view = c.policy.views["B"]
    assert view.paused_at == 120.0 and not view.running and not view.needed_now
    assert "B" not in c.holds and c.stats.retained_steps == 0
    assert not g._flights and "B" not in c._flights and not c._step_ran


def test_a_step_preempted_then_aborted_with_nothing_kept_is_withdrawn_for_both(hf_model_dir):
    """The other side of the rule above, unchanged: B's step (context under one block) is
    preempted (vLLM frees its blocks) and aborted while requeued. Neither the gate nor the
    policy counts it: both leave B paused since step 1's end."""
    s, c, g, t, calls, a1 = _b_paused_after_one_step(hf_model_dir)
    before = _gate_state(g)
    t[0] = 110.0
    other = make_request(_prompt(2, 16), 300)
    s.add_request(other)
    step(s)
    b2 = make_request(a1 + [TOKEN] * 2 + _prompt(99, 1), 300, {"session_id": "B"})
    s.add_request(b2)
    for _ in range(2000):
        t[0] += 0.01
        step(s)
        if b2.status == RequestStatus.PREEMPTED:
            break
        assert not other.is_finished(), "the scenario must preempt B's step"
    else:
        raise AssertionError("B's step was not preempted")
    t[0] = 120.0
    s.finish_requests([b2.request_id], RequestStatus.FINISHED_ABORTED)
    assert _gate_state(g) == before and before[0][2] == 100.0
    assert calls == ["step_finished", "resume_withdrawn"]
    assert c.policy.views["B"].paused_at == 100.0
