"""Review s57 (vtier): KVSagaScheduler's ranker counts a session's steps at their arrival, so
a step whose every request was aborted before it ran (waiting, or preempted by vLLM and
requeued) was counted, and the client's resend of it counted a second step: the session
looked a step further on and its length was learned a step longer. And a step sent under
the id of its session's previous, finished request was taken for a request of that step,
not counted. Through vLLM's real scheduler and BlockPool, with the kvsaga connector."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from vllm.v1.request import RequestStatus  # noqa: E402

from .harness import BLOCK_SIZE, TOKEN, make_request, make_scheduler, run, step  # noqa: E402

HINT = {"session_id": "A", "workflow": "swe", "tool": "t"}
LAST = {"session_id": "A", "workflow": "swe", "last_step": True}


def _prompt(tag: int, blocks: int) -> list[int]:
    return [10_000 + tag * 500 + i for i in range(blocks * BLOCK_SIZE)]


def _scheduler(hf_model_dir, blocks: int = 40, max_num_seqs: int = 8):
    from kvsaga.integrations.vllm.scheduler import KVSagaScheduler

    s = make_scheduler(hf_model_dir, blocks, connector=True, admission=False,
                       max_num_seqs=max_num_seqs, scheduling_policy="priority",
                       scheduler_cls=KVSagaScheduler)
    s.clock = lambda: 0.0
    return s


def _step2(a1: list[int], max_tokens: int = 2, hint: dict = HINT):
    return make_request(a1 + [TOKEN] * 2 + _prompt(99, 1), max_tokens, hint)


def _abort(s, *requests) -> None:
    s.finish_requests([r.request_id for r in requests], RequestStatus.FINISHED_ABORTED)


def _finish_session(s, a1: list[int]) -> None:
    """A's step 2 again (the client's resend), then its last step 3."""
    a2 = _step2(a1)
    run(s, [a2])
    assert s.ranker.live["A"] == (2, a2.num_prompt_tokens)
    run(s, [make_request(list(a2.all_token_ids) + _prompt(98, 1), 2, LAST)])
    assert s.ranker.lengths.counts == {"swe": {3: 1}} and "A" not in s.ranker.live


def test_a_step_preempted_then_aborted_is_no_step_of_its_session(hf_model_dir):
    """A ran step 1; its step 2 runs beside a session-less request (ranked ahead: one step
    of work), which outgrows the blocks: vLLM preempts A's step, then A's client aborts it
    while requeued and resends it. The session is at step 2, and ends after 3 steps: it was
    at step 3 after the resend and its length learned as 4."""
    s = _scheduler(hf_model_dir)
    a1 = _prompt(97, 6)
    run(s, [make_request(a1, 2, HINT)])
    after_one = dict(s.ranker.live)
    other = make_request(_prompt(2, 16), 300)
    s.add_request(other)
    step(s)
    a2 = _step2(a1, 300)
    s.add_request(a2)
    assert a2.priority > other.priority  # (vLLM preempts the largest first)
    for _ in range(2000):
        step(s)
        if a2.status == RequestStatus.PREEMPTED:
            break
        assert not other.is_finished(), "the scenario must preempt A's step"
    else:
        raise AssertionError("A's step was not preempted")
    assert s.ranker.live["A"] == (2, a2.num_prompt_tokens)  # counted at its arrival
    _abort(s, a2)
    assert s.ranker.live == after_one
    run(s, [])
    _finish_session(s, a1)


def test_a_step_aborted_while_it_waited_is_no_step_and_its_growth_is_unlearned(hf_model_dir):
    """One sequence at a time, a long session-less request running: A's step 2 waits, and
    is aborted (resent later). What its arrival taught (the step, the prompt growth) is
    taken back; a step of it that ran keeps it counted."""
    s = _scheduler(hf_model_dir, 64, max_num_seqs=1)
    a1 = _prompt(97, 2)
    run(s, [make_request(a1, 2, HINT)])
    before = (dict(s.ranker.live), dict(s.ranker.growth), dict(s.ranker.seen))
    s.add_request(make_request(_prompt(2, 1), 50))
    step(s)
    a2 = _step2(a1)
    s.add_request(a2)
    assert s.ranker.seen == {"swe": 1}  # learned at its arrival
    step(s)
    assert a2.status == RequestStatus.WAITING
    _abort(s, a2)
    assert (s.ranker.live, s.ranker.growth, s.ranker.seen) == before
    run(s, [])
    _finish_session(s, a1)
    assert s.ranker.seen == {"swe": 2}  # steps 2 and 3, each once


def test_a_step_with_a_request_that_ran_stays_counted(hf_model_dir):
    """Two requests of A's step 2 (vLLM's n = 2 children, or concurrent): one runs to its
    end, the other is aborted while it waits (one sequence at a time): the step ran, so it
    stays counted; and with both aborted unrun, it is taken back once."""
    s = _scheduler(hf_model_dir, 64, max_num_seqs=1)
    a1 = _prompt(97, 2)
    run(s, [make_request(a1, 2, HINT)])
    kids = [_step2(a1), _step2(a1)]
    for k in kids:
        s.add_request(k)
    while not kids[0].is_finished() and not kids[1].is_finished():
        step(s)
    ran, waiting = kids if kids[0].is_finished() else kids[::-1]
    assert waiting.status == RequestStatus.WAITING
    _abort(s, waiting)
    assert s.ranker.live["A"] == (2, ran.num_prompt_tokens)
    after_two = dict(s.ranker.live)
    s.add_request(s_blocker := make_request(_prompt(2, 1), 50))
    step(s)
    kids = [_step2(list(ran.all_token_ids)), _step2(list(ran.all_token_ids))]
    for k in kids:
        s.add_request(k)
    _abort(s, kids[0])
    assert s.ranker.live["A"][0] == 3  # the other may run yet
    _abort(s, kids[1])
    assert s.ranker.live == after_two
    _abort(s, s_blocker)


def test_a_step_whose_requests_are_aborted_unrun_in_one_call_is_taken_back(hf_model_dir):
    """vLLM aborts a request with n > 1 by sending all its children in ONE finish_requests
    call: vLLM has deleted every id of the call before the first child is withdrawn, so the
    second child must not be read as a request that ran and finished (review s57
    diffvtier)."""
    s = _scheduler(hf_model_dir, 64, max_num_seqs=1)
    a1 = _prompt(97, 2)
    run(s, [make_request(a1, 2, HINT)])
    after_one, seen = dict(s.ranker.live), dict(s.ranker.seen)
    s.add_request(blocker := make_request(_prompt(2, 1), 50))
    step(s)
    kids = [_step2(a1), _step2(a1)]
    for k in kids:
        s.add_request(k)
    step(s)
    assert all(k.status == RequestStatus.WAITING and not k.num_computed_tokens for k in kids)
    assert s.ranker.live["A"][0] == 2
    s.finish_requests([k.request_id for k in kids], RequestStatus.FINISHED_ABORTED)
    assert s.ranker.live == after_one
    assert s.ranker.seen == seen
    _abort(s, blocker)


def test_a_step_sent_under_its_sessions_previous_request_id_is_counted(hf_model_dir):
    """A's step 2 arrives under step 1's request id, finished: it is a new step (it was
    taken for a request of step 1, still unfinished, and not counted)."""
    s = _scheduler(hf_model_dir, 64)
    a1 = make_request(_prompt(97, 2), 2, HINT)
    run(s, [a1])
    a2 = _step2(a1.prompt_token_ids)
    a2.request_id = a1.request_id
    run(s, [a2])
    assert s.ranker.live["A"] == (2, a2.num_prompt_tokens)


def test_an_aborted_step_resent_under_its_id_in_the_same_engine_step_counts_once(hf_model_dir):
    """A's step 2 waits, is aborted, and its resend under the same id arrives before vLLM's
    next schedule(): the abort takes the step back and the resend counts it, once."""
    s = _scheduler(hf_model_dir, 64, max_num_seqs=1)
    a1 = _prompt(97, 2)
    run(s, [make_request(a1, 2, HINT)])
    s.add_request(make_request(_prompt(2, 1), 50))
    step(s)
    a2 = _step2(a1)
    s.add_request(a2)
    step(s)
    _abort(s, a2)
    again = _step2(a1)
    again.request_id = a2.request_id
    s.add_request(again)
    assert s.ranker.live["A"] == (2, again.num_prompt_tokens)
    run(s, [])
    run(s, [make_request(list(again.all_token_ids) + _prompt(98, 1), 2, LAST)])
    assert s.ranker.lengths.counts == {"swe": {3: 1}}


def test_the_ranker_takes_back_what_a_withdrawn_step_taught():
    """`SessionRanker.withdraw` (plain Python): the step's count, its growth out of the
    workflow's mean, the length a last step observed; a count changed since stays."""
    from kvsaga.integrations.vllm.session_ranker import SessionRanker

    r = SessionRanker()
    r.record("B", "swe", 100, last_step=False)
    r.record("B", "swe", 200, last_step=False)  # grew 100
    r.record("A", "swe", 100, last_step=False)
    r.record("A", "swe", 160, last_step=False)  # grew 60: mean 80
    rec = r.record("A", "swe", 200, last_step=True)  # grew 40: mean 66.7; length 3
    assert (r.seen, r.lengths.counts, "A" in r.live) == ({"swe": 3}, {"swe": {3: 1}}, False)
    r.withdraw(rec)
    assert r.growth["swe"] == pytest.approx(80.0) and r.seen == {"swe": 2}
    assert r.lengths.counts == {} and r.live["A"] == (2, 160)
    first = r.record("C", "new", 50, last_step=False)
    r.record("C", "new", 90, last_step=False)  # a later step of C recorded since
    r.withdraw(first)
    assert r.live["C"] == (2, 90) and r.seen["new"] == 1
    only = r.record("C", "new", 100, last_step=False)  # grew 10: mean 25 of 2
    r.withdraw(only)
    assert r.growth["new"] == pytest.approx(40.0) and r.live["C"] == (2, 90)
    r.withdraw(r.record("D", "other", 10, last_step=False))
    assert "D" not in r.live  # its first step taken back: a new session again
    r.record("D", "other", 10, last_step=False)
    rec = r.record("D", "other", 30, last_step=False)  # the workflow's first growth
    assert r.seen["other"] == 1
    r.withdraw(rec)  # ranked from the prior again
    assert "other" not in r.growth and "other" not in r.seen and r.live["D"] == (1, 10)
