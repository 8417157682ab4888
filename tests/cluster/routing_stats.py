"""Replica reports shared by the router tests (test_routing.py, test_routing_steal.py):
an idle replica, a busy one, and one holding given sessions' context."""

from __future__ import annotations

from kvsaga.routing import ReplicaStats

# (room for the 4,000-token sessions the tests steal: a thief must report room for the
# session's context, `KvsagaRouter._has_room`)
IDLE = ReplicaStats(total_blocks=1000, free_blocks=1000)


def busy(queue: int, running: int = 4) -> ReplicaStats:
    return ReplicaStats(total_blocks=100, free_blocks=10, queue_depth=queue, running=running)


def held(queue: int = 0, running: int = 0, **sessions: int) -> ReplicaStats:
    """A replica of 100 blocks of 16 tokens (1,600 tokens) holding these sessions."""
    return ReplicaStats(total_blocks=100, free_blocks=50, queue_depth=queue, running=running,
                        session_tokens=sessions, block_size=16)
