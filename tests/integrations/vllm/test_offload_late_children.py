"""Review s55 vleft4 (item 3 of the brief; s54 vleft3 finding 6): a late n > 1 child first
seen after another request of its session began a NEW step, through vLLM's real scheduler
and `OffloadingConnector` with kvsaga's tier policy (`offload_prompt_only` false, so each
child stores chunks of its own output). Child 0 of S's n = 2 request ends S's step (or, with
`last_step`, S); S's next request `q` starts the next step (or a new session of the reused
id); child 1's first store of its own output comes while `q` runs. vLLM names a child
`{index}_{parent}`, so the tier knows child 1 belongs to the step (or session) that ended:
it joined `q`'s step, which then ended with child 1, not `q` (or, `last_step`, child 1's
finish ended the NEW session)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from vllm.v1.kv_offload.base import ReqContext  # noqa: E402

from kvsaga.integrations.vllm import CACHE_POLICY_CLASS  # noqa: E402
from kvsaga.integrations.vllm.cache_policy import PARENTS_KEPT  # noqa: E402

from .harness import make_request  # noqa: E402
from .test_cache_policy import _keys, _lifecycle, _manager, _store  # noqa: E402
from .test_offload_parallel import TOKEN, _children, _clocked, _prompt, _sound  # noqa: E402


def _late_child_meets_next_step(sim, replay_mod, model_dir, last_step: bool, joins: bool):
    """S's n = 2 step: child 0 finishes after 3 tokens; child 1 fills its first chunk of own
    output later. `joins`: q (S's next request, added once child 0 finished) still runs at
    that store (the children's prompt ends 8 tokens into a block, child 1 runs 40 tokens, q 8), else
    q finished before it (2 tokens into a block, child 1 60 tokens, q 4). The tier policy's
    clock advances 1 s a step. Returns the run, the kvsaga policy's lifecycle calls, and
    the clock at q's finish and at child 1's."""
    r, pol, t, calls = _clocked(sim, replay_mod, model_dir, "ttl", False)
    first = _prompt(1, 4)
    r.run([make_request(first, 2, {"session_id": "S", "tool": "t", "expected_s": 30})])
    del calls[:]
    seen: list = []
    touch, finished = pol.touch, pol.on_request_finished

    def seen_touch(keys, ctx):
        seen.append(("touch", ctx.req_id))
        return touch(keys, ctx)

    def seen_finished(*a):
        seen.append(("finished", a[-1].req_id, t[0]))
        return finished(*a)

    pol.touch, pol.on_request_finished = seen_touch, seen_finished
    hint = {"session_id": "S", "tool": "t", "expected_s": 30, "last_step": last_step}
    into = 8 if joins else 2  # prompt tokens into its last block: child 1 stores sooner
    kids = _children("p", first + [TOKEN] * 2 + _prompt(2, 2)[:14 + into],
                     [3, 40 if joins else 60], hint)
    q = make_request(first + [TOKEN] * 2 + _prompt(3, 1), 8 if joins else 4,
                     {"session_id": "S", "tool": "u", "expected_s": 30})

    def each():
        t[0] += 1.0
        if ("finished", "0_p") in [c[:2] for c in seen] and q.request_id not in r.s.requests \
                and not q.is_finished():
            r.s.add_request(q)  # S's next step, while child 1 still runs

    r.run(kids, each)
    if not q.is_finished():
        r.run([], each)
    order = [c[:2] for c in seen]
    # the case itself: q touched (began its step) before child 1's first store
    assert order.index(("finished", "0_p")) < order.index(("touch", q.request_id))
    assert order.index(("touch", q.request_id)) < order.index(("touch", "1_p"))
    at = {c[1]: c[2] for c in seen if c[0] == "finished"}
    assert order.index(("finished", q.request_id)) < order.index(("finished", "1_p"))
    assert joins == (order.index(("touch", "1_p")) < order.index(("finished", q.request_id)))
    return r, calls, at[q.request_id], at["1_p"]


@pytest.mark.parametrize("joins", [True, False])
def test_a_late_child_adds_nothing_to_its_sessions_next_step(hf_model_dir, sim, replay_mod,
                                                             joins):
    """q's step is S's second and last: it ends at q's finish. Child 1 joined it (`joins`),
    so it ended at child 1's finish (S counted as running, and its pause began, only then),
    or, q done before child 1's first store, that store began a third step."""
    r, calls, q_at, late_at = _late_child_meets_next_step(sim, replay_mod, hf_model_dir,
                                                          False, joins)
    assert q_at < late_at
    assert calls == [("step_started", "S"), ("step_finished", "S")] * 2
    view = r.manager._policy.policy.views["S"]
    assert not view.running and view.paused_at == q_at
    _sound(r)


def test_a_late_child_of_a_last_step_does_not_end_the_reused_ids_new_session(
        hf_model_dir, sim, replay_mod):
    """Child 0's finish ended S (`last_step`); q began a new session of the id. Child 1,
    hinted `last_step` as its sibling, joined q's step and its finish ended the new S. It is
    of no session now: the new S pauses at q's finish, and child 1's chunks are shared."""
    r, calls, q_at, late_at = _late_child_meets_next_step(sim, replay_mod, hf_model_dir,
                                                          True, True)
    assert q_at < late_at
    assert calls == [("step_started", "S"), ("session_ended", "S"),
                     ("step_started", "S"), ("step_finished", "S")]
    pol = r.manager._policy
    view = pol.policy.views["S"]
    assert "S" not in pol._ended and not view.running and view.paused_at == q_at
    _sound(r)


def test_a_late_child_of_a_step_before_the_sessions_end_is_of_no_session():
    """Through vLLM's CPUOffloadingManager alone: child 0 of S's n = 2 request ends a step;
    S's next (non-child) request ends S (`last_step`); the id is reused, and while the new
    session's first step runs, child 1 (hinted as child 0: no `last_step`) makes its first
    store. The end dropped the n > 1 request the policy remembered (a step ended by a
    request that is no child did), so child 1 joined the new session's step and its chunks
    were filed under the new S; its step ended with the old session, so they are shared
    cache, and the new step ends with its own request. The policy keeps PARENTS_KEPT n > 1
    requests a session."""
    mgr = _manager(CACHE_POLICY_CLASS, 32)
    pol = mgr._policy
    calls = _lifecycle(pol)
    hint = {"session_id": "S", "tool": "t", "expected_s": 30}
    _store(mgr, "0_p", _keys("a", 2), hint)
    _store(mgr, "e", _keys("b", 2), {**hint, "last_step": True})
    new = ReqContext("n1", kv_transfer_params={"kvsaga": hint})
    mgr.on_new_request(new)
    mgr.touch(_keys("c", 2), new)  # the new session's step begins
    assert mgr.prepare_store(_keys("c", 2), new) is not None
    late_keys = _keys("d", 2)
    _store(mgr, "1_p", late_keys, hint)  # child 1: its first store, and its finish
    assert all(pol._owner[k][0] is None for k in late_keys)
    assert pol._running == {"S": {"n1"}}
    mgr.complete_store(_keys("c", 2), new)
    mgr.on_request_finished(new)
    assert calls == [("step_started", "S"), ("step_finished", "S"), ("step_started", "S"),
                     ("session_ended", "S"), ("step_started", "S"), ("step_finished", "S")]
    assert pol._owned["S"] == 2 and not pol._running and not pol._orphans
    for i in range(PARENTS_KEPT + 2):  # the remembered n > 1 requests stay bounded
        _store(mgr, f"0_q{i}", _keys(f"q{i}", 1), hint)
    assert list(pol._step_parent["S"]) == [f"q{i}" for i in range(2, PARENTS_KEPT + 2)]
