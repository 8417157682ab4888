"""`saga`'s usual victim search in fewer Python functions (issue 11: eviction cost), as
ttl_fast.py is ttl's (its docstring says why: a cold search pays each distinct Python
function it runs). saga's search state (`_search_state`: the entries' sizes, the oldest
pause, the normalizers) is one call already and is made as the general path makes it; what
is inlined is `_index_victims`, `_keys` and `_timed_base` for a search whose global state
and token are the last search's, with no relearning due, where each session marked since is
a paused one whose score at its grid point, reuse probability, TTL and class id are
remembered. Otherwise the general path runs (its `_search_state` again: with nothing changed
since, it changes nothing and gives the same state). Counted (`fast_searches`,
`general_searches`; tests/policy/test_fast_search.py).
"""

from __future__ import annotations

import math

from kvsaga.policy import fast_search
from kvsaga.policy.fast_search import finish
from kvsaga.policy.search import VictimSearch, grid_index

_general = VictimSearch.choose_victims
_INF = math.inf
_after = math.nextafter

# What the search below inlines: a subclass that overrides one takes the general path.
READS = ("_search_state", "_timed_base", "_session_base", "_score", "_search_reuse",
         "_search_ttl", "_entry_key", "_keys", "_index_victims", "_prepare")
# saga's score weights (W_RECENCY, W_REUSE, W_SIZE), set by kvsaga/policy/saga.py.
WEIGHTS: tuple[float, float, float] = (math.nan, math.nan, math.nan)


def enable(policy, owner: type) -> None:
    """The fast path's switch and counts on `policy` (fast_search.py `enable`)."""
    fast_search.enable(policy, owner, READS)


def choose_victims(self, num_blocks: int, now: float) -> list[int]:
    """`VictimSearch.choose_victims` of a `SagaPolicy`: its usual search with `_keys` and
    `_timed_base` inline, else the general path."""
    if (not self._fast or num_blocks <= 0 or self.dead._size or self.plain._size
            or not (self.indexed and self.class_keys and self.class_formulas)):
        self.general_searches += 1
        return _general(self, num_blocks, now)
    state, token = self._search_state(now)
    learned, at = self._learned, self._learned_at_rebuild
    if (state != self._global or (token is not self._token and token != self._token)
            or (learned != at and learned - at > self.relearn_share * len(self.groups))):
        return _declined(self, num_blocks, now, state, token)
    w_recency, w_reuse, w_size = WEIGHTS
    used, max_idle, max_size = state
    groups, views, memo, classes = self.groups, self.views, self._memo, self._classes
    reuse_now, ttl_now = self._reuse_now, self._ttl_now
    pushes = []
    for sid in self._dirty:
        g = groups.get(sid)
        if g is None:  # no cached block left: the index drops it
            continue
        v = views.get(sid)
        if v is None or v.needed_now:
            break
        paused_at = v.paused_at
        exact = now - paused_at
        exact = 0.0 if exact < 0.0 else exact
        k, _, until = grid_index(exact)
        until += paused_at
        hint = v.hint
        n = len(g)
        sig = (v.workflow, hint.last_step, n, v.tool, hint.expected_s)
        score = memo.get((sig, k))
        p = 0.0 if hint.last_step else reuse_now.get(v.workflow)
        ttl = ttl_now.get((v.tool, used, hint.expected_s))
        if score is None or p is None or ttl is None:
            break
        size = n / max_size
        formula = (w_recency, max_idle, w_reuse * (1.0 - p),
                   w_size * (1.0 if size > 1.0 else size))
        if exact > ttl:  # expired: for good, keyed by its score alone
            key, rec = (1, -score), ((*sig, True), k, 1, formula, 2, paused_at, _INF, _INF)
        else:
            if not ttl >= 0.0:  # (no timed record: the general path)
                break
            t = _after(paused_at + ttl, _INF)
            until = t if t < until else until
            key, rec = (2, -score), ((*sig, False), k, 2, formula, 2, paused_at,
                                     _after(ttl, _INF), t)
        cls = classes.get(rec[0])
        if cls is None:
            break
        pushes.append((sid, key, g[0], n, until, (cls, *rec[1:], 1.0)))
    else:
        return finish(self, num_blocks, now, pushes)
    return _declined(self, num_blocks, now, state, token)


def _declined(self, num_blocks: int, now: float, state: tuple, token: tuple) -> list[int]:
    """The general path after this search made its search state: `_search_state` answers
    its first call in it with that state (`_state_made`) instead of making it again (with
    nothing changed since, the same answer, but a second loop over the marked sessions). In
    the bench's 1 ms reading, where every search of saga declines, that was about 70 of the
    170-290 instructions a block the path on cost over off; the rest, its keying of the marks
    before the one it declines on (which the general path keys again), stays (bench/
    RESULTS.md, "Where the excess over lru sits, by call, and saga's 1 ms regression")."""
    self.general_searches += 1
    self._state_made = (now, state, token)
    try:
        return _general(self, num_blocks, now)
    finally:
        self._state_made = None
