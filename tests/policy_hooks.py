"""Policies whose hooks raise on demand, shared by the manager and engine tests of a
take-back: each stands for a user's policy, or a policy bug, failing at one hook."""

from __future__ import annotations

from kvsaga.policy import LRUPolicy


class CachedFails(LRUPolicy):
    """LRU whose pool hook `blocks_cached` raises while `fail` is set."""

    fail = False

    def bind(self, view):
        super().bind(view)
        push_many = self.blocks_cached

        def blocks_cached(ids):
            if self.fail:
                raise RuntimeError("blocks_cached failed (a policy bug)")
            push_many(ids)

        self.blocks_cached = blocks_cached
