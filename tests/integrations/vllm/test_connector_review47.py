"""Regressions from session 47's review of the vLLM connector (/tmp/review-vllmconn's repro
scripts), through vLLM's real scheduler and BlockPool, driven step by step."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from .harness import BLOCK_SIZE, make_request, make_scheduler, run, step  # noqa: E402


def _prompt(tag: int, blocks: int) -> list[int]:
    return [10_000 + tag * 500 + i for i in range(blocks * BLOCK_SIZE)]


def test_an_lru_release_under_pressure_keeps_a_head_the_next_step_hits(hf_model_dir):
    """`lru` names a paused session's blocks head first: released for a request of no
    session, they left its tail retained past a hole vLLM's prefix lookup never crosses, so
    its next step hit nothing while 5 blocks stayed pinned. Now the tail goes first: what
    stays is the head of its context, and the next step hits it."""
    s = make_scheduler(hf_model_dir, 40, connector=True, policy="lru", admission=False)
    c = s.connector
    ctx = _prompt(1, 10)
    run(s, [make_request(ctx, 1, {"session_id": "S", "tool": "t", "expected_s": 5})])
    held = list(c.holds["S"])
    assert len(held) == 10
    run(s, [make_request(_prompt(2, 33), 1)])  # needs most of the pool
    kept = c.holds["S"]
    assert 0 < len(kept) < 10 and kept == held[:len(kept)]
    nxt = make_request(ctx + [1, 2, 3], 1, {"session_id": "S", "tool": "t", "expected_s": 5})
    assert run(s, [nxt])[nxt.request_id] >= len(kept) * BLOCK_SIZE


def test_a_policy_argument_json_cannot_give_is_refused_before_vllm_starts(hf_model_dir):
    """`cost` 5 passed and raised AttributeError inside `schedule()` once pressure asked the
    policy for victims, which killed vLLM's engine core."""
    with pytest.raises(ValueError, match="policy_args 'cost' takes a Python object"):
        make_scheduler(hf_model_dir, 24, connector=True, policy="ttl",
                       policy_args={"cost": 5}, admission=False)


def test_a_value_the_policy_refuses_names_policy_args_when_the_connector_starts(
        hf_model_dir):
    """The policy's own error came out of vLLM's start naming no setting (a bare TypeError
    for a string; the policy's message alone for a range)."""
    with pytest.raises(ValueError, match=r"kvsaga connector: policy_args of policy 'ttl': "
                                         r"base_ttl_s must be a finite number > 0, got -5"):
        make_scheduler(hf_model_dir, 24, connector=True, policy="ttl",
                       policy_args={"base_ttl_s": -5}, admission=False)


def test_a_gate_key_with_admission_off_is_refused_before_vllm_starts(hf_model_dir):
    with pytest.raises(ValueError, match="gate_args act\\(s\\) only through the admission"):
        make_scheduler(hf_model_dir, 40, connector=True, admission=False,
                       gate_args={"horizon_steps": -5})


def test_a_request_aborted_in_its_first_chunk_leaves_its_steps_context_retained(
        hf_model_dir):
    """Two requests of session S run as one step; the first finishes and retains S's context,
    the second is aborted after a first prefill chunk of less than a block (no full block).
    Its finish retained nothing in place of that context: S's next step hit nothing."""
    from vllm.v1.request import RequestStatus

    s = make_scheduler(hf_model_dir, 40, connector=True, admission=False,
                       max_num_batched_tokens=4 * BLOCK_SIZE)
    c = s.connector
    hint = {"session_id": "S", "tool": "t", "expected_s": 5}
    ctx = _prompt(3, 3) + [1, 2]  # 3 full blocks, and the budget's last tokens...
    short, long = make_request(ctx, 1, hint), make_request(_prompt(4, 6), 1, hint)
    s.add_request(short)
    s.add_request(long)
    step(s)  # ...go to `long`: less than a block of its prompt
    assert short.is_finished() and 0 < long.num_computed_tokens < BLOCK_SIZE
    kept = list(c.holds["S"])
    assert len(kept) == 3
    s.finish_requests(long.request_id, RequestStatus.FINISHED_ABORTED)
    assert c.holds["S"] == kept and c.stats.retained_steps == 1
    nxt = make_request(ctx + [7, 1, 2], 1, {"session_id": "S", "last_step": True})
    assert run(s, [nxt])[nxt.request_id] == 3 * BLOCK_SIZE


def _policy_calls(connector) -> list[str]:
    """The lifecycle calls the connector makes on its policy, in order (recorded)."""
    calls: list[str] = []
    for name in ("step_started", "step_finished", "resume_withdrawn"):
        told = getattr(connector.policy, name)

        def record(*a, _told=told, _name=name, **k):
            calls.append(_name)
            return _told(*a, **k)

        setattr(connector.policy, name, record)
    return calls


def test_a_one_request_step_aborted_in_its_first_chunk_pauses_its_session(hf_model_dir):
    """Session S's only request of a step is aborted after a first prefill chunk of less
    than a block: nothing to keep. Since the empty retain changed nothing, the policy was
    told neither that the step finished nor that it was withdrawn, so its view of S stayed
    running (needed now) for its whole pause, and its pause hints were ignored. (Session 47
    told it `resume_withdrawn`; since review s54 vleft3 it is `step_finished`: the step ran,
    allocated and computing, and the gate counts it: test_gate_withdrawn.py.)"""
    from vllm.v1.request import RequestStatus

    s = make_scheduler(hf_model_dir, 40, connector=True, policy="graph", admission=False,
                       max_num_batched_tokens=4 * BLOCK_SIZE)
    c = s.connector
    calls = _policy_calls(c)
    other = make_request(_prompt(5, 3) + [1] * 8, 1)
    S = make_request(_prompt(6, 6), 1, {"session_id": "S", "tool": "t", "expected_s": 5})
    s.add_request(other)
    s.add_request(S)
    step(s)
    assert 0 < S.num_computed_tokens < BLOCK_SIZE
    s.finish_requests(S.request_id, RequestStatus.FINISHED_ABORTED)
    assert calls == ["step_started", "step_finished"]
    view = c.policy.views["S"]
    assert not view.running and not view.needed_now and view.paused_at is not None
    assert "S" not in c.holds and c.stats.retained_steps == 0


def test_a_completed_step_under_one_block_is_a_pause_the_policy_learns(hf_model_dir):
    """A step of 5 prompt and 3 output tokens completes with no full block to keep: the
    policy was told it started, never that it finished, so the next step 7 s later was a
    retry to the execution graph and the pause on tool t was never learned."""
    s = make_scheduler(hf_model_dir, 40, connector=True, policy="graph", admission=False)
    c = s.connector
    clock = [1000.0]
    c.clock = lambda: clock[0]
    calls = _policy_calls(c)
    ctx = [50_000 + i for i in range(5)]
    hint = {"session_id": "S", "tool": "t", "expected_s": 5}
    run(s, [make_request(ctx, 3, hint)])
    assert calls == ["step_started", "step_finished"]
    assert not c.policy.views["S"].running and c.stats.retained_steps == 0
    clock[0] += 7
    run(s, [make_request(ctx + [7, 7, 7, 1, 2], 3, hint)])
    graph = c.policy.graph
    assert graph.node(graph._tracks["S"].workflow, "t").resumed == 1


def test_a_step_run_unretained_is_a_pause_the_policy_is_told(hf_model_dir):
    """The gate holds B back and its cheap step rides along unretained (nothing kept at its
    finish): the policy was told it started and never that it finished, so B stayed
    running to it through its pause."""
    from .harness import TOKEN

    now = [0.0]
    s = make_scheduler(hf_model_dir, 40, connector=True, gate_args={"room_admit": False},
                       best_effort_steps=10)
    c = s.connector
    c.clock = lambda: now[0]
    for n in (1, 200, 5, 90):  # steps cost mostly their fixed 0.5 s: riding along is cheap
        c.cost.observe(n, 0.5 + 0.0001 * n)
    a = _prompt(7, 20)
    run(s, [make_request(a, 2, {"session_id": "A", "tool": "t", "expected_s": 30})])
    calls = _policy_calls(c)
    b = make_request(_prompt(8, 3), 2, {"session_id": "B", "tool": "t", "expected_s": 5})
    run(s, [b])
    assert c.stats.best_effort == 1 and "B" not in c.holds
    assert calls == ["step_started", "step_finished"] and not c.policy.views["B"].running
    assert c.stats.retained_steps == 1  # A's step only
    run(s, [make_request(a + [TOKEN] * 2, 1, {"session_id": "A", "last_step": True})])


def test_step_cost_args_set_the_reported_step_fit_with_admission_off(hf_model_dir):
    """With admission off the connector still fits every step's time, and its stats line
    reports the fit: `step_cost_args` act there too, and are taken."""
    fits = {}
    for min_steps in (3, 1000):
        s = make_scheduler(hf_model_dir, 40, connector=True, admission=False,
                           step_cost_args={"min_steps": min_steps})
        c = s.connector
        clock = [0.0]

        def tick(clock=clock):
            clock[0] += 0.01
            return clock[0]

        c.clock = tick
        run(s, [make_request(_prompt(9 + i, 2) + [i], 4, {"session_id": f"S{i}"})
                for i in range(3)])
        c._log_stats(c.clock())
        fits[min_steps] = c.stats.step_fixed_us
    assert fits[3] > 0 and fits[1000] == 0
