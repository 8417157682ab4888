"""A toy executor of the core scheduler (no model, no cost model) for the scheduler tests:
each scheduled chunk is "computed" at once, a step samples a fixed token until its output
limit, then pauses on a tool or ends its session."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvsaga import KVCacheManager
from kvsaga.scheduler import Scheduler, SchedulerOutput


@dataclass(eq=False)
class ToyRequest:
    """One step: `prompt` (the session's whole context), then `max_new` sampled tokens."""

    session_id: str
    prompt: list[int]
    max_new: int = 2
    tenant: str | None = None
    salt: str | None = None
    workflow: str = "default"
    arrival: float = 0.0
    resumed: bool = False
    last: bool = True  # the session ends after this step
    out: list[int] = field(default_factory=list)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt + self.out

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.out)

    @property
    def max_num_tokens(self) -> int:
        return len(self.prompt) + self.max_new


class ToyExecutor:
    """Carries out a scheduler's decisions on the manager, as the engine would."""

    def __init__(self, manager: KVCacheManager) -> None:
        self.m = manager
        self.log: list[tuple[str, str]] = []  # ("begin" | "preempt", session id)

    def num_new_tokens(self, req: ToyRequest) -> int:
        return req.num_tokens - self.m.num_computed_tokens(req.session_id)

    def begin(self, req: ToyRequest, now: float):
        self.log.append(("begin", req.session_id))
        return self.m.begin_step(req.session_id, req.token_ids, now=now, salt=req.salt,
                                 workflow=req.workflow)

    def allocate(self, req: ToyRequest, num_tokens: int, now: float) -> None:
        self.m.allocate_slots(req.session_id, num_tokens, now=now)

    def preempt(self, req: ToyRequest, now: float) -> None:
        self.log.append(("preempt", req.session_id))
        self.m.preempt(req.session_id, now=now)

    def run(self, sched: Scheduler, out: SchedulerOutput, now: float,
            tool_s: float = 1.0, tool: str = "t") -> list[ToyRequest]:
        """Sample for every request whose context is computed; finish the steps that reach
        their limit (pause on `tool` for `tool_s`, or end). Returns the finished requests."""
        done = []
        for req, _ in out.scheduled:
            if req.num_tokens != self.m.num_computed_tokens(req.session_id):
                continue  # a prefill chunk short of the prompt's end
            req.out.append(1)
            if len(req.out) < req.max_new:
                self.m.append_tokens(req.session_id, [1])
                continue
            if req.last:
                self.m.end_session(req.session_id, now=now)
            else:
                self.m.finish_step(req.session_id, now=now, tool=tool, expected_s=tool_s)
            sched.finish(req, now, ended=req.last)
            done.append(req)
        return done


def drive(sched: Scheduler, arrivals: list[tuple[float, ToyRequest]], *, dt: float = 1.0,
          max_steps: int = 10_000) -> tuple[list[tuple[float, str]], ToyExecutor]:
    """Run a stream of steps to the end; returns [(time, session id admitted)] in order."""
    ex = ToyExecutor(sched.manager)
    pending = sorted(arrivals, key=lambda a: a[0])
    admitted: list[tuple[float, str]] = []
    now = 0.0
    for _ in range(max_steps):
        while pending and pending[0][0] <= now:
            sched.add(pending.pop(0)[1], now)
        if not pending and not sched.has_work:
            return admitted, ex
        out = sched.schedule(now, ex)
        admitted += [(now, r.session_id) for r in out.admitted]
        ex.run(sched, out, now)
        sched.manager.check_integrity()
        now += dt
    raise AssertionError("the stream did not finish")
