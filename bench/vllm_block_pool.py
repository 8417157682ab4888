"""vLLM's own BlockPool, timed the way bench/allocator.py times kvsaga's core.

Runs inside a virtual environment with vLLM installed (bench/allocator.py creates one and
starts this script there); it imports nothing from kvsaga. Prints one JSON object:
{"vllm": version, "results": {op: seconds per block}}.

    python bench/vllm_block_pool.py --blocks N --repeat R
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from ascii_args import int_arg

BS = 16
# CPU time of this process: the machine is shared, and wall time would count the others' work.
clock = time.process_time


def best_of(repeat: int, fn) -> float:
    return min(fn() for _ in range(repeat))


def _pool(n: int):
    from vllm.v1.core.block_pool import BlockPool

    # One extra block: vLLM reserves block 0 as its null block.
    return BlockPool(n + 1, enable_caching=True, hash_block_size=BS)


def _hashes(n: int) -> list[bytes]:
    from vllm.utils.hashing import sha256
    from vllm.v1.core import kv_cache_utils as ku

    ku.init_none_hash(sha256)
    out, parent = [], None
    for i in range(n):
        parent = ku.hash_block_tokens(sha256, parent, range(i * BS, (i + 1) * BS))
        out.append(parent)
    return out


def _cached_pool(n: int):
    """A pool whose every block holds a cached full block, freed (evictable)."""
    pool = _pool(n)
    blocks = pool.get_new_blocks(n)
    pool.cache_full_blocks(SimpleNamespace(block_hashes=_hashes(n)), blocks, 0, n, BS, 0)
    pool.free_blocks(blocks)
    return pool


def bench_allocate(n: int) -> float:
    pool = _pool(n)
    t = clock()
    for _ in range(n // 64):
        pool.get_new_blocks(64)
    return (clock() - t) / (n // 64 * 64)


def bench_allocate_evict(n: int) -> float:
    pool = _cached_pool(n)
    t = clock()
    pool.get_new_blocks(n)  # every block is evicted from the prefix cache first
    return (clock() - t) / n


def bench_cache_block(n: int) -> float:
    pool = _pool(n)
    blocks = pool.get_new_blocks(n)
    req = SimpleNamespace(block_hashes=_hashes(n))
    t = clock()
    pool.cache_full_blocks(req, blocks, 0, n, BS, 0)
    return (clock() - t) / n


def bench_hash(n: int) -> float:
    t = clock()
    _hashes(n)
    return (clock() - t) / n


def bench_lookup_hit(n: int) -> float:
    """What vLLM's prefix lookup does per block: find each hash, then touch (reclaim)."""
    pool = _cached_pool(n)
    hashes = _hashes(n)
    t = clock()
    hit = []
    for h in hashes:
        blocks = pool.get_cached_block(h, [0])
        if blocks is None:
            break
        hit.append(blocks[0])
    pool.touch(hit)
    el = clock() - t
    assert len(hit) == n
    return el / n


def bench_free(n: int) -> float:
    pool = _pool(n)
    blocks = pool.get_new_blocks(n)
    t = clock()
    pool.free_blocks(blocks)
    return (clock() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--blocks", type=int_arg, default=16384, help="blocks in each pool measured")
    ap.add_argument("--repeat", type=int_arg, default=5,
                    help="runs of each measurement; the best is reported")
    args = ap.parse_args()
    # Python puts this script's folder first on the path, and bench/kernels.py there would
    # shadow the PyPI package `kernels` that transformers (imported by vLLM) probes for.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import vllm

    n, r = args.blocks, args.repeat
    results = {
        "allocate": best_of(r, lambda: bench_allocate(n)),
        "allocate+evict": best_of(r, lambda: bench_allocate_evict(n)),
        "cache block": best_of(r, lambda: bench_cache_block(n)),
        "hash block": best_of(r, lambda: bench_hash(n)),
        "lookup hit": best_of(r, lambda: bench_lookup_hit(n)),
        "free": best_of(r, lambda: bench_free(n)),
    }
    print(json.dumps({"vllm": vllm.__version__, "results": results}))


if __name__ == "__main__":
    main()
