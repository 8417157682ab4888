"""Regressions from the review of the vLLM integration (its repro scripts), each through
vLLM's real scheduler and BlockPool with the kvsaga connector, driven step by step."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm")

from .harness import BLOCK_SIZE, make_request, make_scheduler, run  # noqa: E402


def _prompt(tag: int, blocks: int) -> list[int]:
    return [10_000 + tag * 500 + i for i in range(blocks * BLOCK_SIZE)]


def _pool(s):
    return s.kv_cache_manager.block_pool


# -- a hint's expected_s as a huge JSON integer ----------------------------------------------

HUGE_HINT = json.loads('{"kvsaga": {"session_id": "A", "tool": "t", "expected_s": 1'
                       + "0" * 400 + "}}")


def test_a_huge_integer_expected_s_is_a_malformed_hint_not_a_crash(hf_model_dir):
    """`expected_s` 10**400 (valid JSON, a Python int) passed the hint's checks, then raised
    OverflowError inside vLLM's `schedule()` (the gate's working sets, graph's pause
    arithmetic), which kills the engine core for every client. Now the hint is refused
    (InvalidRequest naming the field): the request runs as one outside any session."""
    from kvsaga.errors import InvalidRequest
    from kvsaga.integrations.vllm.hints import step_info

    with pytest.raises(InvalidRequest, match="expected_s"):
        step_info(HUGE_HINT)
    for policy, admission in (("ttl", False), ("graph", False), ("ttl", True),
                              ("graph", True)):
        s = make_scheduler(hf_model_dir, 40, connector=True, policy=policy,
                           admission=admission)
        t = [100.0]
        s.connector.clock = lambda t=t: t[0]
        r = make_request(_prompt(1, 8), 1)
        r.kv_transfer_params = HUGE_HINT
        run(s, [r])
        t[0] += 1
        for i in range(2, 6):  # other sessions arrive and press on memory
            run(s, [make_request(_prompt(i, 12), 1, {"session_id": f"S{i}"})])
            t[0] += 50
        assert "A" not in s.connector.holds and "A" not in s.connector._sessions
        assert s.connector.gate is None or "A" not in s.connector.gate.sessions
