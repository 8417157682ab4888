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
    rows = {"vllm": {0: {"task_time_mean_s": 3 * tool, "prefill_tokens": 4500, "end_s": 20.0,
                         "rebuilt_tokens": 1200, "rebuild_share": 0.25, "busy_s": 8.0}},
            "vllm@2000": {0: {"task_time_mean_s": tool, "prefill_tokens": 3000, "end_s": 9.0}}}
    (line,) = mod.bound_lines(args, rows)
    assert line.startswith("- seed 0: ceiling 3.00x")
    assert "pressure 1.50x" in line and "ends at 20.0 s" in line
    assert "rebuild share 25.0% (plain vLLM computed 1,200 tokens again: 2.0 s of its 8.0 s" in line
    bound = mod.tct_bound(args, 0)["bound_s"]
    assert f"no connector gains more than {3 * tool / bound:.2f}x" in line
    args.unbounded_blocks = 0  # no unbounded arm: no pressure figure
    del rows["vllm@2000"]
    (line,) = mod.bound_lines(args, rows)
    assert "pressure" not in line and "ceiling 3.00x" in line


def test_rebuild_share_is_the_rebuilt_tokens_time_over_the_steps_time() -> None:
    mod = _load()
    res = mod.ArmResult(prompt_tokens=100, cached_tokens=40, scheduled_tokens=300,
                        decode_tokens=20, rebuilt_tokens=80, rebuild_s=80 * 0.002, busy_s=0.8,
                        task_s=[1.0, 2.0], wait_s=[0.1])
    f = res.figures()
    assert f["rebuilt_tokens"] == 80 and abs(f["rebuild_share"] - 0.2) < 1e-12
    assert mod.ArmResult(task_s=[1.0], wait_s=[0.0], prompt_tokens=1).figures()[
        "rebuild_share"] == 0.0  # no steps: no share (not a division by zero)


def test_hint_session_is_a_choice_and_a_label_names_the_section() -> None:
    mod = _load()
    args = mod.build_parser().parse_args(["--hint", "session", "--label", "calibrated"])
    assert args.hint == "session" and args.label == "calibrated"
