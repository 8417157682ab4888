"""TransferEngine: runs the manager's transfer plans between the GPU and host tiers.

Plans run in FIFO order on one CUDA copy stream (on CPU: one worker thread), offloads
before loads within a plan. That order is what makes block reuse safe without locks:
- a GPU block offloaded by plan k and reused as a load target or written by the forward of
  step k is read by plan k first (offloads precede loads; the forward waits on plan k);
- a host block read by plan k and overwritten by plan k+1 is read first (FIFO).
The engine calls `wait(transfer)` (CPU: blocks; CUDA: makes the compute stream wait on the
transfer's event, without a host sync) before a forward pass that may read loaded blocks.
A block being loaded is therefore never read by attention before its copy completes.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from kvsaga.host_tier import TransferPlan


@dataclass(eq=False)
class Transfer:
    """One plan in flight.

    Attributes:
        num_offloaded / num_loaded: blocks copied each way.
        nbytes: bytes moved in total.
        error: the exception that broke the copy, if any (`wait` raises it). The plan's
            copies after the failing one did not run, so its targets hold bytes that were
            never written: `LLMEngine.step` then hands the plan (and every plan submitted
            after it, which may have copied those bytes on) to the manager's
            `drop_transfer`, which unindexes and frees those host and GPU blocks, cutting
            back any running step that took one as a hit; their tokens are computed again.
    """

    num_offloaded: int
    num_loaded: int
    nbytes: int
    submitted_at: float
    event: object | None = None  # torch.cuda.Event on CUDA
    _done: threading.Event = field(default_factory=threading.Event)
    finished_at: float | None = None
    error: BaseException | None = None

    def done(self) -> bool:
        if self.event is not None:
            return bool(self.event.query())
        return self._done.is_set()


class TransferEngine:
    """Args:
    gpu_kv: the GPU tier tensor `[num_blocks, ...]` (block-major: one block is contiguous).
    host_kv: the host tier tensor of the same block shape (pinned on CUDA machines).
    delay: test hook, called before each copy on the CPU worker (e.g. a random sleep).
    """

    def __init__(
        self,
        gpu_kv: torch.Tensor,
        host_kv: torch.Tensor,
        delay: Callable[[], None] | None = None,
    ) -> None:
        if gpu_kv.shape[1:] != host_kv.shape[1:] or gpu_kv.dtype != host_kv.dtype:
            raise ValueError(
                f"tier tensors differ: gpu {tuple(gpu_kv.shape)} {gpu_kv.dtype}, "
                f"host {tuple(host_kv.shape)} {host_kv.dtype}"
            )
        self.gpu_kv, self.host_kv = gpu_kv, host_kv
        self.block_bytes = gpu_kv[0].numel() * gpu_kv.element_size()
        self.cuda = gpu_kv.is_cuda
        self.bytes_offloaded = 0
        self.bytes_loaded = 0
        self.wait_s = 0.0
        self._inflight: list[Transfer] = []
        if self.cuda:
            self.stream = torch.cuda.Stream(device=gpu_kv.device)
        else:
            # The worker holds the queue and the tensors, never `self`: once the engine is
            # collected, the finalizer's None (after the plans queued before it) ends it.
            self._jobs: queue.Queue = queue.Queue()
            self._worker = threading.Thread(
                target=_run_jobs, args=(self._jobs, gpu_kv, host_kv, delay), daemon=True,
                name="kv-copy")
            self._worker.start()
            weakref.finalize(self, self._jobs.put, None)

    def submit(self, plan: TransferPlan) -> Transfer | None:
        """Start the plan's copies; returns None for an empty plan.

        An interrupt (any BaseException that is not an Exception: Ctrl-C) while the copies
        are being started propagates only once none of the plan's copies runs any more or
        will: on CUDA the copy stream is synchronized (the copies queued before it end), on
        CPU the worker skips the plan unless it began it, and the interrupt waits for it to
        end. The caller then owns the plan as failed (its targets may hold bytes never
        written: `KVCacheManager.drop_transfer`); no transfer was registered for it.
        """
        if not plan:
            return None
        t = Transfer(
            len(plan.offloads),
            len(plan.loads),
            (len(plan.offloads) + len(plan.loads)) * self.block_bytes,
            time.perf_counter(),
        )
        try:
            if self.cuda:
                try:
                    self._submit_cuda(plan, t)
                except Exception as e:  # reported through the transfer, as on the CPU worker
                    t.event = None
                    t.error = e
                    t.finished_at = time.perf_counter()
                    t._done.set()
                    # The copies queued before the error must end before anyone reuses
                    # their blocks.
                    with contextlib.suppress(Exception):
                        self.stream.synchronize()
            else:
                self._jobs.put((plan, t))
            self.bytes_offloaded += len(plan.offloads) * self.block_bytes
            self.bytes_loaded += len(plan.loads) * self.block_bytes
            # Forget finished transfers nobody polled (the engine only waits), so the list
            # stays as short as the copies actually in flight.
            self._inflight = [x for x in self._inflight if not x.done()]
            self._inflight.append(t)
            return t
        except BaseException as e:  # an interrupt: no copy of the plan may outlive it
            if t.error is None:  # (the CPU worker skips a plan already failed)
                t.error = e
            self._inflight = [x for x in self._inflight if x is not t]
            self._quiesce()
            raise

    def _quiesce(self) -> None:
        """Return once every copy started so far has ended: the CUDA copy stream
        synchronized, or the CPU worker past a marker queued now. A further interrupt
        meanwhile is kept and raised once they have (their blocks must not be reused
        first)."""
        interrupt: BaseException | None = None
        if self.cuda:
            reached = None
        else:
            reached = threading.Event()
            self._jobs.put((None, reached))
        while True:
            try:
                if reached is None:
                    with contextlib.suppress(Exception):
                        self.stream.synchronize()
                else:
                    reached.wait()
                break
            except BaseException as e:  # (not Exception: the CUDA sync's are suppressed)
                interrupt = interrupt or e
        if interrupt is not None:
            raise interrupt

    def _submit_cuda(self, plan: TransferPlan, t: Transfer) -> None:
        # The copy stream first waits for the compute stream, so that offloads read K/V
        # that earlier forwards wrote. Each block is one contiguous DMA.
        self.stream.wait_stream(torch.cuda.current_stream(self.gpu_kv.device))
        with torch.cuda.stream(self.stream):
            for g, h in plan.offloads:
                self.host_kv[h].copy_(self.gpu_kv[g], non_blocking=True)
            for h, g in plan.loads:
                self.gpu_kv[g].copy_(self.host_kv[h], non_blocking=True)
            t.event = torch.cuda.Event()
            t.event.record(self.stream)

    def wait(self, transfer: Transfer | None) -> None:
        """Make the next forward pass see the transfer's copies (and everything before it).

        CUDA: the compute stream waits on the event (no host sync). CPU: blocks.
        Raises:
            RuntimeError: the copy failed (`Transfer.error`: the caller drops what the plan
                was to write, `KVCacheManager.drop_transfer`).
        """
        if transfer is None:
            return
        start = time.perf_counter()
        if transfer.event is not None:
            torch.cuda.current_stream(self.gpu_kv.device).wait_event(transfer.event)
        else:
            transfer._done.wait()
        self.wait_s += time.perf_counter() - start
        if transfer.error is not None:
            raise RuntimeError(f"KV transfer failed: {transfer.error!r}") from transfer.error

    def poll(self) -> list[Transfer]:
        """Transfers that completed since the last poll."""
        done = [t for t in self._inflight if t.done()]
        self._inflight = [t for t in self._inflight if not t.done()]
        return done

    def wait_all(self) -> None:
        """Wait for every transfer in flight; RuntimeError for the first that failed, once
        all have ended (none is left in flight either way)."""
        inflight, self._inflight = self._inflight, []
        error = None
        for t in inflight:
            try:
                self.wait(t)
            except RuntimeError as e:
                error = error or e
        if self.cuda:
            self.stream.synchronize()
        if error is not None:
            raise error


def _run_jobs(jobs: queue.Queue, gpu_kv: torch.Tensor, host_kv: torch.Tensor,
              delay: Callable[[], None] | None) -> None:
    """The CPU worker of a `TransferEngine`: runs its plans in order until the None that
    its finalizer queues (a function, not a method: a thread running a bound method kept
    the engine, and both tier tensors, alive for the rest of the process)."""
    while (job := jobs.get()) is not None:
        plan, t = job
        if plan is None:  # a marker (`TransferEngine._quiesce`): every job before it ended
            t.set()
            continue
        if t.error is not None:  # `submit` failed it (interrupted) before it began
            offloads = loads = ()
        else:
            offloads, loads = plan.offloads, plan.loads
        try:
            for g, h in offloads:
                if delay:
                    delay()
                host_kv[h].copy_(gpu_kv[g])
            for h, g in loads:
                if delay:
                    delay()
                gpu_kv[g].copy_(host_kv[h])
        except BaseException as e:  # reported through the transfer, never lost
            t.error = e
        t.finished_at = time.perf_counter()
        t._done.set()
