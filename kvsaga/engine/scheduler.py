"""The engine's side of `kvsaga.scheduler`: it executes the core scheduler's decisions.

The core scheduler (the same object the simulator drives) decides admission, preemption and
the chunked-prefill budget; this adapter carries its decisions out on the manager
(`begin_step`, `allocate_slots`, `preempt`) and turns a batch into `ScheduledChunk`s with
their KV slots for the model runner.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsaga.engine.request import Request, RequestStatus
from kvsaga.manager import KVCacheManager, StepStart
from kvsaga.scheduler import DEFAULT_SCHEDULER, make_scheduler


@dataclass(slots=True)
class ScheduledChunk:
    """`num_tokens` tokens of `request`, from context position `start`, with their slots."""

    request: Request
    start: int
    num_tokens: int
    slots: list[int]

    @property
    def completes_context(self) -> bool:
        """The chunk reaches the end of the known context: its last row gets sampled."""
        return self.start + self.num_tokens == len(self.request.all_token_ids)


class Scheduler:
    """The engine's executor of a core scheduler.

    Args:
        manager: the KV cache manager (owns every block decision).
        max_num_seqs: most requests in one batch.
        max_num_batched_tokens: token budget of one forward pass (chunked prefill).
        name: the core scheduler (`kvsaga.scheduler.SCHEDULERS`).
        params: its parameters.
    Raises:
        ValueError: an unknown scheduler or parameter, or a bad value.
    """

    def __init__(self, manager: KVCacheManager, max_num_seqs: int = 64,
                 max_num_batched_tokens: int = 1024, *, name: str = DEFAULT_SCHEDULER,
                 **params) -> None:
        self.manager = manager
        self.core = make_scheduler(name, manager, max_num_seqs=max_num_seqs,
                                   max_num_batched_tokens=max_num_batched_tokens, **params)
        self._chunks: dict[int, ScheduledChunk] = {}  # this step's allocations, by request

    @property
    def name(self) -> str:
        return self.core.name

    @property
    def max_num_seqs(self) -> int:
        return self.core.max_num_seqs

    @property
    def waiting(self) -> list[Request]:
        return self.core.waiting

    @property
    def running(self) -> list[Request]:
        return self.core.running

    @property
    def num_preemptions(self) -> int:
        return self.core.num_preemptions

    @property
    def has_work(self) -> bool:
        return self.core.has_work

    def add(self, request: Request) -> None:
        self.core.add(request, request.arrival)

    def remove(self, request: Request, now: float, *, ended: bool = False) -> None:
        """The request finished or was aborted (after the manager's finish_step or
        end_session; `ended`: its session is over)."""
        self.core.finish(request, now, ended=ended)

    def forget_session(self, session_id: str, now: float) -> None:
        """The session ended or moved away while paused (after the manager's end_session):
        the core scheduler drops what it keeps about it."""
        self.core.forget_session(session_id, now)

    def schedule(self, now: float) -> list[ScheduledChunk]:
        """One batch: the core decides, this adapter executes; chunks in batch order."""
        out = self.core.schedule(now, self)
        chunks = self._chunks
        self._chunks = {}
        return [chunks[id(req)] for req, _ in out.scheduled]

    # -- the core scheduler's executor ---------------------------------------------------
    def num_new_tokens(self, req: Request) -> int:
        return len(req.all_token_ids) - self.manager.num_computed_tokens(req.session_id)

    def begin(self, req: Request, now: float) -> StepStart:
        st = self.manager.begin_step(req.session_id, req.all_token_ids, now=now, salt=req.salt,
                                     workflow=req.workflow)
        if req.num_cached_tokens is None:
            req.num_cached_tokens = st.num_cached_tokens
        req.status = RequestStatus.RUNNING
        return st

    def allocate(self, req: Request, num_tokens: int, now: float) -> None:
        start = self.manager.num_computed_tokens(req.session_id)
        slots = self.manager.allocate_slots(req.session_id, num_tokens, now=now)
        self._chunks[id(req)] = ScheduledChunk(req, start, num_tokens, slots)

    def preempt(self, req: Request, now: float) -> None:
        self.manager.preempt(req.session_id, now=now)
        self._chunks.pop(id(req), None)
        req.status = RequestStatus.WAITING
        req.num_preemptions += 1
