"""Session: one agent task's chain of steps, as the manager tracks it. Pure Python."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from kvsaga._validate import is_number
from kvsaga.errors import InvalidRequest

# The longest session id, tool or workflow name a client may send, in characters: kvsaga-serve's
# request fields and X-Session-ID header and the vLLM connector's hints all take this limit
# (a client's string is kept: session ids for a while after they end, names as keys of what
# the policies learn).
MAX_NAME_CHARS = 256


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
        if self.expected_s is not None:
            # Stored as a float: an int too large for one (a JSON integer of 309+ digits) would
            # raise OverflowError in a policy's float arithmetic later, far from the request
            # (inside vLLM's schedule(), that killed the engine core); refused here instead.
            x = self.expected_s
            if not is_number(x):
                raise InvalidRequest(f"expected_s must be a number >= 0, got {x!r:.200}")
            try:
                x = float(x)
            except OverflowError:
                raise InvalidRequest(  # no repr: an int past 4300 digits cannot be printed
                    f"expected_s must be a number >= 0 that fits a float, got an int of "
                    f"{self.expected_s.bit_length()} bits") from None
            if not x >= 0:  # nan fails too
                raise InvalidRequest(f"expected_s must be a number >= 0, got {self.expected_s!r}")
            object.__setattr__(self, "expected_s", x)  # (frozen)
        if self.tool is not None and not isinstance(self.tool, str):
            raise InvalidRequest(f"tool must be a str, got {self.tool!r}")


class SessionState(enum.Enum):
    RUNNING = "running"  # a step is open: its blocks are ACTIVE and referenced by it
    PAUSED = "paused"  # between steps: its blocks are CACHED (retained, evictable)


@dataclass(slots=True, eq=False)
class Session:
    """The manager's record of a session. Policies read it; only the manager writes it.

    Attributes:
        session_id: the engine's id.
        workflow: workflow type, for policies that learn per workflow.
        root: hash-chain root (per tenant salt).
        token_ids: the context: the last prompt plus every token appended since.
        block_hashes: hash of each full block of `token_ids`, chained from `root`.
        block_ids: the block table. While RUNNING each entry holds one reference; while
            PAUSED it is the table at the pause (entries may since have been evicted).
        num_computed: tokens of `token_ids` that have KV slots.
        tail: (block id, generation, tokens) of the partial last block retained at the pause.
        importing: True during the policy's `step_started` of an import's step
            (kvsaga.migration), which computes no token: every full block of it may hit,
            the last one too (a shadow cache replays it so, `ShadowCache.step_started`).
        ending: the policy was told the session ended, but `end_session` was cut (an
            interrupt) before it forgot the session: a retry of `end_session` only
            finishes it (releases the table if `state` is still RUNNING, then forgets).
    """

    session_id: str
    workflow: str
    root: bytes
    token_ids: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)
    block_ids: list[int] = field(default_factory=list)
    num_computed: int = 0
    state: SessionState = SessionState.PAUSED
    num_steps: int = 0
    paused_at: float | None = None
    hint: PauseHint | None = None
    tail: tuple[int, int, int] | None = None
    importing: bool = False
    ending: bool = False

    @property
    def is_running(self) -> bool:
        return self.state is SessionState.RUNNING


# A paused session nobody resumed for this long is ended as abandoned (`LLMEngine`'s and the
# vLLM connector's `session_idle_s`, kvsaga-serve's --session-idle): far beyond any tool pause
# of the shipped workloads (seconds to minutes).
DEFAULT_SESSION_IDLE_S = 1800.0


def check_session_idle(value: object, label: str = "session_idle_s",
                       error: type[Exception] = ValueError) -> float | None:
    """`value` if a number > 0 (inf: never) or None (never), else `error` naming `label`."""
    if value is not None and not (is_number(value) and value > 0):  # nan fails too
        raise error(f"{label} must be a number > 0 or None (never), got {value!r}")
    return value


class IdleSweep:
    """When an owner of sessions looks for abandoned ones: at most every min(60 s, limit / 4),
    so the look costs nothing per step, and a session is ended within a quarter of the limit
    (at most a minute) of passing it. `limit` None: never."""

    __slots__ = ("limit", "_next")

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self._next = -math.inf

    def due(self, now: float) -> bool:
        """Whether a sweep is due `now` (the next is then scheduled)."""
        if self.limit is None or now < self._next:
            return False
        self._next = now + min(60.0, self.limit / 4)
        return True


def idle_sessions(sessions: Mapping[str, Session], idle_s: float, now: float) -> list[str]:
    """Ids of the paused sessions in `sessions` whose pause began more than `idle_s` seconds
    before `now`: the ones a long-running engine ends as abandoned (a client that stops
    coming back never calls `end_session`), and those an interrupt left in the middle of
    their end (`Session.ending`, or paused by the end's release before it was cut: no
    `paused_at`), whichever their time, for the sweep's `end_session` to finish."""
    paused = SessionState.PAUSED
    return [sid for sid, s in sessions.items()
            if s.ending or (s.state is paused and (s.paused_at is None
                                                   or now - s.paused_at > idle_s))]
