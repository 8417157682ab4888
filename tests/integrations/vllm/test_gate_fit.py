"""bench/vllm_scheduler_replay.py --fit (bench/vllm_gate_fit.py) through vLLM's real
scheduler, on a tiny grid and workload: it replays what it says it replays."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("vllm")

from tests.bench_scripts import load_bench  # noqa: E402

TINY = ["--sessions", "3", "--steps", "4", "--token-scale", "0.05", "--time-scale", "2",
        "--kv-fraction", "0.3", "--step-s", "0.025", "--token-s", "0.00065"]


def test_fit_speed_ups_are_the_arms_own(hf_model_dir, tmp_path) -> None:
    """The fit's speed-up for "fifo" and for the connector's default equal the replay's own
    arms 'ttl+fifo' and 'ttl' on the same seed: the fit sets the gate it names."""
    mod = load_bench("vllm_scheduler_replay")
    fit_json, arms_json = tmp_path / "fit.json", tmp_path / "arms.json"
    common = ["--model-dir", str(hf_model_dir), "--seeds", "0", *TINY]
    assert mod.main([*common, "--fit", "--fit-grid", "fifo;20:16", "--json", str(fit_json)]) == 0
    fit = json.loads(fit_json.read_text())
    assert set(fit["speedups"]) == {"fifo", "predicted 20 / 16"}
    assert fit["chosen"] in fit["speedups"]
    assert mod.main([*common, "--policies", "ttl,ttl+fifo", "--json", str(arms_json),
                     "--fit-seeds"]) == 0  # (a report on fit seed 0: labelled a diagnosis)
    rows = json.loads(arms_json.read_text())["rows"]
    plain = rows["vllm"]["0"]["task_time_mean_s"]
    assert fit["plain_tct_s"]["0"] == plain
    for label, arm in (("fifo", "vllm+ttl+fifo"), ("predicted 20 / 16", "vllm+ttl")):
        assert fit["speedups"][label]["0"] == pytest.approx(
            plain / rows[arm]["0"]["task_time_mean_s"], rel=1e-12)


def test_fit_refuses_a_seed_it_may_not_tune_on(hf_model_dir) -> None:
    mod = load_bench("vllm_scheduler_replay")
    with pytest.raises(SystemExit, match="fit seeds"):
        mod.main(["--model-dir", str(hf_model_dir), "--seeds", "0,81", "--fit", *TINY])


def test_a_tasks_time_is_its_pauses_waits_and_service(hf_model_dir) -> None:
    """`--breakdown`'s identity, plain vLLM and the connector alike: mean TCT = tool pauses
    + queue waits + service per task."""
    mod = load_bench("vllm_scheduler_replay")
    args = mod.build_parser().parse_args(["--seeds", "0", *TINY])
    tool = mod.tool_s_per_task(args, 0)
    for policy in (None, "ttl"):
        f = mod.replay(args, str(hf_model_dir), 0, policy).figures()
        assert f["task_wait_mean_s"] >= 0 and f["task_service_mean_s"] > 0
        assert tool + f["task_wait_mean_s"] + f["task_service_mean_s"] == pytest.approx(
            f["task_time_mean_s"], rel=1e-9)
