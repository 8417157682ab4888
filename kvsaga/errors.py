"""Typed errors. Every error names the offending value; none leaves state half-changed."""

from __future__ import annotations


class KVSagaError(Exception):
    """Base class of every error kvsaga raises on purpose."""


class InvalidRequest(KVSagaError, ValueError):
    """An argument is malformed: wrong type, out of range, or inconsistent with the cache."""


class UnknownSession(KVSagaError, KeyError):
    """A session id that the manager does not know (never opened, or already ended)."""

    def __init__(self, session_id: object) -> None:
        super().__init__(session_id)
        self.session_id = session_id

    def __str__(self) -> str:
        return f"unknown session {self.session_id!r}"


class OutOfBlocks(KVSagaError):
    """Not enough free or evictable blocks; nothing was allocated and nothing changed.

    Attributes:
        needed: blocks the request asked for.
        available: blocks that were free or evictable at the time.
        tier: the tier that ran out ("gpu" or "host").
    """

    def __init__(self, needed: int, available: int, tier: str = "gpu") -> None:
        super().__init__(
            f"out of {tier} KV blocks: needed {needed}, only {available} free or evictable"
        )
        self.needed = needed
        self.available = available
        self.tier = tier
