"""How much `graph` should trust its own time-to-reuse predictions, learned from its victims.

`graph` prices a session's blocks by the loss rate P(reuse) * rebuild / T, where T is the
Execution Graph's predicted time until the session's next step (pause residual, admission
wait, demotion residual). The rate is 1 / T only if T is known. When T is uncertain, with
log(observed / predicted) ~ N(mu, s^2), the expected rate is

    E[1 / T_observed] = exp(-mu + s^2 / 2) / T,

so a prediction that misses, in either direction, makes the blocks *dearer* to drop than
its point value says (Jensen: a session that may be back in a second costs more than one
surely back at the mean). On the fit seeds (bench/RESULTS.md, "Why graph loses where it
loses") graph's forecasts for the sessions it evicted from missed by e^1 to e^4 both ways
for demoted and queued sessions, whose blocks ttl and saga keep, and graph, which priced
them as if its forecast were exact, evicted them and rebuilt them.

So graph measures, on its own victims, per (workflow, state) with state one of `paused`,
`queued`, `demoted`: when it evicts from a session it notes its forecast, and when the
session's next step starts it learns log(observed / forecast). Its rate is multiplied by
`factor` = exp(-mu + s^2 / 2) from those errors, each moment shrunk towards 0 (no error) by
`prior` pseudo-observations: no data, no change; a state graph forecasts well stays as it
was; one it forecasts badly is protected from its own guesses, which moves graph towards
ttl's and saga's ranking (keep what may be needed) exactly where its forecasts fail.

Also kept, for the diagnosis: the same errors of the recency forecast (the time the session
has been idle, LRU's Lindy forecast), to say whether recency would have forecast better.
"""

from __future__ import annotations

import math

from kvsaga._validate import check_bool, check_number, is_number
from kvsaga.policy.bounded import TRACKED_WORKFLOWS, touch

STATES = ("paused", "queued", "demoted")


def flag(name: str, value: object) -> bool:
    """An on/off parameter: a bool, or the number 0 or 1 (what a bench spec such as
    `graph[trust=1]` passes). Anything else, a string above all (`"false"` is truthy), is
    refused, naming the parameter."""
    if is_number(value) and value in (0, 1):
        value = bool(value)
    return check_bool(name, value)


class PredictionTrust:
    """Per (workflow, state): log errors of graph's forecasts of the time to reuse of the
    sessions it evicted from, and the factor on their loss rate those errors call for.

    Args:
        prior: pseudo-observations of no error that each moment starts from.
        clip: one log error counts at most this much (e^5 = 148x).
        floor_s: forecasts and observations below this many seconds count as this.
    """

    def __init__(self, prior: float, clip: float = 5.0, floor_s: float = 1e-3) -> None:
        # (unchecked, floor_s=0 made `add` fail on log(0) after creating its record, and a
        # clip <= 0 or NaN inverted or poisoned the clamp)
        for name, x in (("prior", prior), ("clip", clip), ("floor_s", floor_s)):
            check_number(name, x, lambda v: v > 0, "> 0")
        self.prior = prior
        self.clip = clip
        self.floor_s = floor_s
        # (workflow, state) -> [n, sum e, sum e^2 (graph), sum e^2 (recency)], for the
        # TRACKED_WORKFLOWS most recently updated workflows' states (bounded.py: clients
        # name workflows freely); a forgotten key reads as no evidence (factor 1)
        self.errors: dict[tuple[str, str], list[float]] = {}
        self.version = 0  # counts the changes of any factor

    def _log_err(self, observed_s: float, forecast_s: float) -> float:
        lo = self.floor_s
        r = math.log(max(observed_s, lo) / max(forecast_s, lo))
        return min(max(r, -self.clip), self.clip)

    def add(self, workflow: str, state: str, observed_s: float, graph_s: float,
            recency_s: float) -> None:
        """A session graph evicted from started its next step `observed_s` after the
        eviction; `graph_s` and `recency_s` were the two forecasts then."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        for name, x in (("observed_s", observed_s), ("graph_s", graph_s),
                        ("recency_s", recency_s)):  # (an infinite one has no log error)
            if not (is_number(x) and 0 <= x < math.inf):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {x!r} "
                                 f"(observed_s, graph_s, recency_s: {observed_s!r}, "
                                 f"{graph_s!r}, {recency_s!r})")
        e = touch(self.errors, (workflow, state), lambda: [0, 0.0, 0.0, 0.0],
                  TRACKED_WORKFLOWS * len(STATES))
        g = self._log_err(observed_s, graph_s)
        e[0] += 1
        e[1] += g
        e[2] += g * g
        e[3] += self._log_err(observed_s, recency_s) ** 2
        self.version += 1

    def moments(self, workflow: str, state: str) -> tuple[float, float]:
        """(mu, s^2) of graph's log errors, shrunk towards (0, 0) by `prior`."""
        e = self.errors.get((workflow, state))
        if e is None:
            return 0.0, 0.0
        n = e[0] + self.prior
        mu, m2 = e[1] / n, e[2] / n
        return mu, max(m2 - mu * mu, 0.0)

    def factor(self, workflow: str, state: str) -> float:
        """exp(-mu + s^2 / 2): the expected loss rate over the point forecast's (1 with no
        evidence), within e^-clip..e^clip."""
        mu, s2 = self.moments(workflow, state)
        x = -mu + 0.5 * s2
        return math.exp(min(max(x, -self.clip), self.clip))
