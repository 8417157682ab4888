"""The end of a usual victim search whose pushes a policy's fast path made (ttl_fast.py,
graph_fast.py): the rest of search.py `_index_victims` for a search with no full re-key
and no dead or plain block, step for step, so that the victims, runs, index state and
bases are those of the general path."""

from __future__ import annotations

from kvsaga.policy.groups import GroupedPolicy
from kvsaga.policy.search import _BY_CLASS


def enable(policy, owner: type, reads: tuple[str, ...]) -> None:
    """Give `policy` (an `owner`) its fast path's switch and counts: on where its class
    takes every method of `reads` (what the fast path inlines) from `owner`, so that a
    subclass that changes its keying takes the general path; `_fast = False` turns it off.
    `evicts_runs` (base.py) where it is on, the class takes `choose_victims` from `owner` and
    the pool's `blocks_uncached` is groups.py's (whose cut the manager's core makes)."""
    cls = type(policy)
    policy._fast = all(getattr(cls, f) is getattr(owner, f) for f in reads)
    policy.evicts_runs = (policy._fast and cls.choose_victims is owner.choose_victims
                          and cls.blocks_uncached is GroupedPolicy.blocks_uncached)
    policy.fast_searches = 0  # searches the fast path made
    policy.general_searches = 0  # searches it handed to the general path


def finish(self, num_blocks: int, now: float, pushes: list, runs: bool = False
           ) -> list[int] | None:
    """`_index_victims` after its keying, given the pushes of the marked sessions that hold
    cached blocks (each with its timed record, so each one's base is the index's). With
    `runs`, a search whose victims are whole runs off tails answers None and leaves them in
    `_runs` alone, with no list of them made (the manager's C++ core evicts them:
    manager_evict.py); any other answer is the list, as without."""
    self.fast_searches += 1
    self._now = now  # (`choose_victims`'s `_touch`)
    self._ending = None
    self._plan = None
    dirty, groups, index = self._dirty, self.groups, self._index
    due, self._runs, out = index.refresh_marked(
        now, dirty, pushes, num_blocks, 2 * len(groups) + 64, groups, self._base, not runs)
    base = self._base
    for p in pushes:
        base[p[0]] = None
    dirty.clear()
    if due is not None:  # the due sessions only Python keys, as `_index_victims` keys them
        if len(due) >= _BY_CLASS and self.class_keys:
            due = self._rekey_by_class(due, now)
        self._drop_or_rekey(set(due), now)
        if runs:  # `_take_runs` without its victims' list (`out` stays None)
            index.restore()
            self._runs = index.runs(num_blocks)
        else:
            out = self._take_runs(num_blocks)
    if not (self._one_key or self._keys_nonincreasing()):
        # That keying priced a position whose rebuild cost falls (graph's `_costs_rise`):
        # the runs go back and the general search merges, as `_index_victims` does.
        index.restore()
        out = []
        self._merge_victims(num_blocks, [], out)
        return out
    if out is None:  # (`runs`: the whole runs alone)
        return None
    self._plan = (out, self._runs)
    return out
