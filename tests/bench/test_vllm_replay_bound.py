"""bench/vllm_replay_bound.py: the lower bound on any schedule's mean task time behind the
"bound" figure of bench/vllm_scheduler_replay.py, on a case worked by hand (the bound's
validity against vLLM's real scheduler: tests/integrations/vllm/test_replay_bounds.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.bench_scripts import load_bench


def _needs(mod, arrival_s: float):
    """System prompt 64 tokens (2 blocks of 32); step 0: 40 tokens in, 3 out, a 5 s tool;
    step 1: 10 in, 2 out. Step 0 computes its 40 new tokens (the system prompt's blocks
    may be cached) and 2 decode tokens in 3 steps, holding 4 - 2 blocks in each; step 1's
    prompt is 117 tokens, of which the 96 in full blocks step 0 computed hit: 21 + 1 tokens
    in 2 steps, 2 blocks each."""
    steps = [SimpleNamespace(input_tokens=40, output_tokens=3, tool_s=5.0),
             SimpleNamespace(input_tokens=10, output_tokens=2, tool_s=7.0)]
    return mod.task_needs(steps, 64, arrival_s, step_s=1.0, token_s=0.01, block_size=32,
                          chunk_tokens=4096, template_tokens=0, template_end_tokens=0,
                          reply=lambda st: st.output_tokens)


def test_a_tasks_needs_are_its_minimal_tokens_steps_and_block_steps() -> None:
    mod = load_bench("vllm_replay_bound")
    need = _needs(mod, 0.0)
    assert (need.tokens, need.request_steps, need.block_steps) == (42 + 22, 3 + 2, 6 + 4)
    # 5 steps, 64 tokens, the first pause (the last step's is no part of the task)
    assert need.solo_s == pytest.approx(5 * 1.0 + 64 * 0.01 + 5.0)


def test_the_bound_is_the_solo_time_until_the_blocks_bind() -> None:
    """Two such tasks 1 s apart. With 2 blocks a step beyond the system prompt's, the two
    tasks' 20 block-steps take 10 steps, less than either alone: the bound is their solo
    time. With 1 block, the second to end cannot end before 20 steps and 128 tokens."""
    mod = load_bench("vllm_replay_bound")
    needs = [_needs(mod, 0.0), _needs(mod, 1.0)]
    kw = {"step_s": 1.0, "token_s": 0.01, "system_blocks": 2, "max_num_seqs": 16}
    roomy = mod.mean_tct_lower_bound(needs, usable_blocks=4, **kw)
    assert roomy["bound_s"] == pytest.approx(10.64) and roomy["solo_s"] == pytest.approx(10.64)
    tight = mod.mean_tct_lower_bound(needs, usable_blocks=3, **kw)
    assert tight["solo_s"] == pytest.approx(10.64)
    assert tight["bound_s"] == pytest.approx((10.64 + (20 * 1.0 + 128 * 0.01) - 1.0) / 2)
    with pytest.raises(ValueError, match="no blocks beyond"):
        mod.mean_tct_lower_bound(needs, usable_blocks=2, **kw)


def test_memory_keeps_a_paused_context_or_computes_it_again() -> None:
    """One such task over 3 usable blocks (1 beyond the system prompt's). Its running steps
    hold 2 x (3 x 1 s + 42 x 0.01 s) + 2 x (2 x 1 s + 22 x 0.01 s) = 11.28 block-seconds
    beyond the system prompt; the one block step 1 can hit is kept through the 5 s pause
    (5 block-seconds) or computed again (32 tokens, 0.32 s). Work: 10 block-steps over one
    block a step + 64 tokens = 10.64 s, the solo time too. Memory-time up to T is at most
    3 T less the system prompt's 2 blocks over the busy time: keeping it, 11.28 + 5 + 2 x
    10.64 = 37.56 > 3 x 10.64; computing it again, 11.28 + 2 x (10.64 + 0.32) = 33.2, so T
    >= 33.2 / 3 (which leaves the 0.32 s the recompute needs)."""
    mod = load_bench("vllm_replay_bound")
    need = _needs(mod, 0.0)
    assert need.run_area == pytest.approx(11.28) and need.pauses == [(1, 5.0)]
    kw = {"step_s": 1.0, "token_s": 0.01, "system_blocks": 2, "max_num_seqs": 16}
    out = mod.memory_bound([need], block_size=32, usable_blocks=3, **kw)
    assert out["base_bound_s"] == pytest.approx(10.64)
    assert out["bound_s"] == pytest.approx(33.2 / 3, rel=1e-6)
    # with room to spare nothing changes
    roomy = mod.memory_bound([_needs(mod, 0.0), _needs(mod, 1.0)], block_size=32,
                             usable_blocks=40, **kw)
    assert roomy["bound_s"] == pytest.approx(roomy["base_bound_s"])


def test_memory_binds_when_paused_contexts_cannot_co_reside() -> None:
    """Two tasks arrive together (solo 0.01 + 40 + 100 + 0.01 + 19 = 159.02 s each), each
    with 1 block beyond the system prompt to keep through a 100 s pause, over 3 usable
    blocks; a recompute costs 32 tokens x 1 s. Running, each holds 2 x 40.01 + 2 x 19.01 =
    118.04 block-seconds; their work is 118 tokens + 8 block-steps x 0.01 s = 118.08 s.
    Both kept: 236.08 + 200 + 2 x 118.08 > 3 x 200; both computed again: 236.08 + 2 x
    (118.08 + 64) = 600.24 = 3 T at T = 200.08 (keeping a block costs 100 block-seconds,
    computing it 2 x 32), which leaves each its 32 s. So the second end is 200.08, not
    159.02: the base bound does not see it. Every set of tasks is tried, so more than
    MAX_EXACT_TASKS tasks are refused."""
    mod = load_bench("vllm_replay_bound")
    steps = [SimpleNamespace(input_tokens=40, output_tokens=1, tool_s=100.0),
             SimpleNamespace(input_tokens=10, output_tokens=1, tool_s=0.0)]
    kw = {"step_s": 0.01, "token_s": 1.0, "system_blocks": 2, "max_num_seqs": 16}
    needs = [mod.task_needs(steps, 64, 0.0, block_size=32, chunk_tokens=4096,
                            template_tokens=0, template_end_tokens=0,
                            reply=lambda st: st.output_tokens, step_s=0.01, token_s=1.0)
             for _ in range(2)]
    out = mod.memory_bound(needs, block_size=32, usable_blocks=3, **kw)
    assert out["base_bound_s"] == pytest.approx(159.02)
    assert out["bound_s"] == pytest.approx((159.02 + 200.08) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="more than"):
        mod.memory_bound(needs * 8, block_size=32, usable_blocks=3, **kw)
