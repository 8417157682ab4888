"""`gittins`: `graph` with a paused session priced by its pause's Gittins index.

`graph` prices a paused session's blocks by P(reuse) * rebuild / T, with T a point forecast
of the time until its next step (the median residual pause plus the admission wait). That
rate is right when the session will surely be back at T. A tool pause is not a point: it is
a distribution (a log-normal with a share that never comes back, `resume_window`), and for a
wide one, a human in the loop above all (assistant: p50 30 s, p95 600 s), most of its
chance of coming back soon sits early, while the median or mean sits late.

Keeping a block is a decision that can be revised: hold it for a while, and drop it if the
session has not come back by then. The best such plan for one session (hold for `s` more
seconds, then give up) returns, per second of pool held,

    G(e) = max over s > 0 of  P(back within s | paused e so far) * rebuild
                              / E[seconds held, min(time until back, s)]

which is the Gittins index of the session's pause for this rent-or-buy problem (the rate of
the optimal stopping plan; ttl's break-even rule asks the same question with one fixed `s`,
the TTL). Ranking blocks by the lowest index first evicts the contexts whose best hold-plan
pays least. When the pause's hazard rises (a tool that takes about as long each time), the
best plan holds to the end and G = P / E[time until back], graph's own form; when the hazard
falls (a long tail: the longer a pause has lasted, the longer it is likely to last), the best
plan is short and G follows the chance of an early return, which ranks like recency within a
class and across classes prices a wide pause above its median's rate.

Why it was tried (seventeenth and nineteenth sessions, fit seeds only; bench/RESULTS.md,
"Eviction policies: decisions or cascade" and the nineteenth session's section): graph's
worst smoothed fit case is assistant seed 101 at 30% (1.40x of lru), where lru's ranking
beats graph's under either admission (0.345M against 0.621M recomputed tokens under graph's
admission) and lru's victims' sessions come back later than graph's (median 4.30 s against
2.54 s for demoted, 1.96 s against 1.73 s for paused sessions: `python bench/policies.py
--regret --traces assistant --seeds 101 --fractions 0.3 --policies lru,ttl,graph
--no-write`).

Outcome (nineteenth session, fit seeds; bench/RESULTS.md "Eviction policies: graph with the
pause's Gittins index"): worse than `graph` by the tune rule over the whole fit set (smoothed
worst 1.41x against 1.40x, 30 cases above the best baseline against 25), moving single
cases by up to a third either way, and it fails issue 10's AFS veto (the two-tenant mix at
50% 1.44 -> 1.51), so it is opt-in; assistant 101 at 30% did not move (1.41x).

What changes against `graph`: only a paused session whose pause is unhinted (or whose hint
is late), not demoted and not queued: its rate is G (with the admission wait W added to the
time until back: held min(W + pause, s + W)), divided by graph's own self-correction factor
(a time scale), times P(reuse) already inside G. Queued, demoted, hinted, ended and plain
blocks are priced as graph prices them (for a point forecast the index is graph's rate).
Nothing here is fitted: the horizons s are a fixed geometric grid (`HORIZONS`) and a
golden-section refinement around its best point (`REFINE`), which find the maximum of the
smooth curve to well under a percent (tests/policy/test_gittins.py).
"""

from __future__ import annotations

import math

from kvsaga.policy.aeg import NO_TOOL
from kvsaga.policy.graph import GraphPolicy
from kvsaga.policy.lognormal import resume_window

# Hold horizons s (seconds) over which the index is first maximized: 1 ms to about 12 days
# in steps of 2^(1/2); the best of them is then refined between its two neighbours
# (`REFINE` golden-section steps on log s).
HORIZONS = tuple(1e-3 * 2.0 ** (j / 2) for j in range(61))
REFINE = 12
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def gittins_rate(dist, p0: float, elapsed: float, wait: float) -> float:
    """max over s > 0 of P(back within s | paused `elapsed`) / (wait + E[min(time until
    back, s)]): the Gittins index per unit rebuild of a pause drawn from `dist` (a
    `LogNormalDist`) under the cure model (a share `p0` comes back at all), with `wait`
    seconds of admission between its return and its blocks' reuse (0 for none). The
    maximum is searched on `HORIZONS`, then refined around the best of them."""

    def ratio(s: float) -> float:
        p, held = resume_window(dist, p0, elapsed, s)
        d = wait + held
        return p / d if d > 0.0 else 0.0

    rates = [ratio(s) for s in HORIZONS]
    j = max(range(len(rates)), key=rates.__getitem__)
    best = rates[j]
    lo = math.log(HORIZONS[j - 1] if j > 0 else HORIZONS[0] / 2.0)
    hi = math.log(HORIZONS[j + 1] if j + 1 < len(HORIZONS) else HORIZONS[-1] * 2.0)
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = ratio(math.exp(a)), ratio(math.exp(b))
    for _ in range(REFINE):
        if fa >= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = ratio(math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = ratio(math.exp(b))
    return max(best, fa, fb)


class GittinsGraphPolicy(GraphPolicy):
    """`graph` whose unhinted paused sessions are priced by their pause's Gittins index
    (module docstring). Its arguments are graph's."""

    name = "gittins"
    # The victim index re-keys a paused session from its class's rate at its grid point (the
    # table, computed here in Python), not from graph's closed form (session_heap.py mode 4).
    class_formulas = False

    def _session_base(self, sid: str, group: list[int], now: float) -> tuple[float, float]:
        return self._rate(sid, now, not self.indexed)

    def _rate(self, sid: str, now: float, exact: bool) -> tuple[float, float]:
        """(The rate a session's blocks are keyed by, the time by which to ask again), with
        times read exactly or on the grid (`elapsed_grid`)."""
        v = self.views.get(sid)
        x = None if v is None else v.hint.expected_s
        if (v is None or v.running or v.imminent or v.hint.last_step or sid in self._deferred
                or (x is not None and now - v.paused_at < x)):  # (a hint wins while it lasts)
            p, wait, until = self._graph_time(sid, now, exact, True)
            return p / wait, until
        e, until = self._since(v.paused_at, now, exact)
        wait, until_w = self._expected_wait(sid, now, exact)
        until = until_w if until_w < until else until
        kind = NO_TOOL if v.tool is None else v.tool
        rate = gittins_rate(self.graph.pause_dist(v.workflow, kind),
                            self.graph.resume_share(v.workflow, kind), e, wait)
        if self.calib_prior is not None:  # graph's correction scales time: the rate by 1/c
            rate /= self.correction(v.workflow, v.tool)
        if self.trust is not None:
            rate *= self.trust.factor(v.workflow, "paused")
        return rate, until

    def index_rate(self, session_id: str, now: float) -> float:
        """The rate a session's blocks are keyed by now, read exactly (per second of
        rebuild): the Gittins index for an unhinted paused session, graph's rate else."""
        return self._rate(session_id, now, True)[0]
