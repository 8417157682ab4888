"""`BlockLedger.num_cached` is kept as blocks are tracked and untracked: it summed a byte per
block, and `KVSagaCachePolicy._usage` reads it at every `choose_victims` of an eviction, so
each eviction from the CPU offload tier walked the whole tier (no vLLM needed)."""

from __future__ import annotations

import pytest

# The vLLM environment (tests/integrations/vllm/run.sh) collects tests/integrations too and
# has no hypothesis; these need no vLLM and run in the main suite.
pytest.importorskip("hypothesis", reason="run by the main suite; the vLLM env lacks hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kvsaga.integrations.vllm.ledger import BlockLedger
from kvsaga.policy import make_policy

NUM_BLOCKS = 12


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(("cache", "uncache", "refile")),
                          st.integers(0, NUM_BLOCKS - 1), st.sampled_from(("a", "b", None)),
                          st.integers(0, 7)), max_size=60))
def test_num_cached_kept_equals_the_count_of_tracked_blocks(ops):
    ledger = BlockLedger(make_policy("ttl"), NUM_BLOCKS, 16)
    for kind, b, owner, pos in ops:
        tracked = ledger.is_cached(b)
        if kind == "cache" and not tracked:
            ledger.cache(b, owner, pos)
        elif kind == "uncache" and tracked:
            ledger.uncache(b)
        elif kind == "refile" and tracked:
            ledger.refile(b, owner, pos)
        assert ledger.num_cached == sum(map(ledger.is_cached, range(NUM_BLOCKS)))


class _CountingBytes(bytearray):
    """The ledger's tracked flags, counting the walks over them."""

    walks = 0

    def __iter__(self):
        self.walks += 1
        return super().__iter__()


def test_num_cached_walks_no_block():
    ledger = BlockLedger(make_policy("ttl"), NUM_BLOCKS, 16)
    for b in range(5):
        ledger.cache(b, "a", b)
    flags = ledger._cached = _CountingBytes(ledger._cached)
    assert ledger.num_cached == 5 and flags.walks == 0
