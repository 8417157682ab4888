"""Bool token ids are refused at every manager entry that takes token ids.

`True` is an int equal to 1 to Python, to `array` and to the C++ core's reader, so a prompt
of bools (a mask passed for the ids, numpy's bool arrays turned into lists) opened a session
whose context was 1s and 0s. Each entry now raises the InvalidRequest it raises for any bad
id, naming the argument, the index, the value and what was expected, on either core, and
changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsaga import InvalidRequest, KVCacheManager, KVSpec
from kvsaga._core import cpp_available
from tests.test_error_atomicity_stateful import full_state

CORES = ["python", pytest.param("cpp", marks=pytest.mark.skipif(
    not cpp_available(), reason="the C++ core is not built"))]
BS = 4
BOOLS = [True, False, np.True_, np.False_]


def _manager(core: str, host: int = 0) -> KVCacheManager:
    return KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 16, core=core, clock=lambda: 0.0,
                          num_host_blocks=host)


def _paused(core: str, host: int = 0) -> KVCacheManager:
    """A manager with session "a" paused on context 0..9 and "r" running on 20..28."""
    m = _manager(core, host)
    m.begin_step("a", list(range(10)))
    m.allocate_slots("a", 10)
    m.finish_step("a")
    m.begin_step("r", list(range(20, 29)))
    m.allocate_slots("r", 9)
    return m


def _refused(m: KVCacheManager, call, index: int, value) -> str:
    """`call()` raises the bad-id InvalidRequest naming `index` and `value`, and the
    manager is as it was; returns the message."""
    before = full_state(m)
    with pytest.raises(InvalidRequest) as e:
        call()
    msg = str(e.value)
    assert msg == (f"token_ids[{index}] must be an int in [0, 2^32), got {value!r} "
                   "(a bool, not a token id)")
    assert full_state(m) == before
    m.check_integrity()
    return msg


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("bad", BOOLS, ids=repr)
def test_every_entry_refuses_a_bool_id(core, bad):
    m = _paused(core)
    prompt = [*range(10), 10, 11, bad, 13]
    _refused(m, lambda: m.begin_step("new", [5, bad, 7]), 1, bad)
    _refused(m, lambda: m.begin_step("new", (bad,)), 0, bad)
    _refused(m, lambda: m.begin_step("a", prompt), 12, bad)  # resumed: past its context
    _refused(m, lambda: m.append_tokens("r", [30, bad]), 1, bad)
    _refused(m, lambda: m.decode_step(["r"], [bad]), 0, bad)
    # lookup checks the ids it hashes: a new session's first block, the resumed prompt's
    # block past its context (the index is the prompt's, not the checked slice's).
    _refused(m, lambda: m.lookup("new", [1, 2, bad, 4, 5]), 2, bad)
    _refused(m, lambda: m.lookup("a", [*range(10), bad, 11, 12, 13, 14]), 10, bad)
    _refused(m, lambda: m.lookup("a", [*range(9), bad, 10, 11, 12, 13]), 9, bad)
    _refused(m, lambda: m.lookup("a", [*range(9), bad, 10]), 9, bad)  # in the retained tail
    # The session is untouched and goes on with the same calls' valid forms.
    assert m.begin_step("a", [*range(10), 10, 11, 12, 13]).num_cached_tokens == 10
    m.append_tokens("r", [30, 31])
    assert m.session("r").token_ids == [*range(20, 29), 30, 31]
    m.check_integrity()


@pytest.mark.parametrize("core", CORES)
def test_a_numpy_bool_array_as_a_list_is_refused(core):
    """A tokenizer's attention mask given for the ids: numpy bools (list(arr)) or Python
    bools (arr.tolist()); numpy ints stay accepted."""
    m = _manager(core)
    mask = np.array([1, 1, 1, 0, 1], dtype=bool)
    _refused(m, lambda: m.begin_step("s", list(mask)), 0, np.True_)
    _refused(m, lambda: m.begin_step("s", mask.tolist()), 0, True)
    m.begin_step("s", list(np.array([1, 1, 1, 0, 1], dtype=np.int64)))
    assert m.session("s").token_ids == [1, 1, 1, 0, 1]
    assert all(type(t) is int for t in m.session("s").token_ids)


@pytest.mark.parametrize("core", CORES)
def test_an_import_with_bool_ids_is_refused(core):
    """import_session checks the export's ids before it hashes them (the same error)."""
    import dataclasses

    src = _paused(core)
    export = src.export_session("a").export
    bad = dataclasses.replace(export, token_ids=[True, *export.token_ids[1:]])
    dst = _manager(core)
    _refused(dst, lambda: dst.import_session(bad), 0, True)
    dst.import_session(export)
    assert dst.session("a").token_ids == export.token_ids


ids = st.lists(st.integers(0, 3), min_size=1, max_size=14)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(context=ids, extra=ids, where=st.integers(0, 100), bad=st.sampled_from(BOOLS))
def test_a_bool_anywhere_in_a_new_prompt_is_refused_alike_on_both_cores(context, extra,
                                                                        where, bad):
    """Prompts of small ids (where True == 1 and False == 0 are everywhere): a bool at any
    position of a new or a resumed session's prompt is refused by both cores with the same
    message and nothing changes; the same prompt with the int gives equal books."""
    prompt = context + extra
    i = where % len(prompt)
    bad_prompt = prompt[:i] + [bad] + prompt[i + 1:]
    cores = ["python", "cpp"] if cpp_available() else ["python"]
    messages = set()
    for core in cores:
        for resumed in (False, True):
            m = _manager(core)
            if resumed:
                m.begin_step("s", context)
                m.allocate_slots("s", len(context))
                m.finish_step("s")
            # Resumed with the bool inside the context it repeats (True == 1 there, often):
            # begin_step still checks every id.
            messages.add(_refused(m, lambda m=m: m.begin_step("s", bad_prompt), i, bad))
            m.begin_step("s", [int(t) for t in bad_prompt])  # the ints: accepted
            m.check_integrity()
    assert len(messages) == 1
