"""Eviction policies, chosen by name.

| name         | rule (one line)                                                              |
|--------------|------------------------------------------------------------------------------|
| `lru`        | oldest evictable block first (vLLM-like baseline)                            |
| `ttl`        | ski-rental TTL per paused session, priced by learned tool pause times        |
| `graph`      | lowest expected loss P(reuse) x rebuild / time-to-reuse, from the AEG        |
| `saga`       | SAGA's 0.3 recency + 0.5 (1 - P_reuse) + 0.2 size, with p95 tool TTLs        |
| `belady`     | farthest next use first (offline; needs a `FutureOracle`)                    |
| `oracle-ttl` | `ttl` with the true resume times (offline; needs a `FutureOracle`)           |
| `adaptive`   | graph or ttl, whichever's own shadow cache rebuilt least lately              |

Policies with `needs_oracle = True` take `oracle=` and are for trace replay only.
"""

from __future__ import annotations

import inspect

from kvsaga.policy.adaptive import AdaptivePolicy
from kvsaga.policy.base import Action, BlockView, EvictionPolicy
from kvsaga.policy.belady import BeladyPolicy, ClairvoyantTTLPolicy, FutureOracle
from kvsaga.policy.cost import CostModel, PrefillCost
from kvsaga.policy.graph import GraphPolicy
from kvsaga.policy.lru import LRUPolicy
from kvsaga.policy.saga import SagaPolicy
from kvsaga.policy.ttl import TTLPolicy
from kvsaga.session import PauseHint

# The policy that engine and server use when none is named: the one that `python
# bench/policies.py --tune --smooth` picks on the fit seeds by its tune rule (least worst
# ratio to the best of lru, saga and ttl over the pressured cases, then fewest cases above
# 1.0x of it, then least recomputation), each case judged by its mean over five pool sizes
# within +-2% (bench/policies_smooth.py; bench/RESULTS.md, "Eviction policies: tuning,
# smoothed over pool sizes": ttl since the sixteenth session, graph per pool size), then
# judged on fresh seeds and perturbed traces
# (tests/bench/test_policies.py checks that the two agree).
DEFAULT_POLICY = "ttl"

POLICIES: dict[str, type[EvictionPolicy]] = {
    cls.name: cls
    for cls in (LRUPolicy, TTLPolicy, GraphPolicy, SagaPolicy, AdaptivePolicy, BeladyPolicy,
                ClairvoyantTTLPolicy)
}


def make_policy(name: str, *, cost: CostModel | None = None, **kwargs) -> EvictionPolicy:
    """Build a policy by name.

    Args:
        cost: what rebuilding and reloading KV cost, for the policies that price their
            decisions (the others ignore it); None leaves them their default.
    Raises:
        ValueError: unknown name (the message lists the known ones), or an oracle policy
            built without `oracle=`.
    """
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None
    if cost is not None and "cost" in inspect.signature(cls).parameters:
        kwargs["cost"] = cost
    return cls(**kwargs)


__all__ = [
    "Action",
    "AdaptivePolicy",
    "BeladyPolicy",
    "BlockView",
    "ClairvoyantTTLPolicy",
    "CostModel",
    "DEFAULT_POLICY",
    "EvictionPolicy",
    "FutureOracle",
    "GraphPolicy",
    "LRUPolicy",
    "PauseHint",
    "POLICIES",
    "PrefillCost",
    "SagaPolicy",
    "TTLPolicy",
    "make_policy",
]
