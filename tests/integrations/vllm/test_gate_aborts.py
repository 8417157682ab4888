"""Regressions from the review of the connector's gate (session 45), through vLLM's real
scheduler and BlockPool: requests aborted before or after vLLM allocated them, demotions
made to let a waiting session in, and `kv_connector_extra_config` values checked."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm")

from .harness import BLOCK_SIZE, TOKEN, make_request, make_scheduler, run, step  # noqa: E402


def _prompt(tag: int, blocks: int) -> list[int]:
    return [10_000 + tag * 500 + i for i in range(blocks * BLOCK_SIZE)]


def _clocked(s) -> list[float]:
    t = [100.0]
    s.connector.clock = lambda: t[0]
    return t


def _abort(s, request) -> None:
    from vllm.v1.request import RequestStatus

    s.finish_requests(request.request_id, RequestStatus.FINISHED_ABORTED)


def test_a_deferred_client_that_resends_gets_in_once_the_memory_idles(hf_model_dir):
    """A (30 of 39 blocks) pauses on a tool hinted 600 s and nothing else runs; W does not
    fit beside A's working set, and its client resends every 3 s. Each abort of W's
    unallocated request restarted the gate's idle clock and its pause log learned the
    resend as a 0 s tool pause: W got in only once 8 such "pauses" had shrunk the expiry
    limit to 0 s and expired A, 25 s later, its retained blocks released."""
    s = make_scheduler(hf_model_dir, 40, connector=True)
    t = _clocked(s)
    c = s.connector
    run(s, [make_request(_prompt(1, 30), 2, {"session_id": "A", "tool": "t", "expected_s": 600})])
    w = make_request(_prompt(2, 15), 2, {"session_id": "W"})
    s.add_request(w)
    sent = t[0]
    while w.request_id not in step(s).num_scheduled_tokens:
        assert t[0] < 130.0, "W never scheduled"
        t[0] += 1.0
        if t[0] - sent >= 3:  # the client times out and resends
            _abort(s, w)
            w = make_request(_prompt(2, 15), 2, {"session_id": "W"})
            s.add_request(w)
            sent = t[0]
    assert t[0] - 100.0 == pytest.approx(c.gate.idle_admit_s)  # idle since A's finish
    assert c.gate.admitted_by == {"idle": 1} and c.gate.num_expired == 0
    # A still admitted and retained (less the room W's step took), no pause learned
    assert "A" in c.gate.sessions and c.holds.get("A") and not c.gate.pauses.observed


@pytest.mark.parametrize("keep", [False, True])
def test_a_session_demoted_to_let_a_waiting_one_in_is_released_or_kept(hf_model_dir, keep):
    """A (pause hinted 1 s) is past its demotion deadline when C's first step is probed; the
    gate demoted it to let C in, but `admit` said only yes or no: A's blocks stayed retained,
    and were not among the kept demoted sessions (released first) either."""
    s = make_scheduler(hf_model_dir, 48, connector=True, policy="graph", keep_demoted=keep)
    t = _clocked(s)
    c, g = s.connector, s.connector.gate
    run(s, [make_request(_prompt(1, 12), 2, {"session_id": "A", "tool": "t", "expected_s": 1})])
    t[0] += 0.5
    run(s, [make_request(_prompt(2, 12), 2, {"session_id": "B", "tool": "t",
                                             "expected_s": 600})])
    assert list(g.sessions) == ["A", "B"] and set(c.holds) == {"A", "B"}
    t[0] += 20  # A is past 4 x 1 s + 10 s; B is not
    s.add_request(make_request(_prompt(3, 20), 60, {"session_id": "C", "tool": "t",
                                                    "expected_s": 600}))
    step(s)
    assert "A" not in g.sessions and g.num_demotions == 1 and g.num_expired == 0
    if keep:
        assert "A" in c._demoted and len(c.holds["A"]) == 12  # released first, when needed
    else:
        assert "A" not in c.holds and "A" not in c._demoted  # plain LRU cache in vLLM


def test_a_step_preempted_then_aborted_teaches_the_gate_nothing(hf_model_dir):
    """A's second step runs, vLLM preempts it, and the client aborts it while requeued: the
    connector told the policy the step was withdrawn, but the gate counted it as a step
    done, learned growth from its partial output and took that as A's context."""
    s = make_scheduler(hf_model_dir, 40, connector=True, policy="ttl")
    t = _clocked(s)
    g = s.connector.gate
    a1 = _prompt(97, 6)
    run(s, [make_request(a1, 2, {"session_id": "A", "tool": "t", "expected_s": 30,
                                 "workflow": "w"})])
    a = g.sessions["A"]
    before = (a.context, a.last_finish, a.paused_at, a.expected_s)
    learned = (g._growth.mean("w"), g._growth.replies.mean("w"), g.order.done["A"])
    t[0] += 1
    a2 = make_request(a1 + [TOKEN] * 2 + _prompt(99, 1), 200, {"session_id": "A",
                                                                "workflow": "w"})
    s.add_request(make_request(_prompt(2, 16), 200))  # no session: it outgrows the blocks
    s.add_request(a2)
    for _ in range(400):
        if a2.request_id in (step(s).preempted_req_ids or ()):
            break
        t[0] += 0.01
    else:
        raise AssertionError("A's step was never preempted")
    assert a2.num_tokens > a.context  # its partial output
    t[0] += 0.5
    _abort(s, a2)
    assert (a.context, a.last_finish, a.paused_at, a.expected_s) == before
    assert (g._growth.mean("w"), g._growth.replies.mean("w"), g.order.done["A"]) == learned
    assert a2.request_id not in g._in_flight


@pytest.mark.parametrize("scheduler", ["vllm", "kvsaga"])
def test_a_session_whose_only_request_was_aborted_unallocated_is_no_abandoned_one(
        hf_model_dir, scheduler):
    """X's first request is aborted before it ever got blocks (no step ran, nothing is
    retained): the connector filed X as paused all the same (KVSagaScheduler at its arrival
    too), and the idle sweep later ended it as `abandoned` and told the gate to forget it."""
    from vllm.v1.core.sched.scheduler import Scheduler

    from kvsaga.integrations.vllm.scheduler import KVSagaScheduler

    kvsaga = scheduler == "kvsaga"
    s = make_scheduler(hf_model_dir, 40, connector=True, session_idle_s=10,
                       scheduler_cls=KVSagaScheduler if kvsaga else Scheduler,
                       scheduling_policy="priority" if kvsaga else "fcfs")
    t = _clocked(s)
    if kvsaga:
        s.clock = lambda: t[0]
    c = s.connector
    for i in range(3):
        x = make_request([5000 + 100 * i + j for j in range(4 * BLOCK_SIZE)], 2,
                         {"session_id": f"X{i}"})
        s.add_request(x)
        _abort(s, x)
    assert c._paused == {} and c._sessions == {} and c.holds == {}
    t[0] += 20
    run(s, [make_request(list(range(7000, 7000 + BLOCK_SIZE)), 1)])  # the sweep runs
    assert c.stats.abandoned == 0


def test_a_session_with_records_is_still_paused_by_an_aborted_request(hf_model_dir):
    """The other side of the rule above: a session that ran a step keeps its pause (and is
    ended as abandoned once it runs past session_idle_s)."""
    s = make_scheduler(hf_model_dir, 40, connector=True, session_idle_s=10)
    t = _clocked(s)
    c = s.connector
    run(s, [make_request(_prompt(1, 4), 2, {"session_id": "X", "tool": "t"})])
    t[0] += 1
    x = make_request(_prompt(1, 5), 2, {"session_id": "X"})
    s.add_request(x)
    _abort(s, x)
    assert c._paused == {"X": 101.0}
    t[0] += 20
    run(s, [make_request(list(range(7000, 7000 + BLOCK_SIZE)), 1)])
    assert c.stats.abandoned == 1 and "X" not in c._sessions


@pytest.mark.parametrize("reserve", [39, 10**6])
def test_reserve_blocks_that_leave_no_block_are_refused_when_vllm_binds_them(hf_model_dir,
                                                                              reserve):
    """reserve_blocks 10**6 was accepted over 39 usable blocks (the gate's capacity clamped
    to 1 block, every retained block released after each step)."""
    with pytest.raises(ValueError, match="reserve_blocks must be below vLLM's 39 usable"):
        make_scheduler(hf_model_dir, 40, connector=True, reserve_blocks=reserve)
    s = make_scheduler(hf_model_dir, 40, connector=True, reserve_blocks=38)
    assert s.connector.gate.capacity == 1


@pytest.mark.parametrize(("key", "value"), [("gate_args", "abc"), ("gate_args", None),
                                            ("reserve_blocks", 2.7), ("step_cost_args", 5)])
def test_a_hand_written_config_with_a_bad_value_is_refused_naming_the_key(hf_model_dir, key,
                                                                           value):
    """The connector runs the same checks as `kv_transfer_config` on a JSON written by hand."""
    cfg = {"kv_connector": "KVSagaConnector",
           "kv_connector_module_path": "kvsaga.integrations.vllm.connector",
           "kv_role": "kv_both", "kv_connector_extra_config": {"policy": "ttl", key: value}}
    with pytest.raises(ValueError, match=rf"kvsaga connector: {key} must be "):
        make_scheduler(hf_model_dir, 40, connector=False, kv_transfer=json.dumps(cfg))
