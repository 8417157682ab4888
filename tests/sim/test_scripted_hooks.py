"""`ScriptedPolicy(inner=P)` hands P every hook of `EvictionPolicy` the manager, the pool or
the scheduler sends, but the three it answers itself: the fed search's bound holds only if
P's graph learns on each branch what it would on a run of P (kvsaga/sim/exhaustive.py).
Before, `blocks_disowned` and `resume_withdrawn` stopped at the scripted policy. A hook added
to the base class fails here until it is forwarded (or named below with its reason)."""

from __future__ import annotations

import inspect

import pytest

from kvsaga.policy.base import EvictionPolicy
from kvsaga.session import PauseHint
from kvsaga.sim.exhaustive import ScriptedPolicy

# Answered by the scripted policy itself, never the inner one's: the victims come from the
# script, every victim is discarded, and the search has no host tier to prefetch into.
ANSWERED = {"choose_victims", "action", "prefetch_candidates"}


def _hooks() -> list[str]:
    return sorted(n for n, f in vars(EvictionPolicy).items()
                  if callable(f) and not n.startswith("_") and n not in ANSWERED)


class _Recorder(EvictionPolicy):
    """Records the name of every hook it is sent."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __getattribute__(self, name):
        if name in _HOOKS:
            self_calls = object.__getattribute__(self, "calls")
            real = object.__getattribute__(self, name)

            def record(*args, **kw):
                self_calls.append(name)
                return real(*args, **kw)

            return record
        return object.__getattribute__(self, name)

    def block_cached(self, block_id: int) -> None:
        pass

    def block_uncached(self, block_id: int) -> None:
        pass


_HOOKS = frozenset(_hooks())


def _args(name: str) -> list:
    """Placeholder arguments for base hook `name`, by parameter name."""
    values = {"session": object(), "now": 1.0, "hint": PauseHint(None, None, False),
              "block_id": 0, "block_ids": [0], "deferred": True, "rank": 0, "blocks": 1,
              "view": object()}
    params = list(inspect.signature(getattr(EvictionPolicy, name)).parameters)[1:]
    return [values[p] for p in params]


def test_the_hook_list_is_the_base_class_one():
    assert {"blocks_disowned", "resume_withdrawn", "step_started", "tick"} <= _HOOKS


@pytest.mark.parametrize("name", sorted(_HOOKS))
def test_every_base_hook_reaches_the_inner_policy(name):
    inner = _Recorder()
    scripted = ScriptedPolicy([], inner=inner)
    getattr(scripted, name)(*_args(name))
    assert inner.calls[:1] == [name]  # (the default `session_forgotten` then ends it)
