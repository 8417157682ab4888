"""The connector's `_usage` (the share of vLLM's blocks that requests reference, which the ttl
policy prices its rent by at every `choose_victims`) is kept incrementally: it walked every
retained block, so releasing k blocks under pressure, one `choose_victims` per pass, cost
O(k * retained). Here: it equals that walk after any run of vLLM's own steps, preemptions,
aborts, pressure releases and resets, and a `choose_victims` reads no block of vLLM's."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

import random  # noqa: E402

from .harness import BLOCK_SIZE, make_request, make_scheduler, step  # noqa: E402

SYSTEM = list(range(1000, 1000 + 2 * BLOCK_SIZE))  # 2 blocks every session shares


def _recount(c) -> float:
    """`_usage` as it was computed: walking every retained block's reference count."""
    pool = c.pool
    total = pool.num_gpu_blocks - 1
    in_use = total - pool.get_num_free_blocks()
    retained_only = sum(1 for b, h in c._holders.items() if pool.blocks[b].ref_cnt == len(h))
    return max(in_use - retained_only, 0) / total


def _prompt(k: int, tokens: int) -> list[int]:
    """Session k's context: the shared system prompt, then its own tokens (a later step of
    k extends an earlier one's, so it hits the blocks k retained)."""
    return SYSTEM + [10_000 + 500 * k + i for i in range(tokens)]


def _random_op(rng: random.Random) -> tuple:
    """One of: a step of session k (k == 4: a request of no session), with its context's
    length, whether it is the session's last and its reply's length; engine steps; an abort;
    a pressure release; a prefix-cache reset."""
    kind = rng.choice(("add", "add", "step", "step", "abort", "release", "reset"))
    if kind == "add":
        return (kind, rng.randrange(5), rng.randint(1, 6 * BLOCK_SIZE), rng.random() < 0.2,
                rng.randint(1, 24))
    if kind == "reset":
        return (kind,)
    return (kind, rng.randint(0, 8))


@pytest.mark.parametrize("seed", range(40))
def test_usage_kept_incrementally_equals_the_walk_over_retained_blocks(hf_model_dir, seed):
    """(Seeded random runs: the vLLM venv has no hypothesis.) 24 blocks for up to 8 requests
    of up to 8 blocks each: vLLM preempts, the connector releases under pressure, sessions
    share the system prompt's blocks and hit their own retained ones."""
    from vllm.v1.request import RequestStatus

    rng = random.Random(seed)
    s = make_scheduler(hf_model_dir, 24, connector=True, admission=False)
    c, pool = s.connector, s.kv_cache_manager.block_pool
    for _ in range(60):
        op = _random_op(rng)
        if op[0] == "add":
            _, k, tokens, last, max_tokens = op
            hint = None if k == 4 else ({"session_id": f"S{k}", "last_step": True} if last
                                        else {"session_id": f"S{k}", "tool": "t",
                                              "expected_s": 5})
            s.add_request(make_request(_prompt(k, tokens), max_tokens, hint))
        elif op[0] == "step":
            for _ in range(op[1]):
                if s.has_unfinished_requests():
                    step(s)
        elif op[0] == "abort":
            live = sorted(s.requests)
            if live:
                s.finish_requests(live[op[1] % len(live)], RequestStatus.FINISHED_ABORTED)
        elif op[0] == "release":
            c._release_until(pool.get_num_free_blocks() + op[1], c.clock(), "admit")
        else:
            pool.reset_prefix_cache()
        assert c._usage() == _recount(c), op


class _CountingBlocks(list):
    """vLLM's `BlockPool.blocks`, counting the reads by block id."""

    reads = 0

    def __getitem__(self, i):
        self.reads += 1
        return super().__getitem__(i)


def test_choose_victims_reads_no_retained_block(hf_model_dir):
    """The ttl policy asks `usage()` at every `choose_victims`: no walk over the retained
    blocks (and their reference counts) any more."""
    from .harness import run

    s = make_scheduler(hf_model_dir, 200, connector=True, admission=False, policy="ttl")
    c, pool = s.connector, s.kv_cache_manager.block_pool
    for k in range(6):
        run(s, [make_request(_prompt(k, 3 * BLOCK_SIZE), 1,
                             {"session_id": f"S{k}", "tool": "t", "expected_s": 5})])
    assert len(c._holders) >= 20
    counting = pool.blocks = _CountingBlocks(pool.blocks)
    assert c.policy.choose_victims(4, c.clock())
    assert counting.reads == 0
