"""Regression (session 35, fuzz lane): an import refused for hashes that do not match its
tokens changes nothing on the receiver.

Failing sequence: export paused session "x" (13 tokens, 3 full blocks); on a manager with
paused "y", import the export with its first block hash replaced: InvalidRequest, but the
import had begun (and ended) the session first, so the receiver's counters had moved
(queried_tokens +12, the policy told of a step and an end).
"""

from __future__ import annotations

import dataclasses

import pytest

from kvsaga import InvalidRequest, KVCacheManager, KVSpec
from kvsaga.policy import POLICIES
from tests.policy.helpers import build
from tests.test_core_parity import snapshot


def _export():
    src = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 12, clock=lambda: 0.0)
    src.begin_step("x", list(range(13)), now=0.0)
    src.allocate_slots("x", 13, now=0.0)
    src.finish_step("x", now=0.0)
    return src.export_session("x").export


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_bad_hashes_change_nothing(policy):
    ex = _export()
    bad = dataclasses.replace(ex, block_hashes=[b"0" * 32, *ex.block_hashes[1:]])
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 12, clock=lambda: 0.0,
                       policy=build(policy), num_host_blocks=4)
    m.begin_step("y", list(range(100, 109)), now=0.0)
    m.allocate_slots("y", 9, now=0.0)
    m.finish_step("y", now=0.0)
    before = snapshot(m)
    with pytest.raises(InvalidRequest, match=r"exported block hashes do not match its tokens"):
        m.import_session(bad, now=1.0)
    assert snapshot(m) == before
    m.check_integrity()
    first, blocks = m.import_session(ex, now=1.0)  # the good one still imports
    assert first == 0 and len(blocks) == 3


@pytest.mark.parametrize("field,value,match", [
    ("token_ids", [-1, *range(1, 12)], r"token"),
    ("session_id", None, r"session_id must be a non-empty str"),
])
def test_bad_fields_refused_before_anything_changes(field, value, match):
    bad = dataclasses.replace(_export(), **{field: value})
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 12, clock=lambda: 0.0)
    before = snapshot(m)
    with pytest.raises(InvalidRequest, match=match):
        m.import_session(bad, now=1.0)
    assert snapshot(m) == before
