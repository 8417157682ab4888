"""The disowning of a compacted context's dead blocks and their giving back, as pure
functions over the ownership arrays: `KVCacheManager` (kvsaga/manager_signals.py
`_disown_dead`, `_reown`) and adaptive's shadow caches (kvsaga/policy/shadow.py) run the
same rule, so they share this code rather than two copies that must agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def dead_blocks(left: set[int], sid: str, table: Sequence[int], owner: list,
                position: list[int], block_hash: list, hashes: Sequence[bytes]) -> list[int]:
    """Prune `left` (blocks that left session `sid`'s `table` and may still be its own) of
    those no longer its own or back in its table; return those of the rest that hold none of
    its context (past its `hashes`, or another hash there), tail first. Nothing disowned."""
    keep = set(table)
    left.difference_update([b for b in left if owner[b] != sid or b in keep])
    n = len(hashes)
    dead = [b for b in left if position[b] >= n or block_hash[b] != hashes[position[b]]]
    dead.sort(key=position.__getitem__, reverse=True)
    return dead


def disown(dead: list[int], sid: str, owner: list, left: set[int],
           disowned: dict[str, dict[int, bytes]], block_hash: list) -> None:
    """Disown `dead` (session `sid`'s, from `dead_blocks`: the policy told already): out of
    `left`, recorded with their hashes in `disowned[sid]` for `reown`, whose entries that
    hold another hash now (evicted, reused) go."""
    for b in dead:
        owner[b] = None
    left.difference_update(dead)
    rec = disowned.setdefault(sid, {})
    for b in [b for b, h in rec.items() if block_hash[b] != h]:
        del rec[b]
    for b in dead:
        h = block_hash[b]
        if h is not None:
            rec[b] = h
    if not rec:
        del disowned[sid]


def reown(rec: dict[int, bytes], sid: str, hits: list[int], owner: list,
          position: list[int], block_hash: list,
          held_elsewhere: Callable[[int, int], bool]) -> list[tuple[int, bytes]]:
    """Give session `sid` back the blocks of `rec` that its `hits` hold again at their
    position, when no one owns them and no other session's table holds them
    (`held_elsewhere(block, position)`); entries rehashed since, or hit but not given back,
    go. Returns those given back (they leave `rec`). A step that hits none of them costs one
    C-level pass over its hits."""
    if rec.keys().isdisjoint(hits):
        return []
    back, gone, n = [], [], len(hits)
    for b, h in rec.items():
        if block_hash[b] != h:
            gone.append(b)
            continue
        p = position[b]
        if p >= n or hits[p] != b:
            continue  # not hit (yet): kept for a later prompt
        if owner[b] is None and not held_elsewhere(b, p):
            owner[b] = sid
            back.append((b, h))
        else:
            gone.append(b)
    for b in gone:
        del rec[b]
    for b, _ in back:
        del rec[b]
    return back
