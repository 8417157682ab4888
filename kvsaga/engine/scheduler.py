"""The engine's side of `kvsaga.scheduler`: it executes the core scheduler's decisions.

The core scheduler (the same object the simulator drives) decides admission, preemption and
the chunked-prefill budget; this adapter carries its decisions out on the manager
(`begin_step`, `allocate_slots`, `preempt`) and turns a batch into `ScheduledChunk`s with
their KV slots for the model runner.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvsaga.engine.request import Request, RequestStatus
from kvsaga.errors import OutOfBlocks
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
        return self.start + self.num_tokens == self.request.num_tokens


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
        # This step's allocations, and the slots `decode_step` allocated (with their
        # requests), by request id; both emptied as `schedule` returns or raises.
        self._chunks: dict[str, ScheduledChunk] = {}
        self._decoded: dict[str, tuple[Request, int]] = {}

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

    @property
    def wake_time(self) -> float:
        """The core's `wake_time`: when a waiting request may become admissible with
        nothing running and nothing arriving (inf: only an arrival or a finish)."""
        return self.core.wake_time

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
        """One batch: the core decides, this adapter executes; chunks in batch order.

        If the core raises, the slots allocated so far (no pass will write them) are taken
        back as for a failed pass (`discard`), and the exception propagates.
        """
        try:
            self._append_pending(now)
            out = self.core.schedule(now, self)
            return [self._chunks[req.request_id] for req, _ in out.scheduled]
        except BaseException:
            self._discard_unrun()
            raise
        finally:
            self._chunks = {}
            self._decoded = {}

    def _discard_unrun(self) -> None:
        """`discard` this schedule's allocations: its chunks, and the decode slots that no
        chunk picked up, of the requests still running."""
        starts = {c.request.session_id: c.start for c in self._chunks.values()
                  if c.request.status is RequestStatus.RUNNING}
        for req, _ in self._decoded.values():
            if req.status is RequestStatus.RUNNING:
                starts.setdefault(req.session_id, req.num_tokens - 1)
        if starts:
            self.manager.discard_writes(starts)

    def discard(self, chunks: list[ScheduledChunk]) -> None:
        """The forward pass of `chunks` (the last `schedule`'s) failed: their K/V was never
        written. The manager takes their slots back (`discard_writes`: their blocks
        unindexed, each session's computed tokens back to its chunk's start), so a later
        step computes them again and no lookup meanwhile finds the unwritten blocks; the
        core scheduler takes back what it counted for them (`Scheduler.discard`: Agent Fair
        Share's compute service), so no tenant is held back for a pass that never ran."""
        if not chunks:
            return
        try:
            self.manager.discard_writes({c.request.session_id: c.start for c in chunks})
        finally:
            self.core.discard([(c.request, c.num_tokens) for c in chunks])

    def flush(self, req: Request) -> None:
        """Append the request's pending token to its session (one `append_tokens`). Cut by
        an interrupt as the call returns (the token appended all the same), the token is
        no longer pending, so that a retry does not append it twice (`_decoded_anyway`'s
        rule for one request; review s57 interrupts)."""
        if req.pending_token is None:
            return
        try:
            self.manager.append_tokens(req.session_id, [req.pending_token])
        except BaseException:
            s = self.manager.sessions.get(req.session_id)
            if s is not None and len(s.token_ids) == req.num_tokens:
                req.pending_token = None
            raise
        req.pending_token = None

    def _append_pending(self, now: float) -> None:
        """Hand the manager the tokens sampled last step.

        When every running request is decoding (the usual step), one batched
        `decode_step` appends each token and allocates its slot, and the core's
        `allocate` calls below only pick those slots up: every running request is scheduled
        (one token each, within the budget) and none can be preempted, as all slots exist.
        Otherwise (a prefill chunk in the batch, or no room for every slot at once: the
        core must choose whom to preempt), each token is appended on its own and the core
        allocates as usual.
        """
        running = self.core.running
        pending = [r for r in running if r.pending_token is not None]
        if not pending:
            return
        if len(pending) == len(running) <= self.core.max_num_batched_tokens:
            try:
                slots = self.manager.decode_step([r.session_id for r in pending],
                                                 [r.pending_token for r in pending], now=now)
                for r, slot in zip(pending, slots, strict=True):
                    r.pending_token = None
                    self._decoded[r.request_id] = (r, slot)
            except OutOfBlocks:  # nothing changed: the core preempts below
                pass
            except BaseException:
                self._decoded_anyway(pending)
                raise
            else:
                return
        for r in pending:
            self.flush(r)

    def _decoded_anyway(self, pending: list[Request]) -> None:
        """After `decode_step` raised: a request whose token it appended all the same (an
        interrupt as the call returned: on the C++ core CPython raises a signal as the
        ManagerCore call returns, the slots lost to us; or in the loop that records them)
        no longer has it pending, so that a retry does not append it twice, and one whose
        token got its slot too is recorded as decoded, so that `schedule`'s take-back
        discards the slot (s56 cuts; was: appended again, the slot counted as computed).
        A decoding request's session holds every token but the pending one, all computed:
        a context of `num_tokens` has the token, computed up to it, its slot."""
        session = self.manager.session
        for r in pending:
            if r.pending_token is None:  # (recorded by the loop)
                continue
            s = session(r.session_id)
            if len(s.token_ids) == r.num_tokens:
                r.pending_token = None
                if s.num_computed == r.num_tokens:
                    self._decoded[r.request_id] = (r, -1)

    # -- the core scheduler's executor ---------------------------------------------------
    def num_new_tokens(self, req: Request) -> int:
        if req.request_id in self._decoded:
            return 1  # its slot is allocated, its token not computed yet
        return req.num_tokens - self.manager.num_computed_tokens(req.session_id)

    def begin(self, req: Request, now: float) -> StepStart:
        st = self.manager.begin_step(req.session_id, req.all_token_ids, now=now, salt=req.salt,
                                     workflow=req.workflow)
        if req.num_cached_tokens is None:
            req.num_cached_tokens = st.num_cached_tokens
        req.status = RequestStatus.RUNNING
        return st

    def allocate(self, req: Request, num_tokens: int, now: float) -> None:
        decoded = self._decoded.pop(req.request_id, None)
        if decoded is not None:  # `decode_step` gave it its slot already
            self._chunks[req.request_id] = ScheduledChunk(req, req.num_tokens - 1, 1,
                                                          [decoded[1]])
            return
        start = self.manager.num_computed_tokens(req.session_id)
        try:
            slots = self.manager.allocate_slots(req.session_id, num_tokens, now=now)
            self._chunks[req.request_id] = ScheduledChunk(req, start, num_tokens, slots)
        except OutOfBlocks:  # nothing changed: the core preempts or waits
            raise
        except BaseException:
            # An interrupt as the call returned (on the C++ core, as the ManagerCore call
            # returns) allocated the slots, lost to us: recorded from `start`, so that
            # `schedule`'s take-back discards them (a no-op where none was allocated; s56
            # cuts: was counted as computed though no pass wrote them)
            self._chunks[req.request_id] = ScheduledChunk(req, start, num_tokens, [])
            raise

    def preempt(self, req: Request, now: float) -> None:
        try:
            self.manager.preempt(req.session_id, now=now)
        except BaseException:
            # Raised after the preempt (a policy hook, a cut after the release: the session
            # paused), the request is preempted all the same (the core requeues it), so an
            # abort while it waits withdraws it; raised with nothing done, it still runs.
            s = self.manager.sessions.get(req.session_id)
            if s is None or not s.is_running:
                self._preempted(req)
            raise
        self._preempted(req)

    def _preempted(self, req: Request) -> None:
        self._chunks.pop(req.request_id, None)
        self._decoded.pop(req.request_id, None)  # its slot went with its blocks
        req.status = RequestStatus.WAITING
        req.num_preemptions += 1
