"""Evictable blocks grouped by owner session: the base of the session-aware policies.

Every CACHED block of the GPU tier is in exactly one of three places:

- its owner session's group (`view.block_owner[b]` is a live session): a list of its
  block ids sorted by (-position, block) (positions in `_pos`), so the tail is the first
  entry and the head the last. That order makes the two hottest updates O(1): a step's
  release caches blocks tail first (appends), and a resume's hits reclaim them head first
  (pops); and a run of victims is a slice of the list itself (no per-block object);
- `dead`: private blocks of a session that has ended (FIFO, each session's tail first).
  Nobody is expected to reuse them, so every policy here evicts them first;
- `plain`: cache owned by no session (a prefix shared by several sessions, or anything
  hit again after its session ended), in LRU order.

Victims come from the search in kvsaga/policy/search.py (`VictimSearch`, which this
class mixes in): a merge of one stream per group, by a scan or by an event-driven index.

Invariants (checked by `check_integrity`):
- the tracked blocks are exactly the pool's CACHED blocks;
- a block sits in one place; groups are sorted and never empty;
- a CACHED block's marks (`_where`, `_owner`) say where it sits; an uncached one's say
  UNTRACKED, or OWNED with its old owner only when it left in a run of its group's tail
  (`blocks_uncached`) or a resume's run of its own group (stale, never read: `block_cached`
  rewrites them; a block uncached one by one has its owner cleared). No per-block record
  of those runs is kept: it would cost a set update per victim.
The ownership changes the pool does not report, `end_session` turning a session's blocks
into plain cache and `finish_step` disowning a compacted context's, move blocks to `dead`
(kvsaga/policy/group_ends.py).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Hashable
from itertools import count, groupby
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from kvsaga._validate import is_number
from kvsaga.block_queue import BlockQueue
from kvsaga.marks import make_marks
from kvsaga.policy.base import BlockView, EvictionPolicy
from kvsaga.policy.cost import CostModel, PrefillCost
from kvsaga.policy.group_ends import DEAD, OWNED, PLAIN, UNTRACKED, GroupEnds
from kvsaga.policy.search import SEARCH_FLAGS, VictimSearch
from kvsaga.policy.session_heap import PySessionHeap, make_session_heap
from kvsaga.session import PauseHint

if TYPE_CHECKING:
    from kvsaga.session import Session


def extend_sorted(g: list, items: list, key: Callable[[Any], Any]) -> None:
    """Add `items`, sorted and distinct by `key`, to the list `g` sorted by `key` (none of
    them in it already)."""
    if key(g[-1]) < key(items[0]):
        g.extend(items)  # the usual case: a release continues the group past its tail
    else:
        for x in items:
            insort(g, x, key=key)


class SessionView:
    """What a policy remembers of a live session between hooks.

    `running` is True from `step_started` to `step_finished`; a running session with cached
    blocks was preempted (the manager tells policies nothing then) and is about to retry.
    `imminent` is True from `resume_hinted` (its tool returned) to its next step.
    `resume_withdrawn` (that step, or a preempted step's retry, was aborted before it ran)
    clears both: the view is again that of its pause after its last completed step, whose
    end `paused_at` keeps (`step_started` leaves it, its hint and tool as they were).
    `has_paused` says whether it ever paused: a session whose first step is withdrawn has
    no earlier pause, so its pause starts at the withdrawal (`paused_at` is a placeholder
    until then, and the session's blocks would otherwise look idle since clock time 0).
    `needed_now` (running or imminent: its blocks will be read as soon as the scheduler
    gets to it) is kept beside them by `mark`, a slot rather than a property because keying
    reads it per session.
    """

    __slots__ = ("workflow", "tool", "paused_at", "has_paused", "hint", "running", "imminent",
                 "needed_now")

    def __init__(self, workflow: str) -> None:
        self.workflow = workflow
        self.tool: str | None = None
        self.paused_at = 0.0
        self.has_paused = False
        self.hint = PauseHint()
        self.mark(running=True, imminent=False)

    def mark(self, running: bool, imminent: bool) -> None:
        """Set `running` and `imminent` (and so `needed_now`)."""
        self.running = running
        self.imminent = imminent
        self.needed_now = running or imminent


class GroupedPolicy(GroupEnds, VictimSearch, EvictionPolicy):
    """Tracks evictable blocks per owner session; subclasses give the keys.

    Subclasses define `_session_base` (a session's key and when it must be recomputed),
    `_entry_key` (the key of one of its blocks, by position; default: the session's key),
    `_plain_key` and `_dead_key`, and may use `_prepare` for per-call constants and
    `_global_state` for what, when it changes, changes every session's key. Lower keys are
    evicted first; keys of one policy must be comparable. With `indexed = True` victims come
    from the event-driven index (module docstring), otherwise from a scan.

    Args:
        cost: prices rebuilding and reloading (default: `PrefillCost`).
        relearn_share: re-key every session once this many learning events per session
            passed since the last full re-key (0: at every search after any learning; the
            index then gives exactly the scan's order).
    """

    name = "grouped"
    indexed = False

    def __init__(self, cost: CostModel | None = None, relearn_share: float = 0.125) -> None:
        super().__init__()
        if not (is_number(relearn_share) and relearn_share >= 0):  # inf: never by count
            raise ValueError(f"relearn_share must be a number >= 0, got {relearn_share!r}")
        self.cost: CostModel = cost if cost is not None else PrefillCost()
        self.relearn_share = relearn_share
        # The class's search flags (search.py `VictimSearch`) as the instance's own: Python
        # 3.11 reads a class attribute through an instance by its generic lookup, not a
        # specialized one, and a search reads several (bench/RESULTS.md, "The marks' split
        # in the index call"). So a search reads each flag per instance, from construction
        # on: changing the class attribute afterwards does not reach existing instances (set
        # the instance's own instead). A value the instance already holds (a subclass's
        # `self.class_keys = False` before `super().__init__()`) is kept, not overwritten.
        own, cls = self.__dict__, type(self)
        for flag in SEARCH_FLAGS:
            if flag not in own:
                setattr(self, flag, getattr(cls, flag))
        self.views: dict[str, SessionView] = {}
        self.groups: dict[str, list[int]] = {}  # sid -> blocks, by (-position, block)
        self._now = 0.0
        self._ending: str | None = None
        self._plan: tuple[list[int], list[tuple[str, int]]] | None = None  # last search's runs
        # The index's runs of the last search (search.py), None when it took none.
        self._runs: list[tuple[str, int]] | None = None
        # The index (used when `indexed`): see the module docstring.
        self._index: PySessionHeap = PySessionHeap()  # bind() picks the manager's core's
        self._base: dict[str, Any] = {}
        # Sessions to re-key at the next search. One set for the policy's life (updated in
        # place, never replaced), so that `share_blocks` can hold it.
        self._dirty: set[str] = set()
        # What the pool's calls mark dirty, and whose `_cached_at` they stamp: this policy
        # alone, or also the policies that share its block tracking (`share_blocks`).
        self._mark = self._dirty.add
        self._dirty_sets: tuple[set[str], ...] = (self._dirty,)  # the sets `_mark` adds to
        self._sharing: tuple[GroupedPolicy, ...] = (self,)
        self._global: Hashable = None
        self._learned = 0  # learning events so far
        self._learned_at_rebuild = -1
        # Timed records (search.py `_rekey`): class ids by signature, never reused, the
        # policy's own memo of what keys by (signature, grid point) share, and the
        # statistics both were computed from.
        self._classes: dict[Hashable, int] = {}
        self._sig_of: dict[int, Hashable] = {}  # class id -> signature, kept across tokens
        self._class_ids = count()
        self._memo: dict[tuple[Hashable, int], Any] = {}
        self._token: Hashable = None

    def bind(self, view: BlockView) -> None:
        super().bind(view)
        n = view.num_gpu_blocks
        self.block_size = view.block_size
        # The C++ index where the manager runs the C++ core (and it was built).
        cpp = getattr(getattr(view, "core", None), "name", "") == "cpp"
        self._index = make_session_heap(cpp)
        self._marks = make_marks(cpp)  # a release's marks and runs, one call each
        self._classes.clear()  # (keys priced at another block size)
        self._sig_of.clear()
        self._memo.clear()
        # Share of GPU blocks referenced by running steps (`CacheStats.usage`): the view's
        # own method, with no call of ours around it (a search reads it).
        self.usage = view.usage
        self._where = bytearray(n)
        self._owner: list[str | None] = [None] * n
        self._pos = [0] * n
        self._cached_at = [0.0] * n
        # The core's queue, as LRU's: on the C++ core a release's run costs one C++ call.
        queue = view.core.BlockQueue if getattr(view, "core", None) is not None else BlockQueue
        self.plain = queue(n)
        self.dead = queue(n)
        self._block_costs: list[float] = []
        self._costs_rise = True  # block_cost never falls with position (so far)

    def share_blocks(self, others: list[GroupedPolicy]) -> None:
        """Let `others` (bound to the same view, fed the same hooks) read this policy's block
        tracking instead of keeping copies: one set of groups, queues and marks, kept by
        this policy's pool calls alone, which then also mark the sessions they touch dirty
        in each of `others` and stamp each one's `_cached_at` with its own `_now` (their
        clocks differ after a search one of them made). `adaptive` does this for its
        grouped experts: the pool's calls go to this one, so a victim's uncaching costs
        one expert's work, not one per expert. The others' keys, views, indexes and
        statistics stay their own; they must get no pool call of their own after this."""
        sharing = (self, *others)
        # Every one is checked before any is re-pointed: a bad one leaves all unchanged.
        seen = {id(self)}
        for i, p in enumerate(others):
            if not isinstance(p, GroupedPolicy):
                raise TypeError(f"share_blocks: others[{i}] must be a GroupedPolicy, "
                                f"got {type(p).__name__}")
            if p.view is None or p.view is not self.view:
                raise ValueError(f"share_blocks: others[{i}] ({p.name}) must be a grouped "
                                 f"policy bound to the same view as this one")
            if id(p) in seen:
                raise ValueError(f"share_blocks: others[{i}] ({p.name}) is listed twice "
                                 f"or is this policy")
            seen.add(id(p))
        for p in others:
            p.groups, p.plain, p.dead = self.groups, self.plain, self.dead
            p._where, p._owner, p._pos = self._where, self._owner, self._pos
        dirty = tuple(p._dirty for p in sharing)

        def mark(sid: str) -> None:
            for d in dirty:
                d.add(sid)

        self._sharing = sharing
        self._mark = mark
        self._dirty_sets = dirty

    def _touch(self, now: float) -> None:
        # Any hook but the pool's own ends the release that follows an end_session.
        # (VictimSearch.choose_victims inlines these two lines: change both together.)
        self._now = now
        self._ending = None

    # -- pool observer ------------------------------------------------------------------------
    def block_cached(self, block_id: int) -> None:
        v = self.view
        owner = v.block_owner[block_id]
        pos = v.block_position[block_id]
        self._pos[block_id] = pos
        for p in self._sharing:
            p._cached_at[block_id] = p._now
        if owner is None:
            self.plain.push(block_id)
            self._where[block_id] = PLAIN
        elif owner == self._ending:
            self.dead.push(block_id)
            self._where[block_id] = DEAD
        else:
            g = self.groups.get(owner)
            if g is None:
                self.groups[owner] = [block_id]
            elif (-self._pos[g[-1]], g[-1]) < (-pos, block_id):
                g.append(block_id)  # the usual case: released tail first
            else:
                insort(g, block_id, key=self._order_key)
            self._owner[block_id] = owner
            self._where[block_id] = OWNED
            self._mark(owner)

    def blocks_cached(self, block_ids: list[int]) -> None:
        """`block_cached` for a batch, with the same result. A step's release caches its
        table tail first: a run of the session's own blocks, positions falling, then the
        shared prefix's (plain cache). Each such run of a live session extends its group in
        one call, with no method call per block (the simulator releases whole contexts at
        every step); anything else goes block by block, in order.

        All or nothing: a subclass's `block_cached` (belady asks its oracle) that raises
        has recorded nothing of its block (`PoolObserver`'s rule), and the blocks of the
        batch recorded before it are taken out again (`_untell_cached`: exactly as they
        were, each group and queue in its old order) before the error propagates."""
        n = len(block_ids)
        if n < 2:
            for b in block_ids:
                self.block_cached(b)  # a subclass's own, as the pool would call it
            return
        queues = type(self).block_cached is GroupedPolicy.block_cached
        i = 0  # blocks of the batch recorded so far
        view = self.view
        try:
            for sid, k, falling in self._marks.owner_runs(block_ids, view.block_owner,
                                                          view.block_position):
                if sid is None or sid == self._ending:
                    if queues:
                        self._queue_run(block_ids[i:i + k], PLAIN if sid is None else DEAD)
                        i += k
                    else:
                        for b in block_ids[i:i + k]:
                            self.block_cached(b)  # a subclass's own (belady keys each block)
                            i += 1
                elif k < 2 or not falling:
                    for b in block_ids[i:i + k]:
                        self.block_cached(b)
                        i += 1
                else:
                    self._own_run(sid, block_ids[i:i + k])
                    i += k
        except BaseException as e:
            self._untell_cached(block_ids[:i], e)
            raise

    def _untell_cached(self, told: list[int], error: BaseException) -> None:
        """Take `told` (recorded by a `blocks_cached` that then raised `error`) out again,
        last first: each queue and group as before the batch (each block was appended or
        placed in sorted order). An undo that raises too stops and notes it on `error`."""
        for b in reversed(told):
            try:
                self.block_uncached(b)  # a subclass's own, as its `block_cached` was
            except Exception as u:
                error.add_note(f"undoing block_cached of block {b} raised too: {u!r}")
                break

    def _queue_run(self, run: list[int], where: int) -> None:
        """`block_cached` of `run`, blocks that go to `plain` (owned by no session: a shared
        prefix released at every step) or to `dead` (`where`), in one call per run."""
        marks = self._marks
        marks.copy(self._pos, self.view.block_position, run)
        for p in self._sharing:
            marks.fill(p._cached_at, run, p._now)
        marks.fill(self._where, run, where)
        (self.plain if where == PLAIN else self.dead).push_many(run)

    def _own_run(self, sid: str, run: list[int]) -> None:
        """`block_cached` of `run`, blocks of live session `sid` at falling positions."""
        marks = self._marks  # one call a mark (kvsaga/marks.py)
        marks.copy(self._pos, self.view.block_position, run)
        for p in self._sharing:
            marks.fill(p._cached_at, run, p._now)
        marks.fill(self._owner, run, sid)
        marks.fill(self._where, run, OWNED)
        g = self.groups.get(sid)
        if g is None:
            self.groups[sid] = list(run)  # positions fall: already in group order
        else:
            extend_sorted(g, run, self._order_key)
        self._mark(sid)

    def block_uncached(self, block_id: int) -> None:
        w = self._where[block_id]
        if w == OWNED:
            sid = self._owner[block_id]
            g = self.groups[sid]
            if g[-1] == block_id:
                g.pop()  # the usual case: hits reclaim a context head first
            else:
                del g[bisect_left(g, self._order_key(block_id), key=self._order_key)]
            if not g:
                del self.groups[sid]
            self._owner[block_id] = None
            self._mark(sid)
        elif w == PLAIN:
            self.plain.remove(block_id)
        elif w == DEAD:
            self.dead.remove(block_id)
        self._where[block_id] = UNTRACKED

    def blocks_uncached(self, block_ids: list[int]) -> None:
        """`block_uncached` for a batch. An eviction's victims come as runs of one session's
        blocks, tail first (the first entries of its group), a resume's hits as a run head
        first (the last entries): each run leaves its group in one slice, with no work per
        block for victims that are whole tails (`cut_tails`) and for a resume's own run
        (`_reclaimed_head`), by `_cut` otherwise."""
        plan, self._plan = self._plan, None
        # Runs of live sessions' blocks, each the tail of its group (a victim search's
        # answer: this policy's own, or, in `adaptive`, the leading expert's as every other
        # expert sees it): one slice off each group, with no Python work per block or run
        # (the index's `cut_tails`, kvsaga/policy/victim_runs.py: one C++ call on the C++
        # index). Their `_where` / `_owner` marks stay (stale OWNED): only a CACHED
        # block's marks are ever read, and `block_cached` rewrites them. The runs: the last
        # search's record when these are its victims, else `_owner_runs`. (`cut_tails`
        # checks that its runs are exactly `block_ids`, changing nothing otherwise: the
        # record is tried without a compare of the two lists here, whose generic path costs
        # a cold uncaching its misses.)
        cut_tails, groups, dirty = self._index.cut_tails, self.groups, self._dirty_sets
        ids = block_ids if type(block_ids) is list else list(block_ids)
        if plan is not None and cut_tails(groups, plan[1], ids, dirty):
            return
        runs = self._owner_runs(block_ids)
        if runs is not None and cut_tails(groups, runs, ids, dirty):
            return
        k = self._reclaimed_head(block_ids)
        if k:
            block_ids = block_ids[:-k]  # what precedes it (a shared prefix): block by block
        if self._plain_run(block_ids):
            return
        where, owner_of = self._where, self._owner
        run: list[int] = []
        run_sid = None
        for b in block_ids:
            w = where[b]
            if w == OWNED:
                sid = owner_of[b]
                if sid != run_sid:
                    if run:
                        self._cut(run_sid, run)
                    run_sid, run = sid, [b]
                else:
                    run.append(b)
                owner_of[b] = None
            elif w == PLAIN:
                self.plain.remove(b)
            elif w == DEAD:
                self.dead.remove(b)
            where[b] = UNTRACKED
        if run:
            self._cut(run_sid, run)

    def listed_runs(self) -> list[int]:
        """The victims of the last search when it answered with runs (`choose_victims(n,
        now, True)` gave None: kvsaga/manager_evict.py), as the list it would have answered
        otherwise, its plan recorded as then (for the list's way of evicting them)."""
        runs = self._runs
        out = self._index.tail_victims(self.groups, runs)
        self._plan = (out, runs)
        return out

    def _plain_run(self, block_ids: list[int]) -> bool:
        """Uncache `block_ids` in one call when all are plain cache (a resume's hits of a
        prefix shared by several sessions, taken back at every step). False, nothing done,
        for any other batch."""
        where = self._where
        if len(block_ids) < 2 or itemgetter(*block_ids)(where).count(PLAIN) != len(block_ids):
            return False
        self.plain.remove_many(block_ids)
        for b in block_ids:
            where[b] = UNTRACKED
        return True

    def _reclaimed_head(self, block_ids: list[int]) -> int:
        """Uncache the run that ends `block_ids` when it is the head of its session's group,
        head first (a resume's hits of the session's own blocks, the retained tail aside):
        one slice off the group, the run's marks left as a tail run leaves them (stale
        OWNED). Returns the run's length, 0 (nothing done) for any other batch."""
        if not block_ids or self._where[block_ids[-1]] != OWNED:
            return 0
        sid = self._owner[block_ids[-1]]
        g = self.groups[sid]
        try:
            run = block_ids[block_ids.index(g[-1]):]
        except ValueError:
            return 0
        k = len(run)
        if k > len(g) or g[-k:] != run[::-1]:
            return 0
        if k == len(g):
            del self.groups[sid]
        else:
            del g[-k:]
        self._mark(sid)
        return k

    def _owner_runs(self, block_ids: list[int]) -> list[tuple[str, int]] | None:
        """The runs (session, count) of `block_ids` when all are owned blocks, read off
        their owner marks in C-level maps (victims the last search did not record). None
        otherwise."""
        if len(block_ids) < 2:
            return None
        take = itemgetter(*block_ids)
        if take(self._where).count(OWNED) != len(block_ids):
            return None
        return [(sid, len(list(same))) for sid, same in groupby(take(self._owner))]

    def _cut(self, sid: str, taken: list[int]) -> None:
        """Take `taken` (distinct blocks of `sid`'s group) out of the group."""
        g = self.groups[sid]
        k = len(taken)
        if k == len(g):
            del self.groups[sid]
        elif g[:k] == taken:
            del g[:k]  # tails: an eviction's victims
        elif g[-k:] == taken[::-1]:
            del g[-k:]  # heads first: a resume's hits
        else:
            gone = set(taken)
            g[:] = [b for b in g if b not in gone]
        self._mark(sid)

    # -- session lifecycle --------------------------------------------------------------------
    def step_started(self, session: Session, now: float) -> None:
        self._touch(now)
        self._learned += 1
        self._touched_view(session).mark(running=True, imminent=False)

    def _touched_view(self, session: Session) -> SessionView:
        """`session`'s view (made on first sight), marked for re-keying."""
        self._dirty.add(session.session_id)
        v = self.views.get(session.session_id)
        if v is None:
            v = self.views[session.session_id] = SessionView(session.workflow)
        return v

    def step_finished(self, session: Session, now: float, hint: PauseHint) -> None:
        self._touch(now)
        v = self._touched_view(session)
        v.mark(running=False, imminent=False)
        v.tool = hint.tool
        v.hint = hint
        v.paused_at = now
        v.has_paused = True

    def pause_hinted(self, session: Session, now: float, hint: PauseHint) -> None:
        self._touch(now)
        self._dirty.add(session.session_id)
        v = self.views.get(session.session_id)
        if v is not None and not v.running:
            v.hint = hint
            if hint.tool is not None:
                v.tool = hint.tool

    def resume_hinted(self, session: Session, now: float) -> None:
        self._touch(now)
        self._dirty.add(session.session_id)
        v = self.views.get(session.session_id)
        if v is not None and not v.running:
            v.mark(running=False, imminent=True)

    def resume_withdrawn(self, session: Session, now: float) -> None:
        """Paused again since its last completed step's end; a session with none (its first
        step was preempted, then aborted) since `now`. `now`, not the manager's
        `session.paused_at` (the preemption): every caller knows the withdrawal's time,
        while the vLLM connector never learns when vLLM preempted the step."""
        self._touch(now)
        v = self.views.get(session.session_id)
        if v is not None and v.needed_now:  # imminent, or running: preempted, retry aborted
            self._dirty.add(session.session_id)
            v.mark(running=False, imminent=False)
            if not v.has_paused:
                v.paused_at, v.has_paused = now, True

    def tick(self, now: float) -> None:
        self._touch(now)

    # A tick only records the time: ticks in a row, with no other call between them, leave
    # the state of the last alone (a simulator's decode run sends only that one). An
    # override of `tick` does not inherit the mark.
    tick.coalesces = True

    # -- helpers ------------------------------------------------------------------------------
    def _order_key(self, block_id: int) -> tuple[int, int]:
        """A cached block's place in its group: tail (highest position) first."""
        return -self._pos[block_id], block_id

    def block_cost(self, position: int) -> float:
        """Seconds to rebuild the block at `position` of a context whose head survives."""
        memo = self._block_costs  # victim searches price the same positions over and over
        if position >= len(memo):
            bs, cost = self.block_size, self.cost
            start = len(memo)
            memo.extend(cost.recompute_s(bs, p * bs) for p in range(start, position + 1))
            self._costs_rise = self._costs_rise and all(
                memo[i - 1] <= memo[i] for i in range(max(start, 1), len(memo)))
        return memo[position]

    def group_cost(self, group: list[int]) -> float:
        """Seconds to rebuild a session's cached blocks (from its first cached position)."""
        bs = self.block_size
        return self.cost.recompute_s(len(group) * bs, self._pos[group[-1]] * bs)

    def idle_s(self, sid: str, now: float) -> float:
        """Seconds a paused session has waited (0 when running or unknown)."""
        v = self.views.get(sid)
        return 0.0 if v is None or v.needed_now else max(now - v.paused_at, 0.0)

    def check_integrity(self) -> None:
        """Verify that the tracked blocks are exactly the pool's CACHED blocks."""
        view = self.view
        seen: dict[int, int] = {}
        for sid, g in self.groups.items():
            assert g, f"empty group for session {sid!r}"
            assert g == sorted(g, key=self._order_key), f"group of {sid!r} is not sorted tail first"
            for b in g:
                assert self._owner[b] == sid and self._where[b] == OWNED, f"block {b} misfiled"
                seen[b] = OWNED
        for where, q in ((PLAIN, self.plain), (DEAD, self.dead)):
            for b in q:
                assert b not in seen and self._where[b] == where, f"block {b} misfiled"
                seen[b] = where
        for b in range(view.num_gpu_blocks):
            cached = view.is_cached(b)
            assert cached == (b in seen), (
                f"block {b}: {'' if cached else 'not '}CACHED but "
                f"{'' if b in seen else 'un'}tracked"
            )
            # Only a block uncached in a run of its group's tail or head keeps a stale OWNED
            # mark (and its owner); a queue mark is exact (belady reads it to spot stale
            # entries).
            assert cached or self._where[b] == UNTRACKED or (
                self._where[b] == OWNED and self._owner[b] is not None), \
                f"block {b}: stale place"
