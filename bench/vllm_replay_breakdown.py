"""Where each arm's task time goes on bench/vllm_scheduler_replay.py's simulated clock
(`--breakdown`): what a connector still loses, per seed.

A task's time is exactly its tool pauses, plus each step's queue wait (arrival to the
start of the engine step that first schedules it: vLLM's queue, the gate's deferrals), plus
each step's service (that start to the end of its last engine step: its prefill chunks and
decodes, in batches whose tokens set each step's length, and any preemption). The pauses are
the same in every arm, so an arm gains over plain vLLM only in waits and service. Service
grows with the tokens computed in the batches a step rides in (recompute of evicted or
preempted KV counts there, `rebuild_s`) and with the number of steps; waits grow when the
batch runs fewer sessions at once than memory would allow, or when admission defers.
"""

from __future__ import annotations

from typing import Any


def breakdown_line(seed: int, tool_s: float, by_arm: dict[str, dict[str, Any]]) -> str:
    """One seed: per arm, mean TCT = tool + wait + service per task (s), then its steps,
    busy seconds, seconds of rebuild and, for connector arms, the gate's waiting seconds."""
    parts = []
    for name, f in by_arm.items():
        rebuild = f["rebuild_share"] * f["busy_s"]
        text = (f"{name} {f['task_time_mean_s']:.1f} = {tool_s:.1f} + "
                f"{f['task_wait_mean_s']:.1f} + {f['task_service_mean_s']:.1f} s "
                f"({f['steps']:,} steps, {f['busy_s']:.1f} s busy, {rebuild:.1f} s rebuild")
        if "connector_gate_wait_s" in f:
            text += f", gate waits {f['connector_gate_wait_s']:.1f} s"
        parts.append(text + ")")
    return (f"- seed {seed}: mean TCT = tool pauses + queue waits + service, per task: "
            + "; ".join(parts))


def breakdown_lines(rows: dict[str, dict[int, dict[str, Any]]],
                    tool_s: dict[int, float]) -> list[str]:
    """Per seed, `breakdown_line` over every arm that ran it (`tool_s`: the seed's mean
    tool seconds per task)."""
    out = []
    for seed in rows["vllm"]:
        by_arm = {name: arm[seed] for name, arm in rows.items()
                  if seed in arm and "task_wait_mean_s" in arm[seed]}
        out.append(breakdown_line(seed, tool_s[seed], by_arm))
    return out


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/vllm_scheduler_replay.py"))
