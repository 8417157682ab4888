"""bench/vllm_scheduler_replay.py's report lines that need no vLLM (the replay itself runs
against the real scheduler in tests/integrations/vllm's environment)."""

from __future__ import annotations

from tests.bench_scripts import load_bench


def _load():
    return load_bench("vllm_scheduler_replay")


def test_bound_lines_give_the_ceiling_pressure_and_end_per_seed() -> None:
    mod = _load()
    args = mod.build_parser().parse_args(
        ["--seeds", "0", "--unbounded-blocks", "2000", "--token-scale", "0.05",
         "--time-scale", "2"])
    tool = mod.tool_s_per_task(args, 0)
    assert tool > 0
    rows = {"vllm": {0: {"task_time_mean_s": 3 * tool, "prefill_tokens": 4500, "end_s": 20.0}},
            "vllm@2000": {0: {"task_time_mean_s": tool, "prefill_tokens": 3000, "end_s": 9.0}}}
    (line,) = mod.bound_lines(args, rows)
    assert line.startswith("- seed 0: ceiling 3.00x")
    assert "pressure 1.50x" in line and "ends at 20.0 s" in line
    args.unbounded_blocks = 0  # no unbounded arm: no pressure figure
    del rows["vllm@2000"]
    (line,) = mod.bound_lines(args, rows)
    assert "pressure" not in line and "ceiling 3.00x" in line
