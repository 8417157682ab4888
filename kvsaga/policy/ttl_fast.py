"""`ttl`'s usual victim search in one Python function (issue 11: eviction cost).

A cold search between two steps pays, over lru's allocation, mostly the interpreter's read
misses: each distinct Python function it runs touches its own code object, bytecode and
frame set-up once per search (docs/policies.md, "Eviction cost, twenty-third session"). The
usual search of `ttl` runs `choose_victims`, `_index_victims`, `_search_state`, `rent`,
`_keys`, `_timed_base` and `_key` although, between two steps that change no statistics,
every one of them takes its shortest branch: the rent is the last one (the same usage), the
keys' token is the same object, the sessions marked since the last search are paused
sessions whose class key is in `_memo`. `choose_victims` below checks exactly those
conditions and, when they hold, makes that search's steps inline, in the same order, with
the same index call (`refresh_marked`) and the same pushes, so the victims, runs, index
state, bases and memo are those of the general path; when any of them does not hold it
changes nothing and runs the general path (`VictimSearch.choose_victims`).

Which path ran is counted (`TTLPolicy.fast_searches`, `general_searches`):
tests/policy/test_fast_search.py compares every search's victims and the index's state with a
policy whose fast path is off (`_fast = False`), checks at every fast search that its pushes
are those `_keys` gives, and asserts the fast path is taken when it should be and never after
a change of the statistics or the rent, nor for a marked session it must decline.
"""

from __future__ import annotations

from kvsaga.policy import fast_search
from kvsaga.policy.fast_search import finish
from kvsaga.policy.search import VictimSearch, grid_index

_general = VictimSearch.choose_victims

# What the search below inlines: a subclass that overrides one takes the general path.
READS = ("_search_state", "rent", "_timed_base", "_key", "_value", "_formula",
         "_entry_key", "_keys", "_index_victims", "_resume_window", "_shape_cost")


def enable(policy, owner: type) -> None:
    """The fast path's switch and counts on `policy` (fast_search.py `enable`)."""
    fast_search.enable(policy, owner, READS)


def choose_victims(self, num_blocks: int, now: float, runs: bool = False
                   ) -> list[int] | None:
    """`VictimSearch.choose_victims` of a `TTLPolicy`: its usual search inline (see the
    module docstring), else the general path. With `runs` (the manager, when its C++ core
    evicts runs: `evicts_runs`), None where the usual search's victims are whole runs off
    tails, left in `_runs` (fast_search.py `finish`)."""
    if (not self._fast or num_blocks <= 0 or len(self.dead) or len(self.plain)
            or not (self.indexed and self.class_keys and self.class_formulas)):
        self.general_searches += 1
        return _general(self, num_blocks, now, runs)
    # `rent`: the same usage gives the last rent (its level and price unchanged).
    u, top = self.usage(), self.max_usage
    u = top if top < u else u
    rent = self._rent_last
    token = self._token_now
    learned, at = self._learned, self._learned_at_rebuild
    if (u != self._rent_usage or token[0] != self.graph.version or token[1] != rent
            or token is not self._token or rent != self._global
            or (learned != at and learned - at > self.relearn_share * len(self.groups))):
        self.general_searches += 1
        return _general(self, num_blocks, now, runs)
    # The pushes of the marked sessions, as `_keys` with `_timed_base` and `_key` gives
    # them, when each is a paused, unhinted session before its TTL whose class key and
    # formula `_memo` holds and whose class has an id (else: the general path).
    groups, views, memo, classes, pos = (self.groups, self.views, self._memo,
                                         self._classes, self._pos)
    pushes = []
    for sid in self._dirty:
        g = groups.get(sid)
        if g is None:  # no cached block left: the index drops it
            continue
        view = views.get(sid)
        if (view is None or view.needed_now or view.hint.last_step
                or view.hint.expected_s is not None):
            break
        paused_at = view.paused_at
        d = now - paused_at
        k, e, hi = grid_index(0.0 if d < 0.0 else d)
        sig = (view.workflow, view.tool, len(g), pos[g[-1]], None)
        value = memo.get((sig, k))
        f = memo.get(sig)
        cls = classes.get(sig)
        if value is None or f is None or cls is None:
            break
        c, v, ttl = value
        if d >= ttl:
            break
        key = (2, v) if c == 2 else (1, paused_at + e + v / rent)
        t, until = paused_at + ttl, paused_at + hi
        until = t if t < until else until
        pushes.append((sid, key, g[0], len(g), until,
                       (cls, k, key[0], f, 3, paused_at, ttl, t, 1.0)))
    else:
        self._rent = rent
        return finish(self, num_blocks, now, pushes, runs)
    self.general_searches += 1
    return _general(self, num_blocks, now, runs)
