"""Review s54 vleft3: requests aborted before they ran, through vLLM's real scheduler and
`OffloadingConnector` with kvsaga's tier policy (`KVSagaCachePolicy`). vLLM tells the tier
of every finished request, one aborted while it waited in the queue included; the policy
took it as a step of its own (it read and stored nothing), so the session's pause moved to
the abort, and the client's resend was learned as a pause of the hinted tool as short as
the resend gap. The retention connector and the gate count no step there either."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from vllm.v1.request import RequestStatus  # noqa: E402

from .harness import TOKEN, make_request  # noqa: E402
from .test_offload_parallel import _clocked, _prompt, _sound  # noqa: E402

HINT = {"session_id": "S", "tool": "t", "expected_s": 30}


def _paused_at_100(sim, replay_mod, model_dir, eviction: str):
    """S's first step (a 4-block context, offloaded) finishes at t=100 (the tier policy's
    clock). Returns the run, the clock, the policy calls from then on, and S's context."""
    r, pol, t, calls = _clocked(sim, replay_mod, model_dir, eviction, True)
    first = _prompt(1, 4)
    r.run([make_request(first, 2, HINT)])
    assert calls == [("step_started", "S"), ("step_finished", "S")]
    assert pol.policy.views["S"].paused_at == 100.0 and pol._owned["S"] >= 4
    del calls[:]
    return r, t, calls, first


def _aborted_unscheduled(r, request) -> None:
    """The client aborts `request` before vLLM scheduled it; the tier hears of it at the
    next step."""
    r.s.add_request(request)
    r.s.finish_requests(request.request_id, RequestStatus.FINISHED_ABORTED)
    r.step()


@pytest.mark.parametrize("eviction", ["ttl", "graph"])
def test_a_step_aborted_before_it_ran_is_no_step_to_the_tier_policy(
        hf_model_dir, sim, replay_mod, eviction):
    """S's next step is aborted at t=120 before it ran: the policy was told it started and
    finished (S paused from 120), and the resend at 121 resumed a 1 s pause. Now S stays
    paused from 100, and the resend's step is the only one."""
    r, t, calls, first = _paused_at_100(sim, replay_mod, hf_model_dir, eviction)
    pol = r.manager._policy
    nxt = first + [TOKEN] * 2 + _prompt(2, 1)
    t[0] = 120.0
    _aborted_unscheduled(r, make_request(nxt, 2, HINT))
    assert calls == []
    view = pol.policy.views["S"]
    assert view.paused_at == 100.0 and not view.running
    t[0] = 121.0
    r.run([make_request(nxt, 2, HINT)])
    assert calls == [("step_started", "S"), ("step_finished", "S")]
    assert pol.policy.views["S"].paused_at == 121.0
    _sound(r)


def test_a_last_step_aborted_before_it_ran_still_ends_the_session(
        hf_model_dir, sim, replay_mod):
    """The rule above leaves the end alone: a `last_step` request ends its session at its
    finish, run or not, and one that never ran ends it with no step of its own, as the
    retention connector ends it (review s54 diffvleft3 LOW-1: the tier told `step_started`
    first, so its graph learned a resume, a pause sample and one step more than the
    connector's)."""
    r, t, calls, first = _paused_at_100(sim, replay_mod, hf_model_dir, "ttl")
    pol = r.manager._policy
    t[0] = 120.0
    _aborted_unscheduled(r, make_request(first + [TOKEN] * 2 + _prompt(2, 1), 2,
                                         {**HINT, "last_step": True}))
    assert calls == [("session_ended", "S")]
    assert "S" in pol._ended and "S" not in pol._sessions and "S" not in pol._owned
    _sound(r)
