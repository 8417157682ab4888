"""The allocator's microbenchmarks as pytest-benchmark groups, python vs cpp side by side:

    pytest bench --benchmark-only [--benchmark-json out.json]

One group per operation of bench/allocator.py (whose figures, with vLLM's beside them, go to
bench/RESULTS.md); each case times one call on fresh state, over N blocks (divide by N for
a per-block figure) or one decode step of 256 sessions. Not part of the test suite: the
project's testpaths is tests/.
"""

from __future__ import annotations

import allocator as A  # bench/ is on sys.path: pytest puts a test file's folder there
import pytest

from kvsaga._core import cpp_available, get_core
from kvsaga.prefix import root_hash

N = 4096
ROUNDS = 10


@pytest.fixture(params=["python", "cpp"])
def core(request) -> str:
    if request.param == "cpp" and not cpp_available():
        pytest.skip("the C++ core is not built")
    return request.param


def _run(benchmark, setup, call):
    """Time call(*setup()) with a fresh setup each round."""
    benchmark.pedantic(call, setup=lambda: (setup(), {}), rounds=ROUNDS, iterations=1)


@pytest.mark.benchmark(group="allocate")
def test_allocate(benchmark, core):
    _run(benchmark, lambda: (get_core(core).BlockPool(N),), lambda pool: pool.allocate(N))


@pytest.mark.benchmark(group="allocate+evict")
def test_allocate_evict(benchmark, core):
    def call(m, prompt):
        need = m.num_blocks_needed("new", len(prompt))
        m._evict(need - m.pool.num_free, 0.0)
        m.pool.allocate(need)

    _run(benchmark, lambda: A.full_manager(core, N), call)


@pytest.mark.benchmark(group="allocate_slots+evict")
def test_allocate_slots_evict(benchmark, core):
    _run(benchmark, lambda: A.full_manager(core, N),
         lambda m, prompt: m.allocate_slots("new", len(prompt)))


@pytest.mark.benchmark(group="cache block")
def test_cache_block(benchmark, core):
    _run(benchmark, lambda: A.unregistered(core, N), lambda m, register: register())


@pytest.mark.benchmark(group="hash block")
def test_hash_block(benchmark, core):
    h = get_core(core).BlockHasher(A.BS)
    toks = list(range(N * A.BS))
    _run(benchmark, lambda: ([],), lambda out: h.extend(out, root_hash(None), toks))


@pytest.mark.benchmark(group="lookup hit")
def test_lookup_hit(benchmark, core):
    def call(m, toks):
        m.pool.acquire_many(m.index.longest_prefix(m.sessions["s"].block_hashes))

    _run(benchmark, lambda: A.paused_manager(core, N), call)


@pytest.mark.benchmark(group="begin_step hit")
def test_begin_step_hit(benchmark, core):
    _run(benchmark, lambda: A.paused_manager(core, N), lambda m, toks: m.begin_step("s", toks))


@pytest.mark.benchmark(group="free")
def test_free(benchmark, core):
    def setup():
        pool = get_core(core).BlockPool(N)
        return pool, pool.allocate(N)

    _run(benchmark, setup, lambda pool, ids: pool.release_many(ids))


@pytest.mark.benchmark(group="decode step x256")
@pytest.mark.parametrize("batched", [False, True], ids=["per-call", "decode_step"])
def test_decode_step(benchmark, core, batched):
    m, ids = A.decode_manager(core, 256)
    step = iter(range(1 << 30))

    def per_call():
        t = next(step)
        for sid in ids:
            m.append_tokens(sid, (t,))
            m.allocate_slots(sid, 1)

    def batch():
        m.decode_step(ids, [next(step)] * len(ids))

    benchmark.pedantic(batch if batched else per_call, rounds=64, iterations=1)


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "pytest bench --benchmark-only"))
