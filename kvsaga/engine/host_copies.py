"""HostCopies: `LLMEngine`'s bookkeeping of its host<->GPU block copies.

The manager decides what moves between the GPU and host tiers (offloads of evictions, loads
of host hits, prefetches, resume reloads) and hands it over as plans (`take_transfers`); this
class owns what happens to those plans after that: the `TransferEngine` that runs them (None:
no host tier), the plans submitted that no forward pass has waited on yet, and the plans to
hand back to the manager after a failed copy (`KVCacheManager.drop_transfer`). The engine
keeps what only it knows: which requests counted the dropped blocks as hits (`on_cut`).
"""

from __future__ import annotations

from collections.abc import Callable

from kvsaga.host_tier import TransferPlan
from kvsaga.manager import KVCacheManager
from kvsaga.offload import Transfer, TransferEngine


class HostCopies:
    """Args:
    manager: the engine's cache manager, whose plans are run.
    transfers: the copy engine between the two tiers; None when there is no host tier (then
        every method is a no-op).
    on_cut: told, after failed plans were dropped, each session whose cached prefix the
        drop cut back and the tokens it keeps (`KVCacheManager.drop_transfer`'s answer).

    Attributes: `pending`, the plans submitted that no forward has waited on, in order, with
    their transfers; `failed_plans`, those to hand back to the manager after a failed copy
    (`wait`).
    """

    def __init__(self, manager: KVCacheManager, transfers: TransferEngine | None,
                 on_cut: Callable[[dict[str, int]], None]) -> None:
        self.manager = manager
        self.transfers = transfers
        self._on_cut = on_cut
        self.pending: list[tuple[Transfer, TransferPlan]] = []
        self.failed_plans: list[TransferPlan] = []
        # A copy failed in a wait that an interrupt then cut short: the next wait fails too.
        self._failure: RuntimeError | None = None

    def submit(self) -> int:
        """Start the manager's pending copies; returns the number of blocks being loaded.

        The plan taken is registered whatever is raised once it was taken: in `pending`
        when its copies started (an interrupt after `TransferEngine.submit` returned), else
        in `failed_plans` (that submit raised, and none of its copies runs: its targets
        hold bytes never written), for the caller's `drop_failed`, which `step` and
        `settle` run on their way out (`submit_alone` outside a step)."""
        if self.transfers is None:
            return 0
        plan = t = None
        try:
            plan = self.manager.take_transfers()
            t = self.transfers.submit(plan)
            if t is not None:
                pending = self.pending
                # Plans that ended well, with none before them failed, need no wait (a
                # driver that only ticks while idle would otherwise keep every prefetch's
                # plan); after a failure (`_failure`) every plan is failed at the next wait.
                while (self._failure is None and pending and pending[0][0].done()
                       and pending[0][0].error is None):
                    pending.pop(0)
                pending.append((t, plan))
            return len(plan.loads)
        except BaseException:
            if plan and not any(p is plan for _, p in self.pending):
                if t is not None:  # copying: the next wait sees it end
                    self.pending.append((t, plan))
                else:
                    self.failed_plans.append(plan)
            raise

    def submit_alone(self) -> int:
        """`submit` outside a step (a resume hint, an idle tick): a plan whose hand-over
        was interrupted is dropped at once (`drop_failed`), no step being there to."""
        try:
            return self.submit()
        except BaseException:
            self.drop_failed()
            raise

    def wait(self) -> None:
        """Wait for every plan submitted since the last wait (the next forward must see
        their copies). If one failed: RuntimeError, and it and the plans after it (which
        may have copied its unwritten blocks on) are left in `failed_plans` for
        `drop_failed`. No plan stays pending either way, so the next step does not meet the
        same failure again. Any other exception (an interrupt while blocked on a copy)
        puts the plans not yet waited on back in `pending` first: they may still be
        copying, and the next forward must wait for them before reading their blocks. If a
        copy had failed before it, only the plans already waited on go to `failed_plans`
        (`drop_transfer` must not run while a plan still copies), and the next wait fails
        in its place: RuntimeError once every plan is waited on, all of them failed."""
        pending, self.pending = self.pending, []
        error, self._failure = self._failure, None
        first_failed = 0
        for i, (t, _) in enumerate(pending):
            try:
                self.transfers.wait(t)  # (every one: none may still be copying below)
            except RuntimeError as e:
                if error is None:
                    error, first_failed = e, i
            except BaseException:
                self.pending = pending[i:] + self.pending
                if error is not None:
                    self.failed_plans += [plan for _, plan in pending[first_failed:i]]
                    self._failure = error
                raise
        if error is not None:
            self.failed_plans += [plan for _, plan in pending[first_failed:]]
            raise error

    def drop_failed(self) -> None:
        """Forget what the failed plans were to write (`KVCacheManager.drop_transfer`), and
        tell `on_cut` the sessions whose cached prefix that cut back. None failed: nothing.
        A plan leaves `failed_plans` only once dropped: one interrupted meanwhile, and those
        after it, are dropped by the next call, which `LLMEngine.step`, `tick`,
        `resume_hint` and `settle` make first, before any lookup or copy (a no-op when none
        failed): a plan left there would keep its never-written host copies indexed, for a
        later session to take as hits."""
        failed = self.failed_plans
        cut: dict[str, int] = {}
        try:
            while failed:
                cut.update(self.manager.drop_transfer(failed[0]))
                del failed[0]
        finally:
            if cut:
                self._on_cut(cut)

    def settle(self, undo: Callable[[], object] | None = None) -> None:
        """Submit the manager's pending plan, wait for every plan in flight, then synchronize
        the copy stream with the host (on CUDA, `wait` only orders the compute stream after
        the copies), so that the CPU may read the host tier's bytes at once. On a failed
        copy `undo` runs first, then the failed plans are dropped and the RuntimeError
        propagates (`LLMEngine.settle_transfers`)."""
        if self.transfers is None:
            return
        self.drop_failed()  # (left by an interrupt: before its blocks are copied on)
        try:
            self.submit()
            self.wait()
        except BaseException:
            try:
                if undo is not None:
                    undo()
            finally:
                self.drop_failed()
            raise
        if self.transfers.cuda:
            self.transfers.stream.synchronize()
