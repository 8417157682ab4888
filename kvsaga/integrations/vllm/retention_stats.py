"""The vLLM connector's counters (`KVSagaConnector.stats`): what retention, the session gate
and the idle sweep did, logged as one JSON line that bench/agent_replay.py reads back."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from kvsaga.integrations.vllm.hints import STATS_PREFIX


@dataclass
class RetentionStats:
    """Counters, for tests and logs."""

    retained_steps: int = 0  # steps whose blocks were kept at their finish
    resumed_hits: int = 0  # later steps that found their session's blocks retained
    released_blocks: int = 0  # retained blocks given back, and so freed, under pressure
    pressure_releases: int = 0  # calls that had to release something
    by_reason: dict[str, int] = field(default_factory=dict)
    deferrals: int = 0  # admission probes the gate answered "not yet" (admission on)
    yielded: int = 0  # of them, to waiting sessions ranked ahead (gate admission_order)
    demotions: int = 0  # admitted sessions the gate demoted
    # of them, pauses past the workflow's observed quantile: unhinted ones, and those hinted
    # longer than it (`expire_long_hints`, on by default)
    expired: int = 0
    best_effort: int = 0  # deferred steps run unretained because their prefill was cheap
    ride_failed: int = 0  # steps told to ride along and probed again before vLLM allocated them
    abandoned: int = 0  # sessions ended after a pause longer than `session_idle_s`
    # Where the gate's waiting went: deferrals while vLLM had the step's blocks free (no
    # retained block needed), the seconds held-back sessions waited in all, and how they got
    # in at last (vLLM had room, the predicted working sets fit, idle batch, max wait).
    deferred_with_room: int = 0
    gate_wait_s: float = 0.0
    admitted_room: int = 0
    admitted_fit: int = 0
    admitted_idle: int = 0
    admitted_max_wait: int = 0
    admitted_waited: int = 0  # fit beside the contexts; the wait outgrew its recompute
    # `StepCost`'s fit of vLLM's steps when the line was written (0: not fitted yet):
    # microseconds per step and per scheduled token, i.e. whether prefill dominates here.
    step_fixed_us: int = 0
    step_token_us: int = 0

    def line(self) -> str:
        """One log line (`STATS_PREFIX` + JSON), which bench/agent_replay.py reads back."""
        return STATS_PREFIX + json.dumps(asdict(self), sort_keys=True)
