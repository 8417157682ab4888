"""Two pieces of a grouped policy's per-session and per-instance state.

- `_base` (search.py) holds a base for the sessions with cached blocks, and for the sessions
  marked since the last search: a session whose last cached block went leaves it at the next
  search, as it leaves the index (`refresh_marked`'s `bases`), however many sessions never
  end (a fleet of paused agents).
- The search flags (search.py `SEARCH_FLAGS`) are copied onto each instance at construction,
  without overwriting a value the instance set first (a subclass before `super().__init__()`).
"""

from __future__ import annotations

import pytest

from kvsaga.policy import make_policy
from kvsaga.policy.search import SEARCH_FLAGS
from kvsaga.policy.ttl import TTLPolicy
from tests.policy.helpers import make, run_step, tokens
from tests.policy.test_refresh_marked import _indexes, _state, _two_sessions


def _gone_in_base(p) -> set[str]:
    return set(p._base) - set(p.groups)


@pytest.mark.parametrize("name", ["ttl", "saga", "graph"])
def test_base_does_not_keep_gone_sessions(name):
    """Many sessions that never end in a small pool: most lose their cached blocks to later
    ones. After each search, `_base` names only sessions with cached blocks or marked since
    (before the fix: 205 entries here, 190 of them gone). Each core (conftest)."""
    m = make(name, num_blocks=32)
    p = m.policy
    for i in range(300):
        run_step(m, f"s{i}", tokens(1000 * i, 8), now=float(i))
        assert _gone_in_base(p) <= p._dirty, i
    assert len(p.views) == 300  # none ended: only the fix's drops keep `_base` small
    assert len(p._base) <= len(p.groups) + len(p._dirty) <= 32
    m.policy.choose_victims(1, 301.0)
    assert not _gone_in_base(p)


def test_refresh_marked_drops_gone_sessions_from_bases_alike():
    """Both index twins: `bases` loses exactly the marks `groups` does not hold (an absent
    one is skipped), keeps the others, and keeps everything when the call is refused."""
    for index in _indexes():
        _two_sessions(index)
        bases = {"a": 1, "b": 2, "c": 3}
        index.refresh_marked(0.1, ["a", "b", "z"], [], 4, 100, {"a": [7]}, bases)
        assert bases == {"a": 1, "c": 3}, type(index).__name__
        index.restore()  # (the runs the call took aside go back)
        refused = {"a": 1}
        before = _state(index)
        with pytest.raises(TypeError, match="key must be a tuple"):
            index.refresh_marked(0.2, ["a"], [("s", (2, "x"), 3, 2, 1.0, None)], 4, 100, {},
                                 refused)
        assert refused == {"a": 1} and _state(index) == before, type(index).__name__
        with pytest.raises(TypeError, match="bases must be a dict or None"):
            index.refresh_marked(0.2, ["a"], [], 4, 100, {}, ["a"])
        assert _state(index) == before, type(index).__name__


class _NoClassKeys(TTLPolicy):
    """Sets an instance flag before the base class's constructor runs."""

    def __init__(self, **kw) -> None:
        self.class_keys = False
        super().__init__(**kw)


def test_an_instance_flag_set_before_init_is_kept():
    p = _NoClassKeys()
    assert p.class_keys is False and TTLPolicy.class_keys is True
    plain = make_policy("ttl")
    for flag in SEARCH_FLAGS:  # every flag is the instance's own, the class's value
        assert flag in vars(plain) and getattr(plain, flag) == getattr(TTLPolicy, flag)
        if flag != "class_keys":
            assert getattr(p, flag) == getattr(TTLPolicy, flag), flag
    # The flag is the one the search reads: without class keys, no class is ever given.
    classes = []
    for policy in (p, plain):
        m = make(policy, num_blocks=32)
        for i in range(40):
            run_step(m, f"s{i}", tokens(1000 * i, 8), now=float(i), tool="search")
        classes.append(len(policy._classes))
    assert classes[0] == 0 < classes[1]
