"""KVSagaScheduler (`--scheduler-cls`, under vLLM's `--scheduling-policy priority`) as vLLM
builds it, and the connector's `keep_demoted`, through vLLM's real scheduler and BlockPool."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from .harness import BLOCK_SIZE, make_request, make_scheduler, run, step  # noqa: E402


def _prompt(tag: int, blocks: int) -> list[int]:
    return [10_000 + tag * 500 + i for i in range(blocks * BLOCK_SIZE)]


def _kvsaga(hf_model_dir, blocks: int = 64, **extra):
    from kvsaga.integrations.vllm.scheduler import KVSagaScheduler

    return make_scheduler(hf_model_dir, blocks, connector=True, admission=False,
                          max_num_seqs=1, scheduling_policy="priority",
                          scheduler_cls=KVSagaScheduler, **extra)


def _first_scheduled(s, requests) -> str:
    for r in requests:
        s.add_request(r)
    (new,) = step(s).scheduled_new_reqs  # one sequence at a time: the queue's head
    return new.req_id


def test_a_session_at_its_last_step_goes_before_an_earlier_new_session(hf_model_dir):
    """Same clock, one sequence at a time: vLLM's FCFS runs the request that came first;
    KVSagaScheduler runs the session that says this is its last step (1 step left) before a
    new session (prior_steps left), though it came second."""
    for sched_cls in ("plain", "kvsaga"):
        s = (_kvsaga(hf_model_dir) if sched_cls == "kvsaga"
             else make_scheduler(hf_model_dir, 64, connector=True, admission=False,
                                 max_num_seqs=1, scheduling_policy="priority"))
        if sched_cls == "kvsaga":
            s.clock = lambda: 100.0
        new = make_request(_prompt(1, 2), 2, {"session_id": "N", "tool": "t"})
        last = make_request(_prompt(2, 2), 2, {"session_id": "L", "last_step": True})
        first = _first_scheduled(s, [new, last])
        assert first == (last.request_id if sched_cls == "kvsaga" else new.request_id)
        if sched_cls == "kvsaga":
            assert last.priority < new.priority
        run(s, [])  # both finish; nothing stuck


def test_requests_outside_sessions_keep_their_priority_and_sessions_learn_lengths(
        hf_model_dir):
    s = _kvsaga(hf_model_dir)
    s.clock = lambda: 0.0
    plain = make_request(_prompt(3, 1), 1)
    plain.priority = 7
    s.add_request(plain)
    assert plain.priority == 7
    for k in range(3):  # a session of 3 steps, the last hinted: its length is learned
        hint = {"session_id": "A", "workflow": "swe", "last_step": k == 2}
        run(s, [make_request(_prompt(4, 1 + k), 1, hint)])
    assert s.ranker.lengths.counts == {"swe": {3: 1}}
    assert "A" not in s.ranker.live  # the ended session is forgotten


def test_it_names_the_flag_it_needs_and_a_bad_setting(hf_model_dir):
    from kvsaga.integrations.vllm.scheduler import KVSagaScheduler

    with pytest.raises(ValueError, match="--scheduling-policy priority"):
        make_scheduler(hf_model_dir, 16, connector=True, scheduler_cls=KVSagaScheduler)
    with pytest.raises(ValueError, match="aging_s"):
        _kvsaga(hf_model_dir, 16, scheduler_args={"aging_s": 0})
    with pytest.raises(ValueError, match="work"):
        _kvsaga(hf_model_dir, 16, scheduler_args={"work": "bytes"})


def test_kept_demoted_blocks_go_first_and_count_as_room(hf_model_dir):
    """`keep_demoted`: a demoted session's blocks stay retained (hits if it returns before
    memory is needed) but are released before the policy's own choice, and the gate counts
    them as vLLM's room. Demotion is marked by hand here (the gate's shrink decides it)."""
    s = make_scheduler(hf_model_dir, 40, connector=True, admission=False, keep_demoted=True)
    for sid, tag in (("D", 20), ("K", 21)):  # two paused sessions, 12 blocks each
        run(s, [make_request(_prompt(tag, 12), 2, {"session_id": sid, "tool": "t",
                                                   "expected_s": 1.0 if sid == "D" else 9e3})])
    c = s.connector
    c._demoted["D"] = None
    assert c._demoted_only() == 12
    free = c.pool.get_num_free_blocks()
    assert c._release_until(free + 3, 0.0, "admit") == 3
    assert len(c.holds["D"]) == 9 and len(c.holds["K"]) == 12  # D's tail went, K kept all
    assert c.stats.by_reason == {"demoted": 3}
    c._release_until(free + 15, 0.0, "admit")
    assert "D" not in c.holds and "D" not in c._demoted and len(c.holds["K"]) == 9
    assert c.stats.by_reason == {"demoted": 12, "admit": 3}
    with pytest.raises(ValueError, match="keep_demoted"):
        make_scheduler(hf_model_dir, 16, connector=True, keep_demoted="yes")
