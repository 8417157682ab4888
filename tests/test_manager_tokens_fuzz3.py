"""Manager arguments of the wrong type.

Token ids of integer types other than int (numpy's, as a tokenizer's arrays hold them) are
stored as plain ints, so both cores go on serving the session. The C++ core used to store
them as given and raise TypeError ('an integer is required') at every later call that read
the context: the session could never decode again. A last_step that is not a bool is
refused (a truthy "no" ended the session)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsaga import InvalidRequest, KVCacheManager, KVSpec
from kvsaga._core import cpp_available

CORES = ["python", pytest.param("cpp", marks=pytest.mark.skipif(
    not cpp_available(), reason="the C++ core is not built"))]


def _manager(core: str) -> KVCacheManager:
    return KVCacheManager(KVSpec(1, 1, 4, block_size=4), 16, core=core, clock=lambda: 0.0)


@pytest.mark.parametrize("core", CORES)
def test_numpy_prompt_then_decode_then_resume(core):
    m = _manager(core)
    prompt = list(np.arange(10, 19))  # np.int64 items
    m.begin_step("a", prompt)
    m.allocate_slots("a", len(prompt))
    m.append_tokens("a", [np.int32(7)])
    m.allocate_slots("a", 1)
    m.decode_step(["a"], [np.uint16(8)])
    assert m.session("a").token_ids == [*range(10, 19), 7, 8]
    assert all(type(t) is int for t in m.session("a").token_ids)
    m.finish_step("a")
    m.check_integrity()
    st_ = m.begin_step("a", np.arange(10, 19).tolist() + [7, 8, 9])
    assert st_.num_cached_tokens == 11
    m.check_integrity()


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("kind", [np.int64, np.uint32])
def test_numpy_prompt_lookup_answers_as_the_plain_prompt(core, kind):
    """lookup() hashes the prompt's blocks past the session's known ones: the C++ hasher
    read each id as an exact int and raised TypeError ('an integer is required') on numpy's,
    which begin_step takes on both cores; it reads them through __index__, as array("I")."""
    m = _manager(core)
    m.begin_step("a", list(range(1, 10)))
    m.allocate_slots("a", 9)
    m.finish_step("a")
    plain = list(range(1, 11))
    for sid in ("b", "a"):  # new (every block hashed here) and known (its own hashes)
        assert m.lookup(sid, [kind(t) for t in plain]) == m.lookup(sid, plain)
    assert m.lookup("b", plain).num_cached_tokens == 8
    with pytest.raises(InvalidRequest, match=r"token_ids\[1\] must be an int"):
        m.lookup("b", [kind(1), np.True_, *plain[2:]])
    assert m.begin_step("b", [kind(t) for t in plain]).num_cached_tokens == 8
    m.check_integrity()


@pytest.mark.parametrize("core", CORES)
def test_lookup_takes_a_sequence_without_slices(core):
    """A deque is a sequence begin_step takes; lookup sliced it (a raw TypeError)."""
    from collections import deque

    m = _manager(core)
    m.begin_step("a", list(range(1, 10)))
    m.allocate_slots("a", 9)
    m.finish_step("a")
    for sid in ("b", "a"):
        assert m.lookup(sid, deque(range(1, 11))) == m.lookup(sid, list(range(1, 11)))
    assert m.begin_step("b", deque(range(1, 11))).num_cached_tokens == 8


_ids = st.lists(st.integers(0, 5), min_size=1, max_size=12)
_kind = st.sampled_from([int, np.int64, np.int32, np.uint8])


@pytest.mark.parametrize("core", CORES)
@settings(max_examples=40, deadline=None, derandomize=True)
@given(steps=st.lists(st.tuples(_ids, _kind, st.lists(_kind, min_size=1, max_size=3)),
                      min_size=1, max_size=4))
def test_mixed_integer_types_give_the_plain_int_run(core, steps):
    """The same steps with ints of any type and with plain ints leave equal books."""
    plain, mixed = _manager(core), _manager(core)
    context: list[int] = []
    for ids, kind, decode_kinds in steps:
        context += ids
        for m, conv, dconv in ((plain, int, [int] * len(decode_kinds)),
                               (mixed, kind, decode_kinds)):
            m.begin_step("s", [conv(t) for t in context])
            m.allocate_slots("s", len(context) - m.num_computed_tokens("s"))
            for i, d in enumerate(dconv):
                m.decode_step(["s"], [d(i)])
            m.finish_step("s")
            m.check_integrity()
        context += list(range(len(decode_kinds)))
        assert mixed.session("s").token_ids == plain.session("s").token_ids == context
        assert mixed.stats() == plain.stats()


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("call", ["finish_step", "pause_hint"])
@pytest.mark.parametrize("bad", ["no", 1, 0, None, [True]])
def test_last_step_that_is_not_a_bool_is_refused(core, call, bad):
    """`finish_step(sid, last_step="no")` ended the session (a truthy "no"), and 0 or None
    kept it, silently; either way the caller's intent is a guess. It is an InvalidRequest
    naming last_step, and the session is as it was."""
    from tests.test_error_atomicity_stateful import full_state

    m = _manager(core)
    m.begin_step("a", list(range(9)))
    m.allocate_slots("a", 9)
    if call == "pause_hint":
        m.finish_step("a")
    before = full_state(m)
    with pytest.raises(InvalidRequest, match="last_step must be True or False"):
        getattr(m, call)("a", last_step=bad)
    assert full_state(m) == before
    getattr(m, call)("a", last_step=True)
    assert "a" not in m.sessions
    m.check_integrity()


@pytest.mark.parametrize("core", CORES)
def test_lookup_reads_a_sliceable_prompt_by_slices(core):
    """The simulator's prompts are prefix views that slice without copying, and the
    scheduler looks up every waiting step at every step: lookup read any prompt that is not
    a list or tuple item by item into a list (3-4x slower simulations)."""
    from collections.abc import Sequence

    class Counted(Sequence):
        def __init__(self, ids):
            self.ids, self.items = ids, 0

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            if not isinstance(i, slice):
                self.items += 1
            return self.ids[i]

        def __iter__(self):
            self.items += len(self.ids)
            return iter(self.ids)

    m = _manager(core)
    m.begin_step("a", list(range(1, 10)))
    m.allocate_slots("a", 9)
    m.finish_step("a")
    plain = list(range(1, 65))
    for sid in ("b", "a"):  # "a" reads its retained tail's next id, one item
        prompt = Counted(plain)
        assert m.lookup(sid, prompt) == m.lookup(sid, plain)
        assert prompt.items <= 1
