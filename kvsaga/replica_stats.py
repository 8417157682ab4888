"""What a replica reports to the router (`kvsaga.routing`): `ReplicaStats`, built from a
replica's manager and scheduler (`ReplicaStats.from_manager`), with the live views it reads
(`SessionTokens`, `count_predicted_resumes`). Kept apart from the routers so that a replica
(an engine, the simulator's GPU, a Ray Serve replica) builds its report without the routing
decisions, and the routers read reports without knowing where they came from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from kvsaga._validate import is_int, is_number
from kvsaga.session import SessionState

DEFAULT_RESUME_HORIZON_S = 10.0  # seconds ahead that a replica counts predicted resumes


@dataclass(frozen=True, slots=True)
class ReplicaStats:
    """What one replica reports for routing.

    Attributes:
        total_blocks: GPU blocks of its KV pool.
        free_blocks: blocks holding nothing.
        evictable_blocks: cached blocks no running step references (free for new work).
        queue_depth: steps waiting for admission.
        running: sessions with a step in flight.
        paused: sessions between steps (their KV retained).
        predicted_resumes: paused sessions expected back within the replica's horizon
            (`count_predicted_resumes`): steps that will load it soon although they are
            neither queued nor running now.
        tenant_service: service each tenant has received on this replica so far, for
            fair share across the fleet (`FairShare`): the context tokens its sessions
            gained here (prompt + generated; prefix hits count, recomputing a context
            does not, a session imported with its KV counts only what it gains after).
        session_tokens: the context each session living here holds, in tokens (what a
            move would migrate or recompute; ints >= 0); a Mapping, so a replica may hand
            a live view (`SessionTokens`, not checked) instead of a copy.
        block_size: tokens per KV block, to compare `session_tokens` with the pool
            (`commitment`).
        busy_s: seconds the replica has spent running batch steps since it started (its
            accumulated work, not its current load): the router evens it out across the
            fleet (`RoutingConfig.busy_balance`), which a count of queued and running
            steps cannot do once arrivals stop and a few replicas hold the last sessions.
        taken_at: when the replica took the report, in seconds of the wall clock
            (`time.time()`, the clock `Router.clock` reads), or None: taken now (a live
            view, as the simulator's). A router takes off a report the steps it saw finish
            after it was taken (`Router.busy`).
    """

    total_blocks: int = 1
    free_blocks: int = 1
    evictable_blocks: int = 0
    queue_depth: int = 0
    running: int = 0
    paused: int = 0
    predicted_resumes: int = 0
    tenant_service: Mapping[str, float] = field(default_factory=dict)
    session_tokens: Mapping[str, int] = field(default_factory=dict)
    block_size: int = 16
    busy_s: float = 0.0
    taken_at: float | None = None
    # `commitment`, summed on its first read: a router reads it for many replicas at each
    # decision, and a report stands for one moment (a live `session_tokens` view included).
    _commitment: float | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in (
            "total_blocks", "free_blocks", "evictable_blocks", "queue_depth", "running",
            "paused", "predicted_resumes", "block_size",
        ):
            v = getattr(self, name)
            if not is_int(v) or v < 0:
                raise ValueError(f"ReplicaStats.{name} must be an int >= 0, got {v!r}")
        if self.total_blocks == 0 or self.block_size == 0:
            raise ValueError("ReplicaStats.total_blocks and block_size must be > 0, got "
                             f"{self.total_blocks!r} and {self.block_size!r}")
        if self.free_blocks + self.evictable_blocks > self.total_blocks:
            raise ValueError(
                f"ReplicaStats: free ({self.free_blocks}) + evictable "
                f"({self.evictable_blocks}) blocks exceed total ({self.total_blocks})"
            )
        # Finite (review s52 routing 2): an inf busy_s made the fleet's mean inf, and the
        # replica's lead (inf - inf, nan) passed the balance tests: it gave every session
        # away; an inf service made every tenant's share ratio nan or 0.
        if not is_number(self.busy_s) or not 0 <= self.busy_s < math.inf:
            raise ValueError("ReplicaStats.busy_s must be a finite number >= 0, got "
                             f"{self.busy_s!r}")
        if self.taken_at is not None and not (is_number(self.taken_at)
                                              and math.isfinite(self.taken_at)):
            raise ValueError("ReplicaStats.taken_at must be a finite number of seconds or "
                             f"None, got {self.taken_at!r}")
        if not isinstance(self.tenant_service, Mapping):
            raise ValueError("ReplicaStats.tenant_service must be a mapping tenant -> "
                             f"service, got {type(self.tenant_service).__name__}")
        for t, v in self.tenant_service.items():
            if not isinstance(t, str) or not is_number(v) or not 0 <= v < math.inf:
                raise ValueError(f"ReplicaStats.tenant_service[{t!r}] must be a finite number "
                                 f">= 0 keyed by a str tenant, got {v!r}")
        if not isinstance(self.session_tokens, Mapping):
            raise ValueError("ReplicaStats.session_tokens must be a mapping session -> "
                             f"tokens, got {type(self.session_tokens).__name__}")
        if not isinstance(self.session_tokens, SessionTokens):  # (a live view: len()s)
            # Checked here, not where a router sums them (`commitment`) at a decision far
            # from the report: '120' failed there, and a negative or nan count routed.
            for sid, v in self.session_tokens.items():
                if not is_int(v) or v < 0:
                    raise ValueError(f"ReplicaStats.session_tokens[{sid!r}] must be an int "
                                     f">= 0 (tokens of its context), got {v!r}")

    @property
    def memory_pressure(self) -> float:
        """Share of blocks running steps hold (0: all reclaimable, 1: none)."""
        return 1.0 - (self.free_blocks + self.evictable_blocks) / self.total_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.total_blocks * self.block_size

    @property
    def commitment(self) -> float:
        """The contexts of the sessions living here over the pool, in tokens: above 1 they
        cannot all stay cached, so every resumed step recomputes what the others evicted
        (the thrash that no queue count shows). A shared prefix counts once per session, so
        this is an upper bound. Summed once per report, on its first read."""
        if self._commitment is None:
            object.__setattr__(self, "_commitment",
                               sum(self.session_tokens.values()) / self.capacity_tokens)
        return self._commitment

    @classmethod
    def from_manager(cls, manager, queue_depth: int = 0, *, now: float | None = None,
                     resume_horizon_s: float = DEFAULT_RESUME_HORIZON_S,
                     tenant_service: Mapping[str, float] | None = None,
                     busy_s: float = 0.0):
        """The stats of a `KVCacheManager` (plus what its scheduler knows and the busy
        time its engine measured): its blocks, sessions, the paused sessions predicted back
        within `resume_horizon_s` seconds of `now` (`count_predicted_resumes`), and each
        session's context size (a live view of the manager's sessions, not a copy)."""
        s = manager.stats()
        now = manager.clock() if now is None else now
        return cls(
            total_blocks=s.num_gpu_blocks,
            free_blocks=s.num_free_blocks,
            evictable_blocks=s.num_evictable_blocks,
            queue_depth=queue_depth,
            running=s.num_running_sessions,
            paused=s.num_paused_sessions,
            predicted_resumes=count_predicted_resumes(manager, now, resume_horizon_s),
            tenant_service=dict(tenant_service or {}),
            session_tokens=SessionTokens(manager.sessions),
            block_size=manager.spec.block_size,
            busy_s=busy_s,
        )



def count_predicted_resumes(manager, now: float, horizon_s: float) -> int:
    """Paused sessions of a manager expected to start a step within `horizon_s` of `now`.

    A session's pause is predicted by its hint's `expected_s` when it gave one, else by
    the Agent Execution Graph of a graph-learning policy (resume probability >= 1/2 and
    the median residual pause within the horizon), else it is counted: an agent session
    between steps is waiting on a tool and normally comes back.
    """
    graph = getattr(manager.policy, "graph", None)
    n = 0
    for s in manager.sessions.values():
        if s.state is not SessionState.PAUSED or s.paused_at is None:
            continue
        elapsed = max(0.0, now - s.paused_at)
        hint = s.hint
        if hint is not None and hint.expected_s is not None:
            n += hint.expected_s - elapsed <= horizon_s
        elif graph is not None:
            p = graph.predict(s.workflow, hint.tool if hint else None, elapsed)
            n += p.p_resume >= 0.5 and p.expected_s <= horizon_s
        else:
            n += 1
    return n


class SessionTokens(Mapping):
    """session id -> tokens of its context, read live from a manager's sessions."""

    __slots__ = ("_sessions",)

    def __init__(self, sessions: Mapping) -> None:
        self._sessions = sessions

    def __getitem__(self, sid: str) -> int:
        return len(self._sessions[sid].token_ids)

    def __iter__(self):
        return iter(self._sessions)

    def __len__(self) -> int:
        return len(self._sessions)
