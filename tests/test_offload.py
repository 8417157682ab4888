"""TransferEngine on CPU: byte-exact round trips and ordering under injected delays; and
an engine whose paused session is offloaded and reloaded gives the tokens of a cold run."""

from __future__ import annotations

import gc
import random
import time
import weakref

import pytest
import torch

from kvsaga.host_tier import TransferPlan
from kvsaga.offload import TransferEngine


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_preserves_every_byte(dtype):
    gen = torch.Generator().manual_seed(0)
    gpu = torch.randn(8, 2, 2, 4, 2, 8, generator=gen).to(dtype)
    original = gpu.clone()
    host = torch.zeros(5, *gpu.shape[1:], dtype=dtype)
    rng = random.Random(1)
    te = TransferEngine(gpu, host, delay=lambda: time.sleep(rng.random() / 1000))
    t = te.submit(TransferPlan(offloads=[(3, 0), (5, 4), (1, 2)], loads=[]))
    te.wait(t)
    gpu[[1, 3, 5]] = float("nan")
    # Load back into other blocks, and in the same plan offload one of the targets first.
    t = te.submit(TransferPlan(offloads=[(6, 1)], loads=[(0, 6), (4, 7), (2, 0)]))
    te.wait(t)
    assert torch.equal(host[1], original[6])  # read before the load overwrote block 6
    assert torch.equal(gpu[6], original[3])
    assert torch.equal(gpu[7], original[5])
    assert torch.equal(gpu[0], original[1])
    assert te.bytes_offloaded == 4 * gpu[0].numel() * gpu.element_size()
    assert te.poll() and not te.poll()


def test_fifo_order_under_random_delays():
    gpu = torch.arange(6 * 4, dtype=torch.float32).reshape(6, 4)
    host = torch.zeros(2, 4)
    rng = random.Random(2)
    te = TransferEngine(gpu, host, delay=lambda: time.sleep(rng.random() / 500))
    # Host block 0 is loaded into GPU 5 by one plan, then overwritten by the next.
    te.submit(TransferPlan(offloads=[(0, 0)], loads=[]))
    te.submit(TransferPlan(offloads=[], loads=[(0, 5)]))
    last = te.submit(TransferPlan(offloads=[(1, 0)], loads=[]))
    te.wait(last)
    assert torch.equal(gpu[5], torch.arange(4.0))  # saw block 0's content, not block 1's
    assert torch.equal(host[0], torch.arange(4.0, 8.0))


def test_finished_transfers_are_not_kept():
    te = TransferEngine(torch.zeros(4, 8), torch.zeros(4, 8))
    for i in range(50):
        te.wait(te.submit(TransferPlan(offloads=[(i % 4, i % 4)], loads=[])))
    assert len(te._inflight) <= 1


def test_failed_copy_is_reported():
    gpu = torch.zeros(2, 4)
    host = torch.zeros(2, 4)
    te = TransferEngine(gpu, host, delay=lambda: (_ for _ in ()).throw(OSError("dma")))
    t = te.submit(TransferPlan(offloads=[(0, 1)], loads=[]))
    with pytest.raises(RuntimeError, match="dma"):
        te.wait(t)


def test_mismatched_tiers_rejected():
    with pytest.raises(ValueError, match="differ"):
        TransferEngine(torch.zeros(2, 4), torch.zeros(2, 5))


def test_a_copy_refused_at_submit_is_reported_by_wait():
    """On CUDA the copies are launched in `submit`; one that raises there is reported by
    `wait` as a failed copy (the engine then drops the plan), not lost with its plan."""
    te = TransferEngine(torch.zeros(2, 4), torch.zeros(2, 4))
    te.cuda = True  # the launch path, with a launch that fails

    def refuse(plan, t):
        raise RuntimeError("CUDA error: invalid argument (simulated)")

    te._submit_cuda = refuse
    t = te.submit(TransferPlan(offloads=[(0, 1)], loads=[]))
    assert t.done() and t.error is not None
    with pytest.raises(RuntimeError, match="invalid argument"):
        te.wait(t)


def test_wait_all_waits_for_every_transfer_and_keeps_none():
    gpu = torch.arange(8.0).reshape(2, 4)
    host = torch.zeros(2, 4)
    calls = [0]

    def fail_first():
        calls[0] += 1
        if calls[0] == 1:
            raise OSError("dma")

    te = TransferEngine(gpu, host, delay=fail_first)
    te.submit(TransferPlan(offloads=[(0, 0)], loads=[]))
    te.submit(TransferPlan(offloads=[(1, 1)], loads=[]))
    with pytest.raises(RuntimeError, match="dma"):
        te.wait_all()
    assert torch.equal(host[1], gpu[1])  # the later plan ran and was waited for
    assert te._inflight == []
    te.wait_all()  # the failure is not met again


def test_a_dropped_transfer_engine_ends_its_worker_and_frees_its_tiers():
    """The CPU worker ran the bound method `_run_jobs` forever: it kept the TransferEngine,
    and both tier tensors, alive for the rest of the process after its LLMEngine was
    dropped. Now the worker holds no reference to it, and its finalizer ends the worker
    once the plans queued before ran."""
    gpu, host = torch.arange(8.0).reshape(2, 4), torch.zeros(2, 4)
    te = TransferEngine(gpu, host)
    t = te.submit(TransferPlan(offloads=[(1, 0)], loads=[]))
    worker, ref, host_ref = te._worker, weakref.ref(te), weakref.ref(host)
    del te, host
    gc.collect()
    assert ref() is None  # before the fix: held by its worker
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert t.done() and t.error is None
    assert host_ref() is None  # the worker let go of the tiers


@pytest.mark.parametrize("queued", [False, True])
def test_an_interrupt_in_submit_leaves_no_copy_of_the_plan_running(queued):
    """Ctrl-C inside `submit` (review s50 hosttier, finding 1): it propagates only once
    none of the plan's copies runs any more, the plan failed (the caller drops it) and not
    counted or kept in flight. Before the fix it propagated at once, with the job maybe
    queued and running, its transfer not failed."""
    gpu, host = torch.arange(8.0).reshape(2, 4), torch.zeros(2, 4)
    te = TransferEngine(gpu, host)
    real_put, jobs = te._jobs.put, []

    def put(job, *a, **kw):
        if job[0] is not None and not jobs:
            jobs.append(job)
            if queued:
                real_put(job, *a, **kw)
            raise KeyboardInterrupt
        return real_put(job, *a, **kw)

    te._jobs.put = put
    with pytest.raises(KeyboardInterrupt):
        te.submit(TransferPlan(offloads=[(1, 0)], loads=[]))
    (_, t), = jobs
    assert isinstance(t.error, KeyboardInterrupt)
    if queued:  # the worker skipped it, or ran it: either way, done with it
        assert t.done()
    assert te._inflight == [] and te.bytes_offloaded == 0
    te.wait(te.submit(TransferPlan(offloads=[(0, 1)], loads=[])))  # the engine goes on
    assert torch.equal(host[1], gpu[0])


def test_an_interrupt_while_launching_cuda_copies_waits_for_those_launched():
    te = TransferEngine(torch.zeros(2, 4), torch.zeros(2, 4))
    te.cuda = True  # the launch path, interrupted

    class Stream:
        synced = 0

        def synchronize(self) -> None:
            self.synced += 1

    te.stream = Stream()

    def launch(plan, t):
        raise KeyboardInterrupt  # as Ctrl-C between two blocks' copy_ calls

    te._submit_cuda = launch
    with pytest.raises(KeyboardInterrupt):
        te.submit(TransferPlan(offloads=[(0, 1)], loads=[]))
    assert te.stream.synced == 1  # before the fix: 0 (copies queued, nothing waits)
    assert te._inflight == []
