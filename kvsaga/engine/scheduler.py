"""Scheduler: continuous batching with chunked prefill, over the KV cache manager.

Each step it fills a token budget: running requests first (one decode token each, or the
next chunk of an unfinished prefill), then waiting requests in arrival order (prefix hits
skip their cached tokens). When blocks run out it preempts the youngest running request:
its references go back to the manager (full blocks stay cached, so the retry hits them) and
it returns to the front of the queue.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from kvsaga.engine.request import Request, RequestStatus
from kvsaga.errors import OutOfBlocks
from kvsaga.manager import KVCacheManager


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
    """Args:
    manager: the KV cache manager (owns every block decision).
    max_num_seqs: most requests in one batch.
    max_num_batched_tokens: token budget of one forward pass (chunked prefill).
    """

    def __init__(
        self, manager: KVCacheManager, max_num_seqs: int = 64, max_num_batched_tokens: int = 1024
    ) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_seqs ({max_num_seqs}) and max_num_batched_tokens "
                f"({max_num_batched_tokens}) must be >= 1"
            )
        self.manager = manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # oldest first: the youngest is preempted first
        self.num_preemptions = 0

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def remove(self, request: Request) -> None:
        """Take a request out of the queues (it has finished or been aborted)."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self, now: float) -> list[ScheduledChunk]:
        budget = self.max_num_batched_tokens
        chunks: list[ScheduledChunk] = []
        mgr = self.manager
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            start = mgr.num_computed_tokens(req.session_id)
            n = min(len(req.all_token_ids) - start, budget)
            slots = self._allocate(req, n, now, chunks)
            if slots is None:  # the request itself was preempted
                continue
            chunks.append(ScheduledChunk(req, start, n, slots))
            budget -= n
            i += 1
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            req = self.waiting[0]
            st = mgr.begin_step(
                req.session_id, req.all_token_ids, now=now, salt=req.salt, workflow=req.workflow
            )
            n = min(st.num_prompt_tokens - st.num_cached_tokens, budget)
            try:
                slots = mgr.allocate_slots(req.session_id, n, now=now)
            except OutOfBlocks:
                mgr.preempt(req.session_id, now=now)  # gives back its hits; wait for room
                break
            self.waiting.popleft()
            if req.num_cached_tokens is None:
                req.num_cached_tokens = st.num_cached_tokens
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            chunks.append(ScheduledChunk(req, st.num_cached_tokens, n, slots))
            budget -= n
        return chunks

    def _allocate(
        self, req: Request, n: int, now: float, chunks: list[ScheduledChunk]
    ) -> list[int] | None:
        """Slots for a running request, preempting the youngest until they fit."""
        mgr = self.manager
        while True:
            try:
                return mgr.allocate_slots(req.session_id, n, now=now)
            except OutOfBlocks:
                victim = self.running[-1]
                self._preempt(victim, now)
                if victim is req:
                    return None

    def _preempt(self, req: Request, now: float) -> None:
        self.manager.preempt(req.session_id, now=now)
        self.running.remove(req)
        req.status = RequestStatus.WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)
