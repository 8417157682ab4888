"""Integer arguments past 2^63 on both cores (review s52 csrc, findings 1-3).

The C++ core read them through fixed-width conversions: a `max_model_len` the manager accepts
(any positive int) raised OverflowError at every append_tokens / decode_step, a limit past
2^63 to PrefixIndex.longest_prefix, BlockHasher.extend or ManagerCore's hit walks raised
"RuntimeError: std::bad_cast", and BlockPool.allocate refused such a count with a binding
TypeError. The Python twins answer all of them; now both cores answer alike.
"""

from __future__ import annotations

import hashlib

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.errors import OutOfBlocks
from kvsaga.prefix import root_hash

SPEC = KVSpec(num_layers=2, num_kv_heads=1, head_dim=8)
HUGE = (2**63, 2**64, 2**70)
LIMITS = (*HUGE, -(2**64), -(2**63) - 1, True, False, -1, 0, 2)


def _outcome(fn):
    try:
        return ("ok", fn())
    except Exception as e:  # noqa: BLE001 - the outcome compared across cores
        return (type(e).__name__, str(e))


@pytest.mark.parametrize("max_model_len", HUGE)
def test_a_max_model_len_past_2_63_limits_nothing(core, max_model_len):
    mgr = KVCacheManager(SPEC, num_gpu_blocks=16, core=core.name, max_model_len=max_model_len)
    mgr.begin_step("a", [1, 2, 3])
    mgr.allocate_slots("a", 3)
    mgr.append_tokens("a", [4])
    assert mgr.allocate_slots("a", 1) == [3]
    assert mgr.decode_step(["a"], [5]) == [4]
    assert mgr.sessions["a"].token_ids == [1, 2, 3, 4, 5]
    mgr.check_integrity()


def _digests(n):
    return [hashlib.sha256(bytes([i])).digest() for i in range(n)]


def test_longest_prefix_takes_any_int_limit_as_the_python_index(core):
    from kvsaga._core import PYTHON

    hashes = _digests(4)
    indexes = [c.PrefixIndex() for c in (PYTHON, core)]
    for index in indexes:
        for b, h in enumerate(hashes):
            index.insert(h, b)
    for limit in (*LIMITS, 1.5, "2"):
        want, got = (_outcome(lambda i=i, lim=limit: i.longest_prefix(hashes, lim))
                     for i in indexes)
        assert got[0] == want[0], (limit, got, want)
        if want[0] == "ok":
            assert got == want, limit


def test_extend_takes_any_int_num_blocks_as_the_python_hasher(core):
    from kvsaga._core import PYTHON

    tokens = list(range(10))
    for num_blocks in LIMITS:
        chains = []
        for c in (PYTHON, core):
            out: list[bytes] = []
            c.BlockHasher(2).extend(out, root_hash(None), tokens, num_blocks)
            chains.append(out)
        assert chains[0] == chains[1], num_blocks
        assert len(chains[1]) == max(0, min(5, int(num_blocks))), num_blocks


def test_the_managers_hit_walks_take_any_int_limit(core):
    if core.ManagerCore is None:
        pytest.skip("the Python manager runs its own loops")
    mgr = KVCacheManager(SPEC, num_gpu_blocks=16, core=core.name)
    prompt = list(range(3 * mgr.block_size))
    mgr.begin_step("a", prompt)
    mgr.allocate_slots("a", len(prompt))
    s = mgr.sessions["a"]
    hot = mgr._hot
    for limit in HUGE:
        assert hot.session_hits(s.block_ids, s.block_hashes, limit) == s.block_ids
        assert tuple(hot.prefix_hits(s.block_hashes, limit, None)) == (3, 0)
    assert hot.session_hits(s.block_ids, s.block_hashes, -(2**64)) == []
    with pytest.raises(TypeError, match="'float' object cannot be interpreted as an integer"):
        hot.prefix_hits(s.block_hashes, 1.5, None)


@pytest.mark.parametrize("count", [*HUGE, -(2**64), 1.0, True])
def test_allocate_takes_any_int_as_the_python_pool(core, count):
    from kvsaga._core import PYTHON

    outcomes = []
    for c in (PYTHON, core):
        pool = c.BlockPool(4)
        pool.allocate(1)
        outcomes.append((_outcome(lambda p=pool: p.allocate(count)), pool.free_ids(),
                         list(pool.refcount), list(pool.state)))
    (want, *want_state), (got, *got_state) = outcomes
    assert got[0] == want[0], (got, want)
    assert got_state == want_state
    if want[0] in ("ok", "OutOfBlocks", "ValueError"):
        assert got == want
    if count in HUGE:
        with pytest.raises(OutOfBlocks) as e:
            core.BlockPool(4).allocate(count)
        assert (e.value.needed, e.value.available) == (count, 4)
