"""`SessionRanker`: the priority `KVSagaScheduler` (kvsaga/integrations/vllm/scheduler.py,
whose module docstring says how it ranks) gives a session's request, and the reading of
its `scheduler_args`. Plain Python, apart from that module, which imports vLLM: the
connector's configuration check (`connector_config`) builds a throwaway ranker, so a bad
`scheduler_args` value is refused by `kv_transfer_config()` and the connector's start, not
first by vLLM's Scheduler after the model and KV cache have loaded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvsaga._validate import check_one_of
from kvsaga.integrations.vllm.gate_order import check_finite
from kvsaga.policy.bounded import TRACKED_WORKFLOWS, touch
from kvsaga.scheduler.admission_order import SessionLengths, order_key, predicted_cost

WORK_KINDS = ("tokens", "steps")
# KVSagaScheduler's own flags in `scheduler_args` (the rest are SessionRanker's arguments).
SCHEDULER_FLAGS = ("admitted_first", "gate_arrivals")


def scheduler_settings(args: Mapping[str, Any]) -> tuple[dict[str, bool], SessionRanker]:
    """`scheduler_args` (its keys checked) read: KVSagaScheduler's `SCHEDULER_FLAGS` (each
    true unless given) and its ranker; ValueError naming the setting when a flag is not
    true or false or a ranker argument is out of its range."""
    rest = dict(args)
    flags = {name: rest.pop(name, True) for name in SCHEDULER_FLAGS}
    for name, v in flags.items():
        if not isinstance(v, bool):
            raise ValueError(f"scheduler_args {name} must be true or false, got {v!r}")
    return flags, SessionRanker(**rest)


@dataclass(frozen=True, slots=True)
class Recorded:
    """What `SessionRanker.record` learned from one step of session `sid`, for `withdraw`:
    the session's live entry before and after (None: none; after, its last step), the
    prompt growth observed (None: none) and the session length observed (None: none)."""

    sid: str
    workflow: str
    before: tuple[int, int] | None
    after: tuple[int, int] | None
    growth: float | None
    length: int | None


class SessionRanker:
    """Each session's steps begun and context growth, the lengths of the sessions that said
    they ended, and the priority of a session's next request (scheduler.py's module
    docstring). Plain Python: KVSagaScheduler feeds it."""

    TRACKED = 8192  # live sessions remembered (one that never says it ended is dropped)

    def __init__(self, aging_s: float = 60.0, prior_steps: float = 16.0,
                 prior_growth_tokens: float = 64.0, work: str = "steps") -> None:
        # check_finite: an int past the largest float is refused naming its setting; a range
        # check alone passed it, and float() then raised an OverflowError naming none
        # (review s49, gatediff finding 6)
        aging_s = check_finite("scheduler_args aging_s", aging_s, 0.0, low_open=True)
        prior_steps = check_finite("scheduler_args prior_steps", prior_steps, 1.0)
        prior_growth_tokens = check_finite("scheduler_args prior_growth_tokens",
                                           prior_growth_tokens, 0.0)
        check_one_of("scheduler_args work", work, WORK_KINDS)
        self.aging_s = aging_s
        self.prior_steps = prior_steps
        self.work = work
        self.lengths = SessionLengths()
        self.growth: dict[str, float] = {}  # workflow -> mean prompt growth a step
        self.seen: dict[str, int] = {}  # workflow -> growths observed
        self.prior_growth = prior_growth_tokens
        self.live: dict[str, tuple[int, int]] = {}  # session -> (steps begun, last prompt)

    def priority(self, sid: str, workflow: str, prompt_tokens: int, last_step: bool,
                 now: float) -> int:
        """The priority of session `sid`'s step arriving `now` with `prompt_tokens` (no state
        changes: `record` the step once vLLM accepted it)."""
        done, last_prompt = self.live.get(sid, (0, 0))
        growth = self._growth(workflow, done, prompt_tokens, last_prompt)
        left = 1.0 if last_step else self.lengths.remaining(workflow, done, self.prior_steps)
        work = (left if self.work == "steps"
                else predicted_cost(left, prompt_tokens, growth))
        return self.rank(work, now)

    def _growth(self, workflow: str, done: int, prompt_tokens: int, last_prompt: int) -> float:
        """The workflow's mean prompt growth a step, with this step's counted when it follows
        one of the session's (the context grew by the reply and this message since)."""
        growth = self.growth.get(workflow, self.prior_growth)
        if not done:
            return growth
        n = self.seen.get(workflow, 0) + 1
        return growth + (max(prompt_tokens - last_prompt, 0) - growth) / n

    def rank(self, work: float, now: float) -> int:
        """The priority of `work` (predicted steps or token-steps) arriving `now`."""
        return round(1000 * self.aging_s * order_key(work, now, self.aging_s))

    def record(self, sid: str, workflow: str, prompt_tokens: int, last_step: bool) -> Recorded:
        """Session `sid`'s step was accepted: count it and its context's growth (its
        session's length is learned when `last_step`). Returns what was learned, for
        `withdraw`."""
        before = self.live.pop(sid, None)
        done, last_prompt = before or (0, 0)
        observed = None
        if done:
            growth = self._growth(workflow, done, prompt_tokens, last_prompt)
            observed = float(max(prompt_tokens - last_prompt, 0))
            n = self.seen.get(workflow, 0) + 1
            # Bounded: the TRACKED_WORKFLOWS most recently updated workflows keep their
            # growth (kvsaga/policy/bounded.py); a forgotten one starts again from the
            # prior, as a new one does.
            touch(self.growth, workflow, lambda: growth, TRACKED_WORKFLOWS,
                  lambda wf, _: self.seen.pop(wf, None))
            self.growth[workflow], self.seen[workflow] = growth, n
        after = None
        if last_step:
            self.lengths.observe(workflow, done + 1)
        else:
            after = self.live[sid] = (done + 1, prompt_tokens)
            if len(self.live) > self.TRACKED:
                del self.live[next(iter(self.live))]
        return Recorded(sid, workflow, before, after, observed,
                        done + 1 if last_step else None)

    def withdraw(self, rec: Recorded) -> None:
        """The step `rec` was recorded for ran none of it (every request of it aborted
        before it ran, `KVSagaScheduler.finish_requests`): take back what it taught. Its
        count, unless the session's entry changed since (dropped past TRACKED, or a later
        step recorded); its growth observation, out of the workflow's mean (a workflow
        forgotten past TRACKED_WORKFLOWS and seen again since loses a newer one instead:
        rare, and the mean is an estimate); the session length it observed. Why: the client's
        resend of the step was counted again, so the session looked a step further on
        (ranked by fewer steps left) and its length was learned a step longer per abort."""
        if self.live.get(rec.sid) == rec.after:
            self.live.pop(rec.sid, None)
            if rec.before is not None:
                self.live[rec.sid] = rec.before  # (re-inserted newest: it is live)
                if len(self.live) > self.TRACKED:
                    del self.live[next(iter(self.live))]
        if rec.growth is not None and (n := self.seen.get(rec.workflow, 0)):
            if n == 1:  # its only observation: the workflow is ranked from the prior again
                del self.seen[rec.workflow], self.growth[rec.workflow]
            else:  # the mean of the n - 1 others
                g = self.growth[rec.workflow]
                self.growth[rec.workflow] = (n * g - rec.growth) / (n - 1)
                self.seen[rec.workflow] = n - 1
        counts = self.lengths.counts.get(rec.workflow)
        if rec.length is not None and counts and counts.get(rec.length):
            counts[rec.length] -= 1
            if not counts[rec.length]:
                del counts[rec.length]
            if not counts:
                del self.lengths.counts[rec.workflow]
