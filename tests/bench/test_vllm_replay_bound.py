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
