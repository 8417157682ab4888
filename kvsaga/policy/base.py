"""The eviction-policy protocol that the manager drives.

A policy orders the evictable (CACHED) blocks of the GPU tier and chooses, for each victim,
whether to offload it to the host tier or discard it. It is told about blocks through the
pool observer calls and about sessions through the lifecycle hooks below. It never changes
pool state itself: `choose_victims` only names blocks, and the manager evicts them.

Rules every policy keeps:
- `choose_victims(n, now)` returns min(n, evictable) distinct ids, each CACHED right now.
- A block's eviction never breaks another's reuse: evicting a context's tail before its head
  keeps the surviving blocks a usable prefix; policies rank tails first.
- Decisions read time only from the `now` arguments (the simulator drives the clock).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from kvsaga.errors import InvalidRequest
from kvsaga.session import PauseHint

if TYPE_CHECKING:
    from kvsaga.session import Session


class Action(enum.IntEnum):
    """What to do with a block that must leave the GPU tier."""

    OFFLOAD = 1  # copy to the host tier first (reloading is cheaper than recomputing)
    DISCARD = 2  # drop; a later step recomputes it


@runtime_checkable
class BlockView(Protocol):
    """What a policy may read of the cache it orders: the narrow seam between the two.

    `KVCacheManager` implements it; a test can hand a policy any object with these members
    and drive its observer calls and hooks directly, without a manager. Per-block facts are
    sequences indexed by GPU block id, read on the hot path without a call per block.

    Attributes:
        num_gpu_blocks: blocks in the GPU tier (block ids are 0 .. num_gpu_blocks - 1).
        block_size: tokens per block.
        num_host_blocks: host-tier capacity in blocks (0: no host tier, nothing to offload to).
        block_owner: the session whose context holds the block, None for plain cache (shared
            by several sessions, or left by an ended one).
        block_position: the block's index in that context.
        block_generation: bumped each time the block's content changes (tells a stale record
            of a block apart from its current content).
        block_hash: the content hash of a full block, None for a partial one.
    """

    num_gpu_blocks: int
    block_size: int
    num_host_blocks: int
    block_owner: Sequence[str | None]
    block_position: Sequence[int]
    block_generation: Sequence[int]
    block_hash: Sequence[bytes | None]

    def usage(self) -> float:
        """Share of GPU blocks referenced by running steps (`CacheStats.usage`)."""
        ...

    def is_cached(self, block_id: int) -> bool:
        """Whether the block is CACHED (evictable) now; for integrity checks."""
        ...


def check_unbound(policy: EvictionPolicy) -> None:
    """InvalidRequest for a policy instance already bound to a view (a `KVCacheManager`):
    binding it again would re-point it at the second manager while the first one's pool
    still reports to it, so two pools' block ids would mix in one order and the first
    manager's next eviction would fail inside a policy hook, its books half changed."""
    view = getattr(policy, "view", None)
    if view is not None:
        name = getattr(policy, "name", type(policy).__name__)
        raise InvalidRequest(
            f"policy {name!r} is already bound to a {type(view).__name__}; a policy instance "
            f"serves one manager (one LLMEngine, one Simulator) for its life: give each its "
            f"own instance")


def unbind(policy: EvictionPolicy) -> None:
    """Undo `bind` where the manager (or the engine around it) that bound `policy` failed to
    build: no caller ever received that manager, so a retry with the same instance (a
    smaller KV budget after a CUDA OOM) must not be refused by `check_unbound` (review s49,
    gatediff finding 3)."""
    policy.view = None


class EvictionPolicy:
    """Base class: every hook but the three block-order methods defaults to a no-op."""

    name = "base"

    def __init__(self) -> None:
        self.view: BlockView | None = None

    def bind(self, view: BlockView) -> None:
        """Called once by the manager that owns this policy (its `BlockView`), before any
        other call (`check_unbound` refuses a second manager)."""
        self.view = view

    # -- block order (pool observer) --------------------------------------------------------
    def block_cached(self, block_id: int) -> None:
        raise NotImplementedError

    def block_uncached(self, block_id: int) -> None:
        raise NotImplementedError

    def choose_victims(self, num_blocks: int, now: float) -> list[int]:
        raise NotImplementedError

    # True on a grouped policy whose `choose_victims(n, now, True)` may answer None, its
    # victims then the runs (session, count) of its `_runs` off its groups' tails, which the
    # manager's C++ core evicts (kvsaga/manager_evict.py; fast_search.py `enable` sets it).
    evicts_runs = False

    def action(self, block_id: int, now: float) -> Action:
        """Offload or discard a victim. Default: offload whenever a host tier exists."""
        v = self.view
        return Action.OFFLOAD if v is not None and v.num_host_blocks else Action.DISCARD

    # -- session lifecycle -------------------------------------------------------------------
    def step_started(self, session: Session, now: float) -> None:
        """A session's step begins (its blocks were hit or are being allocated)."""

    def step_finished(self, session: Session, now: float, hint: PauseHint) -> None:
        """A step ended; the session pauses (on `hint.tool`) and its blocks became CACHED."""

    def pause_hinted(self, session: Session, now: float, hint: PauseHint) -> None:
        """A paused session's hint arrived after its step finished (`session.hint` is set)."""

    def resume_hinted(self, session: Session, now: float) -> None:
        """The engine says a paused session's tool returned: its next step is imminent."""

    def resume_withdrawn(self, session: Session, now: float) -> None:
        """The session's next step was aborted before it ran: the one `resume_hinted`
        announced, or one `step_started` began that was preempted (the manager tells
        policies nothing then) and aborted while requeued. The session is paused again, as
        it was after its last completed step (a policy that keeps what the hint or the start
        set undoes it here)."""

    def session_ended(self, session: Session, now: float) -> None:
        """The session is gone; its full blocks stay as plain prefix cache."""

    def blocks_disowned(self, session: Session, block_ids: list[int], now: float) -> None:
        """The CACHED blocks `block_ids` (tail first) of paused `session` hold none of its
        context any more (the client compacted or edited it) and become plain cache, as an
        ended session's blocks do: told before `view.block_owner` drops the session (the
        manager's `finish_step` or `preempt`). A policy that files blocks by owner refiles them; one
        that raises must change nothing (the manager then keeps them owned)."""

    def session_forgotten(self, session: Session, now: float) -> None:
        """The integration drops a paused session it keeps no block of, not knowing whether
        the session ended (vLLM's offload cache policy, bounding its records): forget it as
        `session_ended` does, but learn nothing from it. It was not seen to end, so it is no
        abandonment; a later step of it is a new session. Default: `session_ended` (a
        policy that learns from ends overrides this: `aeg.FeedsExecutionGraph`)."""
        self.session_ended(session, now)

    def session_deferred(self, session: Session, deferred: bool, now: float) -> None:
        """The scheduler demoted the session (`deferred`: its next step waits for admission
        behind the sessions still admitted, so its blocks are needed later than its pause
        suggests), or admitted it again (not `deferred`)."""

    def session_admission_rank(self, session: Session, rank: int | None, now: float) -> None:
        """A demoted session's next step waits for admission (`session_deferred`), and the
        scheduler ordered its waiting steps: `rank` steps of its tenant's queue go before
        this one (0: it is next). Called only when the rank changed; None: its step left
        the queue without being admitted (the rank told last no longer holds). The
        admission itself is told by `step_started` (and `session_deferred`)."""

    def session_admission_room(self, session: Session, blocks: int | None, now: float) -> None:
        """A demoted session's next step waits for admission (`session_deferred`), and the
        scheduler measured the room it lacks: `blocks` GPU or tier blocks must free before
        both its working-set gate and the pool would take the step (<= 0: room now, the
        step waits on its order or a reserve). Measured when the queues change (the scans
        that tell `session_admission_rank`) and again at an admission attempt where the
        cache, the free-or-evictable blocks or the number of running steps changed since;
        told only when the figure changed. Between two such attempts it can be out of date.
        None: its step left the queue without being admitted. A scheduler calls it only on
        a policy that overrides it."""

    def session_paused_room(self, session: Session, blocks: int | None, now: float) -> None:
        """A demoted session (`session_deferred`) is paused on its tool, no step queued, and
        the scheduler measured the room its next step would lack were it queued now:
        `blocks` as `session_admission_room` counts them, its prompt taken as its context
        plus its workflow's mean growth. Measured at admission attempts where the pool or
        the set of such sessions changed; told only when the figure changed. None: its step
        queued, or it was admitted again. A scheduler calls it only on a policy that
        overrides it."""

    def tick(self, now: float) -> None:
        """Periodic call from the manager: expire TTLs, refresh predictions."""

    def prefetch_candidates(self, now: float) -> list[str]:
        """Paused sessions whose offloaded blocks should start loading now (default: none)."""
        return []
