"""Re-keying from class keys (search.py `_rekey`, session_heap.py's timed records) names
the victims the policies' Python keying names: every indexed policy, and adaptive's
experts, run side by side with and without it on the recorded walks and on the eviction
bench's shape, on both indexes."""

from __future__ import annotations

import pytest

from kvsaga.policy import make_policy
from tests.policy.helpers import bench_shape_walk, make
from tests.policy.victim_record import WORKLOADS, seeded_walk

# Builds its heaps and policies itself (tests/policy/conftest.py): runs once, not once a core.
READS_NO_CORE = True

INDEXED = ("ttl", "saga", "graph", "adaptive")
TOOLS = ("search", "edit", "test", "shell", "browse")


def _indexed_parts(policy) -> list:
    return [p for p in (getattr(e, "policy", e) for e in getattr(policy, "experts", [policy]))
            if hasattr(p, "_timed_base")]


class _NoMemo(dict):
    """A `_memo` that keeps nothing: every key is computed afresh."""

    def __setitem__(self, key, value) -> None:
        pass


def _watch(policy, timed: bool) -> list[int]:
    """Count the sessions the policy keys in Python (one counter for all its parts);
    without `timed`, key every one from scratch (no timed record, no memo: the
    reference)."""
    keyed = [0]
    for p in _indexed_parts(policy):
        name = "_timed_base" if timed else "_session_base"
        keying = getattr(p, name)

        def counted(sid, g, now, keying=keying):
            keyed[0] += 1
            return keying(sid, g, now)

        setattr(p, name, counted)
        if not timed:
            p.class_keys = False
            p._memo = _NoMemo()
    return keyed


def _walk(name: str, workload: str, timed: bool, core: str) -> tuple[list, int]:
    m = make(make_policy(name), num_blocks=64, core=core)
    keyed = _watch(m.policy, timed)
    out: list = []
    choose = m.policy.choose_victims
    m.policy.choose_victims = lambda n, now: out.append(choose(n, now)) or out[-1]
    seeded_walk(m, workload, 5, 1500)
    m.check_integrity()
    return out, keyed[0]


@pytest.mark.parametrize("core", ["python", "cpp"])
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
@pytest.mark.parametrize("name", INDEXED)
def test_class_keys_name_the_victims_python_keying_names(name, workload, core):
    ref, keyed_ref = _walk(name, workload, False, core)
    got, keyed = _walk(name, workload, True, core)
    assert got == ref
    assert keyed <= keyed_ref


def _bench_shape(name: str, timed: bool, core: str, paused: int = 400) -> tuple[list, int]:
    """bench/eviction_scaling.py's shape, small: sessions paused 1 ms apart on tools, then
    new sessions allocating 1 ms apart under eviction while paused ones resume (so that
    learning forgets the class keys) or get pause hints."""
    per = 4
    m = make(make_policy(name), num_blocks=paused * per // 2, core=core)
    keyed = _watch(m.policy, timed)
    out: list = []
    choose = m.policy.choose_victims
    m.policy.choose_victims = lambda n, now: out.append(choose(n, now)) or out[-1]
    for _ in bench_shape_walk(m, paused, extra=120, every_other=False):
        pass
    m.check_integrity()
    return out, keyed[0]


@pytest.mark.parametrize("core", ["python", "cpp"])
@pytest.mark.parametrize("name", INDEXED)
def test_class_keys_on_the_bench_shape_name_the_same_victims_and_key_less_in_python(name,
                                                                                    core):
    ref, keyed_ref = _bench_shape(name, False, core)
    got, keyed = _bench_shape(name, True, core)
    assert got == ref
    # Time-driven re-keys come from the class keys, Python keys fewer sessions (how many
    # fewer depends on how often learning forgets the class keys).
    assert keyed < keyed_ref
