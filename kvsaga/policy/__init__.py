"""Eviction policies, chosen by name."""

from __future__ import annotations

from kvsaga.policy.base import Action, EvictionPolicy, PauseHint
from kvsaga.policy.lru import LRUPolicy

POLICIES: dict[str, type[EvictionPolicy]] = {
    LRUPolicy.name: LRUPolicy,
}


def make_policy(name: str, **kwargs) -> EvictionPolicy:
    """Build a policy by name.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None
    return cls(**kwargs)


__all__ = ["Action", "EvictionPolicy", "LRUPolicy", "PauseHint", "POLICIES", "make_policy"]
