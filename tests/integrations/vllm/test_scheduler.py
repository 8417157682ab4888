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


def test_requests_outside_sessions_rank_on_the_sessions_scale_and_lengths_are_learned(
        hf_model_dir):
    """A request outside any session is one step of work arriving now: it goes before a new
    session that came at the same time (16 steps predicted) but not before one that came
    more than aging_s x ln 16 seconds earlier; a client's own priority is added."""
    s = _kvsaga(hf_model_dir)
    s.clock = lambda: 0.0
    plain = make_request(_prompt(3, 1), 1)
    plain.priority = 7
    s.add_request(plain)
    assert plain.priority == 7  # one step at clock 0: 0, plus the client's 7
    run(s, [])
    session = make_request(_prompt(5, 1), 1, {"session_id": "B", "tool": "t"})
    s.add_request(session)
    s.clock = lambda: 1000.0  # > 60 s x ln 16 later: the session waited long enough
    late = make_request(_prompt(6, 1), 1)
    assert _first_scheduled(s, [late]) == session.request_id
    assert late.priority == 1_000_000 > session.priority
    run(s, [])
    for k in range(3):  # a session of 3 steps, the last hinted: its length is learned
        hint = {"session_id": "A", "workflow": "swe", "last_step": k == 2}
        run(s, [make_request(_prompt(4, 1 + k), 1, hint)])
    assert s.ranker.lengths.counts == {"swe": {3: 1}}
    assert "A" not in s.ranker.live  # the ended session is forgotten


def test_a_request_vllm_refuses_or_already_holds_changes_no_ranking(hf_model_dir):
    s = _kvsaga(hf_model_dir)
    s.clock = lambda: 0.0
    first = make_request(_prompt(7, 2), 1, {"session_id": "A", "tool": "t"})
    s.add_request(first)
    before = (dict(s.ranker.live), first.priority)
    with pytest.raises(AssertionError, match="duplicate request id"):
        s.add_request(first)  # the same id again: vLLM's own error, no step counted
    assert (s.ranker.live, first.priority) == before

    def refuse(request):
        raise RuntimeError("queue full")

    s._enqueue_waiting_request = refuse
    again = make_request(_prompt(7, 3), 1, {"session_id": "A", "tool": "t"})
    with pytest.raises(RuntimeError, match="queue full"):
        s.add_request(again)
    assert (s.ranker.live, again.priority) == (before[0], 0)


def test_it_names_the_flag_it_needs_and_a_bad_setting(hf_model_dir):
    from kvsaga.integrations.vllm.scheduler import KVSagaScheduler

    with pytest.raises(ValueError, match="--scheduling-policy priority"):
        make_scheduler(hf_model_dir, 16, connector=True, scheduler_cls=KVSagaScheduler)
    with pytest.raises(ValueError, match="aging_s"):
        _kvsaga(hf_model_dir, 16, scheduler_args={"aging_s": 0})
    with pytest.raises(ValueError, match="work"):
        _kvsaga(hf_model_dir, 16, scheduler_args={"work": "bytes"})
    with pytest.raises(ValueError, match="admitted_first"):
        _kvsaga(hf_model_dir, 16, scheduler_args={"admitted_first": 1})


@pytest.mark.parametrize(("ahead", "arrivals"),
                         [(True, True), (True, False), (False, True), (False, False)])
def test_an_admitted_sessions_step_goes_first_and_the_gate_hears_it_arrive(
        hf_model_dir, ahead, arrivals):
    """The gate on, one sequence at a time. A ran a step (admitted, paused); new session N
    arrives at clock 0, A's next step at clock 100: by predicted work with aging, N (16
    steps, 100 s earlier) ranks first. `admitted_first` alone decides the queue: A's step
    goes ahead of N; `gate_arrivals` alone decides what the gate sees: A back, with its
    prompt, as soon as vLLM has the step, not paused until vLLM asks about it."""
    from kvsaga.integrations.vllm.scheduler import KVSagaScheduler

    s = make_scheduler(hf_model_dir, 64, connector=True, max_num_seqs=1,
                       scheduling_policy="priority", scheduler_cls=KVSagaScheduler,
                       scheduler_args={"admitted_first": ahead, "gate_arrivals": arrivals})
    assert (s.admitted_first, s.gate_arrivals) == (ahead, arrivals)
    gate = s.connector.gate
    now = [0.0]
    s.clock = s.connector.clock = lambda: now[0]
    a1 = _prompt(30, 2)
    hint = {"session_id": "A", "workflow": "swe", "tool": "t", "expected_s": 600.0}
    run(s, [make_request(a1, 2, hint)])
    assert "A" in gate.sessions and gate.sessions["A"].paused_at is not None
    n = make_request(_prompt(31, 2), 2, {"session_id": "N", "workflow": "swe", "tool": "t"})
    s.add_request(n)
    now[0] = 100.0
    a2 = make_request(a1 + [7, 7] + _prompt(32, 1), 2, hint)
    s.add_request(a2)
    assert (gate.sessions["A"].paused_at is None) == arrivals
    assert gate.sessions["A"].context == (a2.num_prompt_tokens if arrivals
                                          else 2 * BLOCK_SIZE + 2)
    assert (a2.priority < n.priority) == ahead
    (first,) = step(s).scheduled_new_reqs
    assert first.req_id == (a2.request_id if ahead else n.request_id)
    run(s, [])  # both finish; nothing stuck
    assert not s.requests and not gate.num_in_flight


def test_without_a_connector_it_ranks_with_its_defaults(hf_model_dir):
    """KVSagaScheduler with no `--kv-transfer-config` (no connector, no gate): the default
    settings, and sessions still ranked from their hints (a session at its last step before
    a new one that came first); `admitted_first` and `gate_arrivals` have no gate to use."""
    from kvsaga.integrations.vllm.scheduler import KVSagaScheduler

    s = make_scheduler(hf_model_dir, 64, connector=False, max_num_seqs=1,
                       scheduling_policy="priority", scheduler_cls=KVSagaScheduler)
    r = s.ranker
    assert s.connector is None and s._kvsaga() is None and s._gate() is None
    assert (s.admitted_first, s.gate_arrivals) == (True, True)
    assert (r.aging_s, r.prior_steps, r.prior_growth, r.work) == (60.0, 16.0, 64.0, "steps")
    s.clock = lambda: 100.0
    new = make_request(_prompt(33, 2), 2, {"session_id": "N", "workflow": "swe", "tool": "t"})
    last = make_request(_prompt(34, 2), 2, {"session_id": "L", "last_step": True})
    assert _first_scheduled(s, [new, last]) == last.request_id
    run(s, [])
    assert not s.requests and set(r.live) == {"N"}


def test_settings_are_read_from_the_kvsaga_part_behind_vllms_multiconnector(hf_model_dir):
    """With vLLM's offload tier the connectors sit in a MultiConnector, whose own extra
    config lists them only: the scheduler finds the gate and its settings in kvsaga's part."""
    from kvsaga.integrations.vllm import offload_transfer_config
    from kvsaga.integrations.vllm.scheduler import KVSagaScheduler

    retention = {"policy": "ttl", "scheduler_args": {"aging_s": 5, "admitted_first": False}}
    s = make_scheduler(hf_model_dir, 64, connector=True, scheduling_policy="priority",
                       scheduler_cls=KVSagaScheduler,
                       kv_transfer=offload_transfer_config(1 << 20, "lru", retention))
    assert (s.ranker.aging_s, s.admitted_first, s.gate_arrivals) == (5.0, False, True)
    assert s._gate() is not None and s._gate() is s._kvsaga().gate


def _demoting(hf_model_dir, keep: bool):
    """Session D (12 blocks) admitted; K (4 blocks) and then E (K's first block and 3 of its
    own) each demoted by the gate's shrink at their finish: no growth is reserved at
    admission, 15 steps of one block each are predicted at every finish."""
    s = make_scheduler(hf_model_dir, 40, connector=True, keep_demoted=keep,
                       gate_args={"horizon_steps": 0, "prior_growth_tokens": 16,
                                  "shrink_horizon_steps": 15})
    k1 = _prompt(21, 4)
    for sid, prompt in (("D", _prompt(20, 12)), ("K", k1), ("E", k1[:16] + _prompt(22, 3))):
        run(s, [make_request(prompt, 2, {"session_id": sid, "tool": "t", "expected_s": 600.0})])
    return s, k1


def test_kept_demoted_sessions_count_shared_blocks_once_and_go_first(hf_model_dir):
    """`keep_demoted` through the gate: the shrink demotes K then E; without the option their
    blocks go back at once, with it they stay retained, counted as vLLM's room (a block the
    two share once), and are released before the policy's choice."""
    s, _ = _demoting(hf_model_dir, keep=False)
    assert s.connector.gate.num_demotions == 2 and set(s.connector.holds) == {"D"}
    s, _ = _demoting(hf_model_dir, keep=True)
    c = s.connector
    assert list(c._demoted) == ["K", "E"] and list(c.gate.sessions) == ["D"]
    assert c.holds["K"][0] == c.holds["E"][0] and len(c.holds["K"]) == len(c.holds["E"]) == 4
    assert c._demoted_only() == 7  # 4 + 4 held, one of them by both
    free = c.pool.get_num_free_blocks()
    assert c._release_until(free + 2, 0.0, "admit") == 2
    assert len(c.holds["K"]) == 2 and len(c.holds["E"]) == 4  # K, the older demotion, first
    assert c.stats.by_reason == {"demoted": 2} and len(c.holds["D"]) == 12


def test_kept_demoted_blocks_a_running_request_holds_are_not_released_for_room(hf_model_dir):
    """A request runs on K's context (its 4 blocks, the first also E's). Releasing kept
    demoted sessions first dropped K's references on them, which freed nothing (the request
    holds them) and lost K's retention; now K keeps them, E's own 3 go and then the
    policy's choice (D's), and E keeps the block the request holds."""
    s, k1 = _demoting(hf_model_dir, keep=True)
    c = s.connector
    k_held, e_first = list(c.holds["K"]), c.holds["E"][0]
    s.add_request(make_request(k1 + [7] * 8, 50))  # no session: runs on K's blocks (hits)
    step(s)
    assert all(c.pool.blocks[b].ref_cnt > len(c._holders[b]) for b in k_held)
    free = c.pool.get_num_free_blocks()
    c._release_until(free + 5, 0.0, "admit")
    assert c.pool.get_num_free_blocks() == free + 5
    assert c.holds["K"] == k_held and c.holds["E"] == [e_first]
    assert list(c._demoted) == ["K", "E"] and len(c.holds["D"]) == 10
    assert c.stats.by_reason == {"demoted": 3, "admit": 2}


def test_a_kept_demoted_session_coming_back_keeps_its_hits(hf_model_dir):
    """K, demoted before E, comes back with a step that needs 2 blocks released: the gate
    admits it, so its blocks are its hits, neither vLLM's room nor the first to go; E's go.
    (Counted as demoted, K's own hits went first, vLLM could not allocate the step, and its
    second probe released all of E's blocks and D's too.)"""
    s, k1 = _demoting(hf_model_dir, keep=True)
    c = s.connector
    seen = []
    admit = c.gate.admit
    c.gate.admit = lambda *a, **k: seen.append((a[0], a[5], c.pool.get_num_free_blocks())) \
        or admit(*a, **k)
    k2 = k1 + [7, 7] + _prompt(23, 21)[:334]  # 400 tokens: 21 blocks beyond its 4 hits
    (hits,) = run(s, [make_request(k2, 2, {"session_id": "K", "tool": "t"})]).values()
    assert hits == 4 * BLOCK_SIZE
    ((sid, spare, free),) = seen
    assert sid == "K" and spare == free + 3 - (21 + 1)  # E's own 3 blocks count, not K's
    assert len(c.holds["E"]) < 4 and len(c.holds["D"]) == 12  # E's went, not D's
    assert "admit" not in c.stats.by_reason  # nothing beyond the kept demoted blocks
    with pytest.raises(ValueError, match="keep_demoted"):
        make_scheduler(hf_model_dir, 16, connector=True, keep_demoted="yes")


def test_a_kept_demoted_session_riding_along_does_not_count_its_own_blocks_as_room(
        hf_model_dir):
    """Riding along past the gate asks the same room as admission: a returning kept demoted
    session's own blocks are its hits, not room (only E's 3 count for K; all 7 for D)."""
    s, _ = _demoting(hf_model_dir, keep=True)
    c = s.connector
    c.best_effort_steps, c.cost.cheap = 10, lambda tokens, steps: True
    assert (c._demoted_only("K"), c._demoted_only()) == (3, 7)
    fits = c.pool.get_num_free_blocks() + 3 - c.gate.num_in_flight - c.reserve_blocks
    assert c._best_effort(1, fits, "K") and not c._best_effort(1, fits + 1, "K")
    assert c._best_effort(1, fits + 4, "D")



def test_the_ranker_learns_prompt_growth_only_when_a_step_is_recorded():
    """With `work` "tokens" a session's rank counts the context's growth a step: the mean
    growth per workflow, learned from accepted steps only (`priority` changes nothing)."""
    from kvsaga.integrations.vllm.scheduler import SessionRanker

    r = SessionRanker(prior_growth_tokens=64.0, work="tokens")
    r.record("A", "swe", 100, last_step=False)
    assert r.growth == {}  # a first step has no growth to learn
    r.priority("A", "swe", 160, last_step=False, now=0.0)
    assert r.growth == {} and r.live == {"A": (1, 100)}  # ranking is side-effect free
    r.record("A", "swe", 160, last_step=False)
    assert r.growth == {"swe": 60.0} and r.seen == {"swe": 1}  # 64 + (60 - 64) / 1
    r.record("A", "swe", 190, last_step=False)  # grew 30: the mean of 60 and 30
    assert r.growth == {"swe": 45.0} and r.seen == {"swe": 2}
    # more predicted growth ranks the same step later (a larger priority value)
    fast = SessionRanker(prior_growth_tokens=0.0, work="tokens")
    slow = SessionRanker(prior_growth_tokens=512.0, work="tokens")
    assert (fast.priority("B", "swe", 100, last_step=False, now=0.0)
            < slow.priority("B", "swe", 100, last_step=False, now=0.0))


def test_the_scheduler_args_the_config_check_knows_are_those_it_reads():
    """connector_config checks scheduler_args against session_ranker.py's SessionRanker (no
    vLLM import there): it must be the one KVSagaScheduler builds, or a setting added to
    the scheduler's ranker would be refused as unknown."""
    import inspect

    from kvsaga.integrations.vllm.connector_config import SCHEDULER_ARGS
    from kvsaga.integrations.vllm.scheduler import SessionRanker

    ranker = set(inspect.signature(SessionRanker).parameters)
    assert set(SCHEDULER_ARGS) == ranker | {"admitted_first", "gate_arrivals"}


def test_an_unknown_top_level_scheduler_arg_is_named_without_a_kvsaga_connector(hf_model_dir):
    """Behind another connector alone, no kvsaga connector checks the top-level
    scheduler_args: an unknown one failed in SessionRanker(**args) with a bare TypeError."""
    import json

    from kvsaga.integrations.vllm import offload_transfer_config
    from kvsaga.integrations.vllm.scheduler import KVSagaScheduler

    transfer = json.loads(offload_transfer_config(1 << 20, "lru"))
    transfer["kv_connector_extra_config"]["scheduler_args"] = {"agin_s": 5}
    with pytest.raises(ValueError, match="unknown scheduler_args key\\(s\\) 'agin_s' "
                                         "\\(did you mean 'aging_s'\\?\\)"):
        make_scheduler(hf_model_dir, 64, connector=False, scheduling_policy="priority",
                       scheduler_cls=KVSagaScheduler, kv_transfer=json.dumps(transfer))
