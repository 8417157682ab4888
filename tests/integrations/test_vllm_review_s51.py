"""Review s51 (lane vconn) of the vLLM connector's plain-Python parts (no vLLM needed):
settings refused before vLLM starts, a request's hint strings bounded, and the kept demoted
sessions' release counted in blocks freed."""

from __future__ import annotations

import json

import pytest

from kvsaga.errors import InvalidRequest
from kvsaga.integrations.vllm import kv_transfer_config, offload_transfer_config
from kvsaga.integrations.vllm.connector_config import check_connector_extra
from kvsaga.integrations.vllm.demoted import KeptDemoted
from kvsaga.integrations.vllm.hints import MAX_NAME_CHARS, step_info

# -- MED-2: what the connector refused only inside vLLM's start ---------------------------------


@pytest.mark.parametrize(("extra", "message"), [
    ({"policy": "nonexistent"}, r"policy must be one of \[.*'ttl'.*\], got 'nonexistent'"),
    ({"policy": 5}, r"policy must be one of .*, got 5"),
    ({"admission": "false"}, r"admission must be true or false, got 'false'"),
    ({"admission": 0}, r"admission must be true or false, got 0"),
    ({"keep_demoted": "yes"}, r"keep_demoted must be true or false, got 'yes'"),
    ({"best_effort_steps": "3"}, r"best_effort_steps must be a number >= 0, got '3'"),
    ({"best_effort_steps": -1}, r"best_effort_steps must be a number >= 0, got -1"),
    ({"best_effort_steps": float("nan")}, r"best_effort_steps must be a number >= 0"),
    ({"session_idle_s": -5}, r"session_idle_s must be a number > 0 or None"),
    ({"session_idle_s": "x"}, r"session_idle_s must be a number > 0 or None"),
    ({"policy": "ttl", "policy_args": {"base_ttl_s": -1}},
     r"policy_args of policy 'ttl': base_ttl_s must be a finite number > 0"),
    ({"policy": "ttl", "policy_args": {"max_usage": 7}},
     r"policy_args of policy 'ttl': max_usage must be"),
])
def test_kv_transfer_config_refuses_what_the_connector_would_refuse_at_vllm_start(extra,
                                                                                 message):
    with pytest.raises(ValueError, match=message):
        check_connector_extra(extra)
    policy = extra.get("policy", "ttl")
    rest = {k: v for k, v in extra.items() if k != "policy"}
    with pytest.raises(ValueError, match=message):
        kv_transfer_config(policy, **rest)


@pytest.mark.parametrize("extra", [
    {"admission": False}, {"admission": True, "keep_demoted": True},
    {"best_effort_steps": 0}, {"best_effort_steps": 2.5},
    {"session_idle_s": None}, {"session_idle_s": float("inf")}, {"session_idle_s": 30},
    {"policy": "graph", "policy_args": {"alpha": 0.3}},
])
def test_valid_settings_still_pass(extra):
    assert check_connector_extra(extra) == extra
    assert json.loads(kv_transfer_config(**{"policy": "ttl", **extra}))


def test_offload_cpu_bytes_true_is_no_byte_count():
    with pytest.raises(ValueError, match="cpu_bytes True: must be a positive int"):
        offload_transfer_config(True)
    assert json.loads(offload_transfer_config(1 << 30))


# -- MED-3: a request's strings are a client's ---------------------------------------------------


@pytest.mark.parametrize("field", ["session_id", "tool", "workflow"])
def test_a_name_over_the_limit_is_refused_naming_the_field(field):
    hint = {"session_id": "s", field: "x" * MAX_NAME_CHARS}
    assert step_info({"kvsaga": hint}) is not None  # at the limit: taken
    hint[field] = "x" * (MAX_NAME_CHARS + 1)
    with pytest.raises(InvalidRequest, match=rf"{field} must be at most {MAX_NAME_CHARS} "
                                             rf"characters, got {MAX_NAME_CHARS + 1}"):
        step_info({"kvsaga": hint})


def test_vllms_own_session_id_field_is_bounded_too():
    assert step_info(None, "s" * MAX_NAME_CHARS).session_id == "s" * MAX_NAME_CHARS
    with pytest.raises(InvalidRequest, match="session_id must be at most"):
        step_info(None, "s" * (MAX_NAME_CHARS + 1))


@pytest.mark.parametrize("hint", [
    {"session_id": ["x" * 100_000]},
    {"session_id": "s", "workflow": ["x" * 100_000]},
    {"session_id": "s", "last_step": "x" * 100_000},
    {"session_id": "s", "tool": ["x" * 100_000]},
    {"session_id": "s", "tool": "x" * 100_000},
    {"session_id": "s", **{f"k{i}" * 1000: 1 for i in range(1000)}},
])
def test_a_refusal_does_not_print_the_whole_value(hint):
    """The connector logs the message once per request: a value of megabytes was logged
    whole."""
    with pytest.raises(InvalidRequest) as e:
        step_info({"kvsaga": hint})
    assert len(str(e.value)) < 1000


def test_a_tool_of_another_type_is_refused_naming_it():
    with pytest.raises(InvalidRequest, match="tool must be a string or null, got 5"):
        step_info({"kvsaga": {"session_id": "s", "tool": 5}})
    assert step_info({"kvsaga": {"session_id": "s", "tool": None}}).hint.tool is None


# -- LOW-4: the kept demoted sessions' release counts blocks freed --------------------------------


class _Block:
    def __init__(self, ref_cnt: int) -> None:
        self.ref_cnt = ref_cnt


def test_a_block_two_kept_sessions_share_counts_once():
    """Block 1 is A's and B's (ref 2), block 2 A's alone, block 3 B's alone: dropping every
    reference frees 3 blocks, and the release says 3 (it said 4: references dropped)."""
    blocks = {1: _Block(2), 2: _Block(1), 3: _Block(1)}
    holders = {1: ["A", "B"], 2: ["A"], 3: ["B"]}
    holds = {"A": [1, 2], "B": [1, 3]}
    kept = KeptDemoted()
    kept.keep("A")
    kept.keep("B")
    freed = []

    def drop(b: int, sid: str) -> None:
        holders[b].remove(sid)
        blocks[b].ref_cnt -= 1
        if not holders[b]:
            del holders[b]
        if blocks[b].ref_cnt == 0:
            freed.append(b)

    def release_session(sid: str) -> None:
        kept.discard(sid)
        holds.pop(sid, None)

    n = kept.release(blocks, holders, lambda: len(freed), 10, holds, drop, release_session)
    assert sorted(freed) == [1, 2, 3]
    assert n == len(freed)
    assert not holds and not holders and not len(kept)


# -- MED-6: a session id is its tenant's (vLLM's cache_salt) --------------------------------------


def test_a_salt_namespaces_the_session_id():
    hint = {"kvsaga": {"session_id": "1"}}
    a, b = step_info(hint, cache_salt="tenant-a"), step_info(hint, cache_salt="tenant-b")
    assert a.session_id != b.session_id
    assert a.session_id == step_info(hint, cache_salt="tenant-a").session_id
    assert "tenant-a" not in a.session_id  # the salt is not written out
    assert step_info(hint).session_id == "1" == step_info(hint, cache_salt="").session_id
    # vLLM's own session_id field is namespaced the same way
    assert step_info(None, "1", "tenant-a").session_id == a.session_id
