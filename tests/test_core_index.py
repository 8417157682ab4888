"""The C++ core's prefix index (csrc/key_table.h) at sizes the small state machines of
test_core_parity.py never reach: a randomized model test of PrefixIndex against a dict
through many growths and erasures (backward-shift deletion moves entries within probe
runs), and eviction-heavy traffic on a pool of thousands of blocks with full snapshots
compared against the Python core."""

from __future__ import annotations

import random

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga._core import cpp_available, get_core
from tests.policy.helpers import build
from tests.test_core_parity import snapshot

pytestmark = pytest.mark.skipif(not cpp_available(), reason="the C++ core is not built")


def test_index_matches_a_dict_through_growth_and_erasure():
    rng = random.Random(7)
    idx, ref = get_core("cpp").PrefixIndex(), {}
    keys = [rng.randbytes(32) for _ in range(6000)]
    for step in range(40_000):
        k = rng.choice(keys)
        if rng.random() < 0.55:
            b = rng.randrange(1 << 20)
            assert idx.insert(k, b) == (k not in ref)
            ref.setdefault(k, b)
        elif k in ref:
            idx.remove(k)
            del ref[k]
        else:
            with pytest.raises(KeyError):
                idx.remove(k)
        if step % 997 == 0:
            assert sorted(idx.items()) == sorted(ref.items())
    assert len(idx) == len(ref)
    assert all(idx.get(k) == ref.get(k) for k in keys)
    present = [k for k in keys if k in ref]
    assert idx.longest_prefix(present) == [ref[k] for k in present]


@pytest.mark.parametrize("policy", ["lru", "saga"])
def test_eviction_at_scale_matches_the_python_core(policy):
    """Sessions of many blocks cycling through a 2,048-block pool: every allocation past
    the first rounds evicts hundreds of blocks (LRU straight from its queue's head in C++,
    saga through choose_victims), and both cores end every round in the same state."""
    bs, ms = 4, []
    for core in ("python", "cpp"):
        ms.append(KVCacheManager(KVSpec(1, 1, 4, block_size=bs), 2048, clock=lambda: 0.0,
                                 policy=build(policy), core=core))
    rng = random.Random(3)
    for rnd in range(24):
        sid = f"s{rnd % 9}"
        shared = [7] * (bs * rng.randrange(0, 40))  # a prefix some sessions share
        new = shared + [rng.randrange(1 << 31) for _ in range(bs * rng.randrange(200, 700))]
        extend = rng.random() < 0.5  # continue the session's own context
        for m in ms:
            s = m.sessions.get(sid)
            prompt = s.token_ids[: s.num_computed] + new[:bs * 50] if extend and s else new
            m.begin_step(sid, prompt, now=float(rnd))
            m.allocate_slots(sid, len(prompt) - m.sessions[sid].num_computed, now=float(rnd))
            m.finish_step(sid, now=float(rnd), tool="t")
        py, cpp = ms
        assert snapshot(py) == snapshot(cpp)
        cpp.check_integrity()
    assert cpp.stats().num_evicted_blocks > 2048
