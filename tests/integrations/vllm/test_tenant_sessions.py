"""Two tenants (vLLM's `cache_salt`) that name the same session id, inside vLLM's real
scheduler. Review s51 (vconn MED-6): the connector keyed sessions by the id alone, so tenant
B's step of session "1" released tenant A's retained context for "1", and B's last step
ended A's session; kvsaga's own server namespaces session ids by tenant."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from .harness import BLOCK_SIZE, TOKEN, make_request, make_scheduler, run  # noqa: E402


def _prompt(tag: int, blocks: int) -> list[int]:
    return [10_000 + tag * 500 + i for i in range(blocks * BLOCK_SIZE)]


def test_another_tenants_session_of_the_same_id_leaves_the_retention_alone(hf_model_dir):
    s = make_scheduler(hf_model_dir, 64, connector=True, admission=False)
    c = s.connector
    a1 = _prompt(1, 8)
    run(s, [make_request(a1, 4, {"session_id": "1", "expected_s": 30}, cache_salt="tenant-a")])
    assert sum(len(h) for h in c.holds.values()) == 8  # A's context, retained
    # Tenant B's session "1": a step and its last step, another context.
    b1 = _prompt(2, 6)
    run(s, [make_request(b1, 4, {"session_id": "1", "expected_s": 30}, cache_salt="tenant-b")])
    run(s, [make_request(b1 + [TOKEN] * 4, 4, {"session_id": "1", "last_step": True},
                         cache_salt="tenant-b")])
    assert sum(len(h) for h in c.holds.values()) == 8  # A's, still
    a2 = make_request(a1 + [TOKEN] * 4 + _prompt(3, 1), 4,
                      {"session_id": "1", "last_step": True}, cache_salt="tenant-a")
    assert run(s, [a2])[a2.request_id] == 8 * BLOCK_SIZE
    assert c.stats.resumed_hits == 2  # B's last step found B's context, A's next A's
    assert not c.holds and not c._sessions


def test_one_tenants_sessions_are_still_one_session(hf_model_dir):
    """The same salt (or none) keeps the id one session: its next step finds it retained."""
    s = make_scheduler(hf_model_dir, 64, connector=True, admission=False)
    a1 = _prompt(1, 8)
    run(s, [make_request(a1, 4, {"session_id": "1", "expected_s": 30}, cache_salt="t")])
    a2 = make_request(a1 + [TOKEN] * 4, 4, {"session_id": "1", "expected_s": 30},
                      cache_salt="t")
    run(s, [a2])
    assert s.connector.stats.resumed_hits == 1 and len(s.connector.holds) == 1
