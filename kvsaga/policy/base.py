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
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvsaga.errors import InvalidRequest

if TYPE_CHECKING:
    from kvsaga.manager import KVCacheManager
    from kvsaga.session import Session


class Action(enum.IntEnum):
    """What to do with a block that must leave the GPU tier."""

    OFFLOAD = 1  # copy to the host tier first (reloading is cheaper than recomputing)
    DISCARD = 2  # drop; a later step recomputes it


@dataclass(frozen=True, slots=True)
class PauseHint:
    """What the engine or user says about the pause that follows a step.

    Attributes:
        tool: name of the tool call the session waits on (None when unknown).
        expected_s: expected pause in seconds; overrides any learned prediction.
        last_step: the session will not come back; its context is plain cache now.
    """

    tool: str | None = None
    expected_s: float | None = None
    last_step: bool = False

    def __post_init__(self) -> None:
        if self.expected_s is not None and (
            isinstance(self.expected_s, bool)
            or not isinstance(self.expected_s, (int, float))
            or not self.expected_s >= 0
        ):
            raise InvalidRequest(f"expected_s must be a number >= 0, got {self.expected_s!r}")
        if self.tool is not None and not isinstance(self.tool, str):
            raise InvalidRequest(f"tool must be a str, got {self.tool!r}")


class EvictionPolicy:
    """Base class: every hook but the three block-order methods defaults to a no-op."""

    name = "base"

    def __init__(self) -> None:
        self.manager: KVCacheManager | None = None

    def bind(self, manager: KVCacheManager) -> None:
        """Called once by the manager that owns this policy, before any other call."""
        self.manager = manager

    # -- block order (pool observer) --------------------------------------------------------
    def block_cached(self, block_id: int) -> None:
        raise NotImplementedError

    def block_uncached(self, block_id: int) -> None:
        raise NotImplementedError

    def choose_victims(self, num_blocks: int, now: float) -> list[int]:
        raise NotImplementedError

    def action(self, block_id: int, now: float) -> Action:
        """Offload or discard a victim. Default: offload whenever a host tier exists."""
        m = self.manager
        return Action.OFFLOAD if m is not None and m.num_host_blocks else Action.DISCARD

    # -- session lifecycle -------------------------------------------------------------------
    def step_started(self, session: Session, now: float) -> None:
        """A session's step begins (its blocks were hit or are being allocated)."""

    def step_finished(self, session: Session, now: float, hint: PauseHint) -> None:
        """A step ended; the session pauses (on `hint.tool`) and its blocks became CACHED."""

    def pause_hinted(self, session: Session, now: float, hint: PauseHint) -> None:
        """A paused session's hint arrived after its step finished (`session.hint` is set)."""

    def resume_hinted(self, session: Session, now: float) -> None:
        """The engine says a paused session's tool returned: its next step is imminent."""

    def session_ended(self, session: Session, now: float) -> None:
        """The session is gone; its full blocks stay as plain prefix cache."""

    def tick(self, now: float) -> None:
        """Periodic call from the manager: expire TTLs, refresh predictions."""

    def prefetch_candidates(self, now: float) -> list[str]:
        """Paused sessions whose offloaded blocks should start loading now (default: none)."""
        return []
