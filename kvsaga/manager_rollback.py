"""Taking back the writes of a forward pass or a host-tier copy that failed, so that no lookup
finds K/V never written (a mixin of `kvsaga.manager.KVCacheManager`): `discard_writes`, which
the engine calls when its forward raises, and `_take_back`, the cut both it and the host
tier's `drop_transfer` make (kvsaga/host_tier.py). Split from kvsaga/manager.py by concept.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvsaga._validate import is_int
from kvsaga.errors import InvalidRequest
from kvsaga.pool import FREE
from kvsaga.session import SessionState


class FailedWrites:
    """`discard_writes` and `_take_back` (see the module docstring)."""

    def discard_writes(self, starts: Mapping[str, int]) -> None:
        """Take back the slots of a forward pass that failed, so no lookup finds K/V it
        never wrote.

        `starts[sid]` is where running session `sid`'s tokens in that pass began (its chunk's
        start); slots for them were allocated (and their full blocks indexed) before the
        pass ran. Afterwards each such session is as if its `allocate_slots` had stopped at
        its start: `num_computed == start`, the blocks past the one holding token
        `start - 1` released (freed). Every block from the one holding token `start` on
        loses its prefix-index entry. A running session that took such a block as a prefix
        hit (begun in the same step) goes back to the block before it, its later blocks
        released too (cached where they hold a hash). The tokens stay in the contexts: the
        next `allocate_slots` computes them again.

        Raises:
            InvalidRequest: `starts` not a mapping, a session that is not running, or a start
                that is not an int in [0, num_computed]; nothing changed.
        """
        if not isinstance(starts, Mapping):
            raise InvalidRequest(f"starts must be a mapping of session id to token index, "
                                 f"got {type(starts).__name__}")
        for sid, start in starts.items():
            s = self._running(sid)
            if not is_int(start) or not 0 <= start <= s.num_computed:
                raise InvalidRequest(f"start {start!r} of session {sid!r} is not an int in "
                                     f"[0, {s.num_computed}]")
        self._changes += 1
        bs = self.block_size
        stale: set[int] = set()
        for sid, start in starts.items():
            stale.update(self.sessions[sid].block_ids[start // bs :])
        self._take_back(stale, starts)

    def _take_back(self, stale: set[int], starts: Mapping[str, int]) -> dict[str, int]:
        """Unindex the ACTIVE blocks `stale` (their K/V is not what their hash says) and
        take them out of every running table: a session in `starts` goes back to its start,
        and any running session to the block before the first stale one it holds before
        that; blocks past the cut are released (freed where unhashed). Returns the running
        sessions cut, with their new `num_computed` (`discard_writes`, `drop_transfer`)."""
        bs, pool, index = self.block_size, self.pool, self.index
        block_hash = pool.block_hash
        for b in stale:
            h = block_hash[b]
            if h is not None:
                index.remove(h)
                block_hash[b] = None
        owner = self.block_owner
        cut: dict[str, int] = {}
        for s in self.sessions.values():
            if s.state is not SessionState.RUNNING:
                continue
            sid = s.session_id
            end = starts.get(sid, s.num_computed)
            # Hits before its own written blocks (those that the pass alone wrote).
            first_own = end // bs if sid in starts else len(s.block_ids)
            for i in range(first_own):
                if s.block_ids[i] in stale:
                    end = i * bs
                    break
            if end == s.num_computed:
                continue
            keep = -(-end // bs)
            dropped = s.block_ids[keep:]
            del s.block_ids[keep:]
            s.num_computed = end
            cut[sid] = end
            pool.release_many(dropped[::-1])
            for b in dropped:
                if pool.state[b] == FREE:
                    owner[b] = None
        return cut
