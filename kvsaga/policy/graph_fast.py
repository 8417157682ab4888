"""`graph`'s usual victim search in one Python function (issue 11: eviction cost), as
ttl_fast.py is ttl's (its docstring says why: a cold search pays each distinct Python
function it runs). Between two steps that change no statistics, graph's search runs
`choose_victims` twice (its own and `VictimSearch`'s), `_index_victims`, `_keys_token`,
`_keys_nonincreasing`, `_keys`, `_timed_base`, `_entry_key` and `block_cost`, each on its
shortest branch: the token is the last search's, the rebuild costs rise with position, the
sessions marked since are paused unhinted ones whose class rate and formula `_memo` holds.
`choose_victims` below checks exactly those conditions and then makes that search's pushes
inline and ends it as `_index_victims` does (fast_search.py `finish`); otherwise it changes
nothing and runs the general path. Counted (`fast_searches`, `general_searches`;
tests/policy/test_fast_search.py).
"""

from __future__ import annotations

import math

from kvsaga.policy import fast_search
from kvsaga.policy.fast_search import finish
from kvsaga.policy.search import VictimSearch, grid_index

_general = VictimSearch.choose_victims

# What the search below inlines: a subclass that overrides one takes the general path.
READS = ("_timed_base", "_session_base", "_entry_key", "block_cost", "_keys_token",
         "_keys_nonincreasing", "_keys", "_index_victims", "_formula", "_global_state",
         "_prepare", "_search_state")


def enable(policy, owner: type) -> None:
    """The fast path's switch and counts on `policy` (fast_search.py `enable`)."""
    fast_search.enable(policy, owner, READS)


_INF = math.inf


def search(self, num_blocks: int, now: float, runs: bool = False) -> list[int] | None:
    """`VictimSearch.choose_victims` of a `GraphPolicy`: its usual search inline, else the
    general path (with `runs`: ttl_fast.py `choose_victims`)."""
    if (not self._fast or num_blocks <= 0 or len(self.dead) or len(self.plain)
            or not (self.indexed and self.class_keys and self.class_formulas
                    and self._costs_rise) or self._global is not None):
        self.general_searches += 1
        return _general(self, num_blocks, now, runs)
    # `_keys_token`, compared with the last search's without building it
    token, trust = self._token, self.trust
    learned, at = self._learned, self._learned_at_rebuild
    if (type(token) is not tuple or token[0] != self.graph.version
            or token[1] != self._learned_waits
            or token[2] != (0 if trust is None else trust.version)
            or (learned != at and learned - at > self.relearn_share * len(self.groups))):
        self.general_searches += 1
        return _general(self, num_blocks, now, runs)
    # The pushes, as `_keys` with `_timed_base` and `_entry_key` gives them, when each
    # marked session is paused, unhinted, not demoted or ready, of a class whose rate at its
    # grid point, formula and id are known, its tail's rebuild cost priced (else: general).
    groups, views, memo, classes, pos = (self.groups, self.views, self._memo,
                                         self._classes, self._pos)
    deferred, ready, ctx, costs = self._deferred, self._ready, self._ctx_blocks, \
        self._block_costs
    pushes = []
    for sid in self._dirty:
        g = groups.get(sid)
        if g is None:  # no cached block left: the index drops it
            continue
        v = views.get(sid)
        if (v is None or v.needed_now or v.hint.last_step or v.hint.expected_s is not None
                or sid in deferred or sid in ready):
            break
        t0 = v.paused_at
        d = now - t0
        k, _, hi = grid_index(0.0 if d < 0.0 else d)
        sig = (v.workflow, v.tool, 2 * len(g) > ctx.get(sid, 0), None)
        base = memo.get((sig, k))
        f = memo.get(sig)
        cls = classes.get(sig)
        b = g[0]
        p = pos[b]
        if base is None or f is None or cls is None or p >= len(costs):
            break
        mult = costs[p]
        pushes.append((sid, (1, base * mult), b, len(g), t0 + hi,
                       (cls, k, 1, (base, *f), 4, t0, _INF, _INF, mult)))
    else:
        return finish(self, num_blocks, now, pushes, runs)
    self.general_searches += 1
    return _general(self, num_blocks, now, runs)
