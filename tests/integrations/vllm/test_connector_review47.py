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
                                         r"base_ttl_s must be > 0, got -5"):
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
