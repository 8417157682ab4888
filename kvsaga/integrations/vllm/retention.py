"""The connector's retention bookkeeping: which paused sessions hold references on which of
vLLM's blocks, and giving those references back, in the policy's order when memory is needed.

A mixin of `KVSagaConnector` (connector.py), split from it by concept. It owns the tables
`holds` (session -> retained block ids, head first), `_holders` (block id -> sessions
retaining it) and `_shared` (the retained blocks a request references too), which the
connector sets up, and keeps the `BlockLedger` (`ledger`) and `KeptDemoted` (`_demoted`) in
step with them; it reads vLLM's `BlockPool` (`pool`), the kvsaga `policy`, the connector's
`_sessions` and counts into its `stats`. Every reference it takes or drops goes through
`BlockPool.touch` / `free_blocks`, as a request's would.

`_shared` is kept where reference counts change, so that `_usage` (which the ttl policy reads
at every `choose_victims`, once per pass of a release under pressure) costs O(1): walking
every retained block there made a release of k blocks O(k * retained). The connector's own
`_hold` / `_drop` update it, and so do vLLM's requests through the pool's methods that change
a reference count (`_watch_refs`). A count vLLM changes outside them (a partial prefix hit's
copy-on-write reference, taken directly on the block) is seen at that block's next touch or
free, which vLLM's release of that reference is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from kvsaga.integrations.vllm.hints import StepInfo, session_for


class Retention:
    """References the connector keeps on paused sessions' blocks (see the module docstring)."""

    def _usage(self) -> float:
        """Share of blocks referenced by requests (retained-only blocks excluded)."""
        pool = self.pool
        total = pool.num_gpu_blocks - 1  # the null block
        in_use = total - pool.get_num_free_blocks()
        retained_only = len(self._holders) - len(self._shared)
        return max(in_use - retained_only, 0) / total if total else 0.0

    def _watch_refs(self, pool: Any) -> None:
        """Wrap the pool's methods that change reference counts (on the instance, as
        `bind_gpu_block_pool` wraps its reset), so that each retained block among their
        blocks is filed again in `_shared` (`_sync`) once the method has run."""
        for name in ("touch", "free_blocks", "unpin_blocks"):
            change = getattr(pool, name, None)
            if change is not None:
                setattr(pool, name, self._synced(change))

    def _synced(self, change: Callable[..., Any]) -> Callable[..., Any]:
        """`change` (a pool method taking blocks first), then `_sync` of the retained ones."""
        holders = self._holders

        def synced(blocks: Iterable[Any], *args: Any, **kwargs: Any) -> Any:
            if not holders:  # nothing retained: nothing to file
                return change(blocks, *args, **kwargs)
            blocks = list(blocks)  # (`free_blocks` is given one-shot iterators)
            out = change(blocks, *args, **kwargs)
            for blk in blocks:
                if blk.block_id in holders:
                    self._sync(blk.block_id)
            return out

        return synced

    def _sync(self, block_id: int) -> None:
        """File block `block_id` in `_shared` if it is retained and has more references than
        retaining sessions (a request's too), else out of it."""
        holders = self._holders.get(block_id)
        if holders is not None and self.pool.blocks[block_id].ref_cnt > len(holders):
            self._shared.add(block_id)
        else:
            self._shared.discard(block_id)

    def _retain(self, info: StepInfo, block_ids: list[int]) -> bool:
        """Take a reference on the request's full, hashed blocks (its context's prefix), in
        place of what the session retained before, and report them to the policy as the
        session's (its step's finish is told once the step's last request finished, whether
        it kept anything or not: `request_finished`). Whether it kept any: with no such
        block (a context under one block, or aborted in its first prefill chunk of less
        than a block) nothing changes (before session 47, an empty hold replaced the
        context another request of the step had just retained)."""
        sid = info.session_id
        session = session_for(self._sessions, info)
        pool = self.pool
        keep = []
        for b in block_ids:
            blk = pool.blocks[b]
            if blk.is_null or blk.block_hash is None:
                break  # only full, hashed blocks can be hit again; a hole ends the prefix
            keep.append(blk)
        if not keep:
            return False
        old = self.holds.get(sid)
        pool.touch(keep)  # before the old hold goes, so shared blocks never reach the free queue
        if old:
            self._release_session(sid)
        self.holds[sid] = [blk.block_id for blk in keep]
        for pos, blk in enumerate(keep):
            self._hold(blk.block_id, sid, pos)
        session.block_ids = list(self.holds[sid])
        return True

    def _only_retained_in_use(self) -> bool:
        """Whether every block in use (but vLLM's null block) is held by retention alone:
        what vLLM's prefix-cache reset needs once they are given back. Walked, not read off
        `_shared`: resets are rare, and a reference vLLM took on a block directly (see the
        module docstring) must not let one fail after the retained blocks were given back."""
        pool = self.pool
        in_use = pool.num_gpu_blocks - 1 - pool.get_num_free_blocks()
        return in_use == sum(1 for b, holders in self._holders.items()
                             if pool.blocks[b].ref_cnt == len(holders))

    def _hold(self, block_id: int, sid: str, position: int) -> None:
        holders = self._holders.get(block_id)
        if holders is None:
            self._holders[block_id] = [sid]
            self.ledger.cache(block_id, sid, position)
        else:
            holders.append(sid)
            if len(holders) == 2:  # shared by two sessions: plain cache to the policy
                self.ledger.refile(block_id, None, self.ledger.block_position[block_id])
        self._sync(block_id)

    def _drop(self, block_id: int, sid: str) -> None:
        """Give back session `sid`'s reference on one block."""
        holders = self._holders[block_id]
        holders.remove(sid)
        self.pool.free_blocks([self.pool.blocks[block_id]])
        if not holders:
            del self._holders[block_id]
            self.ledger.uncache(block_id)
        elif len(holders) == 1:  # no longer shared: the remaining session's again
            self.ledger.refile(block_id, holders[0], self.ledger.block_position[block_id])
        self._sync(block_id)

    def _release_session(self, sid: str) -> None:
        self._demoted.discard(sid)
        for b in reversed(self.holds.pop(sid, [])):  # tail first: vLLM reuses it first
            self._drop(b, sid)

    def _freeable(self, chosen: list[int], short: int) -> list[int]:
        """Up to `short` of the policy's `chosen` victims that a request does not hold too
        (no more references than retaining sessions), read one by one: a set of every
        retained block in use cost each pass O(retained)."""
        blocks, holders = self.pool.blocks, self._holders
        out = []
        for b in chosen:
            if blocks[b].ref_cnt <= len(holders[b]):
                out.append(b)
                if len(out) == short:
                    break
        return out

    def _release_tail(self, block_id: int, free_wanted: int) -> int:
        """Release the policy's victim `block_id` tails first: each session retaining it
        gives back its blocks after it first, the last first, then every session its
        reference on it; stop once vLLM has `free_wanted` free blocks. vLLM's prefix lookup
        stops at the first missing block, so once the victim is reused the blocks after it
        are never hit again: a policy that names a head (`lru` takes a session's blocks
        head first) left them retained, counted and pinned for nothing. Each hold stays a
        prefix of the session's context. A request may still use one of those later blocks
        while the victim is free: vLLM keeps duplicate cached blocks of one hash, so a
        request can reach a session's later block through another copy of the blocks before
        it. Its retained reference goes all the same (the request's own keeps the block),
        freeing nothing. Returns how many blocks the releases freed (such a drop is not
        one)."""
        num_free = self.pool.get_num_free_blocks
        released = 0
        for sid in list(self._holders[block_id]):
            hold = self.holds[sid]
            while hold[-1] != block_id:
                if num_free() >= free_wanted:
                    return released
                released += self._give_back_last(sid)
        if num_free() < free_wanted:
            for sid in list(self._holders[block_id]):
                released += self._give_back_last(sid)
        return released

    def _give_back_last(self, sid: str) -> bool:
        """Drop session `sid`'s reference on the last block it retains; whether that freed
        the block (no other session retains it, and no request uses it)."""
        hold = self.holds[sid]
        b = hold.pop()
        if not hold:
            del self.holds[sid]
            self._demoted.discard(sid)  # (kept demoted with nothing left: kept no more)
        self._drop(b, sid)
        return self.pool.blocks[b].ref_cnt == 0

    def _demoted_only(self, exclude: str | None = None) -> int:
        """Distinct blocks kept demoted sessions alone hold (not `exclude`'s, a session being
        admitted): `KeptDemoted.room`."""
        return self._demoted.room(self.pool.blocks, self.holds, self._holders, exclude)

    def _release_until(self, free_wanted: int, now: float, reason: str) -> int:
        """Release retained blocks in the policy's order, each session's tail first
        (`_release_tail`), until vLLM has `free_wanted` free blocks or no retained block can
        be freed. Returns how many retained blocks the releases freed. A victim a request
        also holds (`_freeable`) is kept: dropping its retained references frees nothing,
        and its session would lose the retention (and its paused context's hits once the
        request finishes) for no memory."""
        pool = self.pool
        demoted = self._demoted.release(pool.blocks, self._holders, pool.get_num_free_blocks,
                                        free_wanted, self.holds, self._drop,
                                        self._release_session)
        if demoted:
            self.stats.by_reason["demoted"] = self.stats.by_reason.get("demoted", 0) + demoted
        released = surplus = 0  # surplus: asked for past `short`, for blocks passed over
        while self._holders and pool.get_num_free_blocks() < free_wanted:
            short = free_wanted - pool.get_num_free_blocks()
            chosen = self.policy.choose_victims(short + surplus, now)
            victims = self._freeable(chosen, short)
            if len(victims) < short:  # some were in use: ask further next pass
                if len(chosen) < short + surplus:
                    if not victims:  # the policy has no other retained block
                        break
                else:
                    surplus = max(1, 2 * surplus)
            for b in victims:
                if pool.get_num_free_blocks() >= free_wanted:
                    break
                if b in self._holders:  # (else released this pass, past an earlier victim)
                    released += self._release_tail(b, free_wanted)
        if released:
            self.stats.by_reason[reason] = self.stats.by_reason.get(reason, 0) + released
        released += demoted
        if released:
            self.stats.released_blocks += released
            self.stats.pressure_releases += 1
        return released
