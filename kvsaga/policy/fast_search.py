"""The end of a usual victim search whose pushes a policy's fast path made (ttl_fast.py,
graph_fast.py): the rest of search.py `_index_victims` for a search with no full re-key
and no dead or plain block, step for step, so that the victims, runs, index state and
bases are those of the general path."""

from __future__ import annotations

from kvsaga.policy.groups import GroupedPolicy
from kvsaga.policy.search import _BY_CLASS

# What a search answering with runs goes through (search.py `_index_victims`, `_take_runs`,
# `_rekey_all_now`) and the uncaching whose cut the manager's core makes in its place
# (groups.py `blocks_uncached`): a class that overrides one evicts by the list.
RUNS_PATH = ("_index_victims", "_take_runs", "_rekey_all_now", "blocks_uncached")


def evicts_runs(cls: type, choose) -> bool:
    """Whether the manager may ask `cls`'s policies for runs (base.py `evicts_runs`): its
    `choose_victims` is `choose` (which passes `runs` on) and it takes `RUNS_PATH` from
    groups.py."""
    return cls.choose_victims is choose and all(
        getattr(cls, f) is getattr(GroupedPolicy, f) for f in RUNS_PATH)


def enable(policy, owner: type, reads: tuple[str, ...]) -> None:
    """Give `policy` (an `owner`) its fast path's switch and counts: on where its class
    takes every method of `reads` (what the fast path inlines) from `owner`, so that a
    subclass that changes its keying takes the general path; `_fast = False` turns it off.
    `evicts_runs` (base.py) where it is on and the class takes `choose_victims` from
    `owner` (`evicts_runs` above)."""
    cls = type(policy)
    policy._fast = all(getattr(cls, f) is getattr(owner, f) for f in reads)
    policy.evicts_runs = policy._fast and evicts_runs(cls, owner.choose_victims)
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
    due, self._runs, out = (index.refresh_marked_runs if runs else index.refresh_marked)(
        now, dirty, pushes, num_blocks, 2 * len(groups) + 64, groups, self._base)
    base = self._base
    for p in pushes:
        base[p[0]] = None
    dirty.clear()
    if due is not None:  # the due sessions only Python keys, as `_index_victims` keys them
        if len(due) >= _BY_CLASS and self.class_keys:
            due = self._rekey_by_class(due, now)
        self._drop_or_rekey(set(due), now)
        out = self._take_runs(num_blocks, not runs)  # (`runs`: no victims' list, None)
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
