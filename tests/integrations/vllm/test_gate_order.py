"""The session gate's admission order (`gate_args` `admission_order`,
kvsaga.integrations.vllm.gate_order) through vLLM's real scheduler: vLLM asks about its
waiting requests first come first served, and the gate decides which session gets the one
place memory has."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from .harness import TOKEN, make_request, make_scheduler, run, step  # noqa: E402
from .test_connector import _assert_no_leak, _prompt  # noqa: E402

# Only the working-set fit lets a waiting session in: no growth reserved, no room
# admission, idleness, max_wait_s, reservation rule or riding along.
GATE = {"horizon_steps": 0.0, "room_admit": False, "idle_admit_s": 1e9, "max_wait_s": 1e9,
        "reserve_wait_factor": None, "prior_steps": 4.0}


def _first_runs(model_dir, order: str, aging_s: float, short_after_s: float) -> list[str]:
    """A (25 of 39 blocks) pauses on a tool; long session L (22 blocks, a first step) is
    queued, then short session S (20 blocks, its last step) `short_after_s` later; neither
    fits beside A. A's last step runs and ends: L or S fits, not both (L, once run, pauses
    on its tool holding its context; its last step follows). Returns the sessions in the
    order vLLM first scheduled them (L is ahead in vLLM's queue)."""
    now = [0.0]
    s = make_scheduler(model_dir, 40, connector=True, best_effort_steps=0,
                       gate_args={**GATE, "admission_order": order, "aging_s": aging_s})
    s.connector.clock = lambda: now[0]
    a1 = _prompt(1, 25)
    run(s, [make_request(a1, 2, {"session_id": "A", "tool": "t", "expected_s": 30})])
    reqs = {"L": make_request(_prompt(3, 22), 2, {"session_id": "L", "tool": "t",
                                                  "expected_s": 30}),
            "S": make_request(_prompt(4, 20), 2, {"session_id": "S", "last_step": True})}
    s.add_request(reqs["L"])
    assert not step(s).num_scheduled_tokens  # L waits: A's retained context is in the way
    now[0] = short_after_s
    s.add_request(reqs["S"])
    a2 = make_request(a1 + [TOKEN] * 2 + _prompt(2, 1), 2, {"session_id": "A",
                                                           "last_step": True})
    s.add_request(a2)
    seen: list[str] = []
    l2 = make_request(_prompt(3, 22) + [TOKEN] * 2 + _prompt(5, 1), 2,
                      {"session_id": "L", "last_step": True})
    for _ in range(100):
        out = step(s)
        seen += [sid for sid, r in reqs.items()
                 if r.request_id in out.num_scheduled_tokens and sid not in seen]
        if reqs["L"].is_finished() and l2.request_id not in s.requests and not l2.is_finished():
            s.add_request(l2)  # L's last step, after its tool: then L's session ends
        if not s.has_unfinished_requests():
            break
    assert a2.is_finished() and l2.is_finished()
    assert all(r.is_finished() for r in reqs.values())
    assert s.connector.gate.order.num_yielded == (seen[0] != "L")
    _assert_no_leak(s)
    return seen


@pytest.mark.parametrize("order", ["fifo", "predicted"])
def test_a_short_session_waiting_behind_a_long_one_goes_first(hf_model_dir, order):
    """FIFO lets L (asked first) in; "predicted" ranks S (its last step: one step left)
    ahead of L (4 steps expected, a larger context), L yields, and L gets in once S ends."""
    expected = ["L", "S"] if order == "fifo" else ["S", "L"]
    assert _first_runs(hf_model_dir, order, aging_s=30.0, short_after_s=0.0) == expected


def test_the_aged_long_session_goes_before_a_newer_short_one(hf_model_dir):
    """With aging_s 1, L queued 10 s before S outranks it (a factor e of predicted work is
    worth 1 s of waiting; L's is about e^2.4 S's): L gets in first, S after it."""
    assert _first_runs(hf_model_dir, "predicted", aging_s=1.0, short_after_s=10.0) == ["L", "S"]
