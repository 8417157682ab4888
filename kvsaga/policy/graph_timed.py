"""`graph`'s timed keys: how a paused session's loss rate is keyed for the index without a
call per session per search (`GroupedPolicy` with `search.py`'s timed records).

A paused session that is not queued, demoted or on its last step has a rate that depends
only on its class (workflow, tool, warm or cold, the hinted pause while it lasts) and on the
grid point of its elapsed pause (`GraphPolicy._predict_session`). `_timed_base` computes the
rate once per (class, grid point), shares it through `_memo`, and hands `search.py` a timed
record so the index re-keys the session at its next grid point or at the end of its hint;
`_formula` keeps, per class, the numbers `timed_keys.graph_rate` needs to evaluate the rate
at every grid point without Python (mode 4). Kept apart from graph.py because it is the
indexing of the loss, not the loss: `GraphPolicy._session_base` is what it must agree with
(tests/policy pin the keys against the unindexed path).
"""

from __future__ import annotations

import math

from kvsaga.policy.aeg import NO_TOOL
from kvsaga.policy.search import grid_index


class GraphTimedKeys:
    """`GraphPolicy`'s timed keys (see the module docstring); a mixin over its state."""

    def _timed_base(self, sid: str, group: list[int], now: float):
        """`_session_base` and, for a paused session that is not queued, demoted or on its
        last step, its timed record (search.py `_rekey`): its rate is then a function of
        its class (workflow, tool, warm, the hinted pause while it lasts) and of the grid
        point of its pause (`_predict_session`), shared through `_memo`, and its key that
        rate times its tail's rebuild cost."""
        v = self.views.get(sid)
        if (v is None or v.needed_now or v.hint.last_step or sid in self._deferred
                or sid in self._ready):
            return (*self._session_base(sid, group, now), None)
        t0 = v.paused_at
        d = now - t0
        k, _, hi = grid_index(0.0 if d < 0.0 else d)
        x = v.hint.expected_s
        hinted = x is not None and d < x  # else the graph's prediction (the hint is late)
        # (`is_warm` inline: `group` is the session's group; run per keyed session)
        warm = 2 * len(group) > self._ctx_blocks.get(sid, 0)
        sig = (v.workflow, v.tool, warm, x if hinted else None)
        base = self._memo.get((sig, k))
        if base is None:
            base = self._memo[sig, k] = self._session_base(sid, group, now)[0]
        until = t0 + hi  # (`_predict_session`'s deadline)
        if hinted:
            t = t0 + x
            until = t if t < until else until
            return base, until, (sig, k, 1, base, 0, t0, x, t, self.block_cost(self._pos[group[0]]))
        mult = self.block_cost(self._pos[group[0]])
        if self.class_formulas:  # unhinted: its class's rate at every grid point (mode 4)
            # (the memo's formula read here: `_formula` is a call only when it is new)
            f = self._memo.get(sig) or self._formula(sid, sig, v, now)
            return base, until, (sig, k, 1, (base, *f), 4, t0, math.inf, math.inf, mult)
        return base, until, (sig, k, 1, base, 0, t0, math.inf, math.inf, mult)

    def _formula(self, sid: str, sig: tuple, v, now: float) -> tuple[float, ...]:
        """The numbers `_predict_session` reads for an unhinted pause of class `sig` (mu,
        sigma, p0, admission wait, correction, min_wait_s, trust's hedge; timed_keys.py
        `graph_rate`), kept in `_memo` with the class keys (forgotten with them when the
        statistics change). The hedge is a number of its own, not folded into the
        correction: `_predict_session` multiplies, then divides, and the product of the
        two rounds differently."""
        f = self._memo.get(sig)
        if f is None:
            kind = NO_TOOL if v.tool is None else v.tool
            dist = self.graph.pause_dist(v.workflow, kind)
            corr = 1.0 if self.calib_prior is None else self.correction(v.workflow, v.tool)
            # `_predict_session(hedged=True)`
            hedge = 1.0 if self.trust is None else self.trust.factor(v.workflow, "paused")
            f = self._memo[sig] = (dist.mu, dist.sigma,
                                   self.graph.resume_share(v.workflow, kind),
                                   self._expected_wait(sid, now, False)[0], corr,
                                   self.min_wait_s, hedge)
        return f
