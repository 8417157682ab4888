"""Choosing the bookkeeping core, and the fallback when the C++ core is not built."""

from __future__ import annotations

import logging
import re

import pytest

from kvsaga import KVCacheManager, KVSpec, _core
from kvsaga.errors import InvalidRequest


def test_env_picks_the_core(monkeypatch):
    monkeypatch.setenv("KVSAGA_CORE", "python")
    assert KVCacheManager(KVSpec(1, 1, 4, block_size=4), 4).core.name == "python"
    monkeypatch.setenv("KVSAGA_CORE", "nonsense")
    with pytest.raises(ValueError, match="KVSAGA_CORE"):
        _core.get_core()
    with pytest.raises(ValueError, match="core must be one of"):
        _core.get_core("fortran")


def test_default_is_cpp_when_built(monkeypatch):
    monkeypatch.delenv("KVSAGA_CORE", raising=False)
    expected = "cpp" if _core.cpp_available() else "python"
    assert _core.get_core().name == expected


def test_without_the_extension_python_stands_in_with_a_warning(monkeypatch, caplog):
    """A machine that could not compile csrc/ runs the Python core and says so once."""
    monkeypatch.setattr(_core, "_cpp", None)
    monkeypatch.setattr(_core, "_cpp_error", "No module named 'kvsaga._kvcore'")
    monkeypatch.setattr(_core, "_logged", False)
    monkeypatch.delenv("KVSAGA_CORE", raising=False)
    with caplog.at_level(logging.INFO, logger="kvsaga"):
        m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 4)
        KVCacheManager(KVSpec(1, 1, 4, block_size=4), 4)
    assert m.core.name == "python"
    warnings = [r for r in caplog.records  # kvsaga's: not another thread's or library's
                if r.levelno == logging.WARNING and r.name.startswith("kvsaga")]
    assert len(warnings) == 1 and "bookkeeping core: python" in warnings[0].getMessage()
    m.begin_step("a", [1, 2, 3, 4, 5])
    assert m.allocate_slots("a", 5) == [0, 1, 2, 3, 4]
    # Asked for by name, a missing C++ core is an error that says what to do.
    with pytest.raises(RuntimeError, match="KVSAGA_CORE=python"):
        _core.get_core("cpp")


@pytest.mark.skipif(not _core.cpp_available(), reason="the C++ core is not built")
@pytest.mark.parametrize("prompt", [
    [1, 2, 3, 4, 5], (1, 2, 3, 4, 5), range(1, 6), [1, True, 3], [1, -1], [2**32], [1, 2.0],
    "abc", b"ab", [], None, iter([1, 2]), [1, 2**32 - 1],
])
def test_begin_step_checks_prompts_as_the_python_core(prompt):
    """The C++ core copies plain prompts itself and hands the rest to the Python checks:
    the same prompt is accepted, or refused with the same error, on both cores."""
    outcomes = []
    for core in ("python", "cpp"):
        m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 4, core=core)
        try:
            st = m.begin_step("a", prompt)
            outcomes.append(("ok", st.num_prompt_tokens, m.sessions["a"].token_ids))
        except Exception as e:  # noqa: BLE001 - any error must match between cores
            outcomes.append((type(e).__name__, str(e)))
    assert outcomes[0] == outcomes[1]


@pytest.mark.skipif(not _core.cpp_available(), reason="the C++ core is not built")
def test_a_shared_hit_loses_its_owner_on_both_cores():
    owners = []
    for core in ("python", "cpp"):
        m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 8, core=core)
        m.begin_step("a", list(range(9)))
        m.allocate_slots("a", 9)
        m.finish_step("a")
        m.begin_step("a", list(range(9)))  # its own blocks: it keeps them
        assert m.block_owner[:2] == ["a", "a"]
        m.begin_step("b", list(range(8)) + [99])  # a's first two blocks, shared now
        owners.append(list(m.block_owner))
    assert owners[0] == owners[1] and owners[1][:2] == [None, None]


@pytest.mark.skipif(not _core.cpp_available(), reason="the C++ core is not built")
@pytest.mark.parametrize("tail", [
    [10, 11], [], [-1], [2**32], [10, "x"], "first-float", "first-true", "diverge",
])
def test_a_resumed_prompt_is_checked_as_on_the_python_core(tail):
    """A paused session's next prompt: the C++ core checks and copies only the tokens past
    the context it repeats, yet accepts and refuses exactly what the Python core does, and
    a refused prompt leaves the session as it was."""
    context = list(range(10))
    if tail == "first-float":
        prompt = [0.0, *context[1:], 10]  # equal to the context's 0, but not an int
    elif tail == "first-true":
        prompt = [context[0], True, *context[2:], 10]  # True == 1, not an int either
    elif tail == "diverge":
        prompt = context[:6] + [99, 98, 97]
    else:
        prompt = context + tail
    outcomes = []
    for core in ("python", "cpp"):
        m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 8, core=core)
        m.begin_step("a", context)
        m.allocate_slots("a", 10)
        m.finish_step("a")
        try:
            st = m.begin_step("a", prompt)
            outcomes.append(("ok", st.num_cached_tokens, m.sessions["a"].token_ids))
        except Exception as e:  # noqa: BLE001 - any error must match between cores
            assert m.sessions["a"].token_ids == context
            outcomes.append((type(e).__name__, str(e)))
        m.check_integrity()
    assert outcomes[0] == outcomes[1]


@pytest.mark.skipif(not _core.cpp_available(), reason="the C++ core is not built")
@pytest.mark.parametrize("change", ["same", "copies", "diverge", "float", "big", "shorter"])
def test_a_long_resumed_prompt_is_checked_as_on_the_python_core(change):
    """A context past the C++ core's chunked comparison (64 pointers at a time): the prompt
    holding the context's very objects, equal copies of them (ints past 2^30 too), a
    divergence, a float equal to an int or a shorter prompt inside the identical run give
    the Python core's session."""
    context = [7, 2**31 + 5, *range(1000, 1198)]  # 200 tokens: ints of one digit and more
    prompt = list(context)
    if change == "copies":
        prompt = [int(str(t)) for t in context]  # equal ints, other objects
    elif change == "diverge":
        prompt[130] = 99
    elif change == "float":
        prompt[150] = float(prompt[150])
    elif change == "big":
        prompt[70] = 2**32  # out of range, where the identical run would have skipped
    elif change == "shorter":
        prompt = prompt[:100]
    outcomes = []
    for core in ("python", "cpp"):
        m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 64, core=core)
        m.begin_step("a", context)
        m.allocate_slots("a", len(context))
        m.finish_step("a")
        try:
            st = m.begin_step("a", prompt + [5])
            outcomes.append(("ok", st.num_prompt_tokens, st.num_cached_tokens,
                             m.sessions["a"].token_ids, m.sessions["a"].block_hashes))
        except Exception as e:  # noqa: BLE001 - any error must match between cores
            outcomes.append((type(e).__name__, str(e), m.sessions["a"].token_ids))
    assert outcomes[0] == outcomes[1]


@pytest.mark.skipif(not _core.cpp_available(), reason="the C++ core is not built")
@pytest.mark.parametrize("clash", [None, "queued", "unqueued"])
def test_a_pool_tells_a_cpp_queue_its_batches_as_through_a_call(clash):
    """When an observer's batch hooks are a C++ BlockQueue's own push_many / remove_many
    (LRU binds them so), the C++ pool links and unlinks the ids in that queue itself: the
    queue's order, the pool and the errors are those of calling the hooks."""
    core = _core.get_core("cpp")
    results = []
    for direct in (True, False):
        pool, queue = core.BlockPool(8), core.BlockQueue(8)
        pool.observer = _queue_observer(queue, direct)
        ids = pool.allocate(5)
        for b in ids:
            pool.block_hash[b] = bytes([b]) * 32
        got = []
        try:
            if clash == "queued":
                queue.push(ids[2])  # the release's batch then names a queued block
            pool.release_many(ids[::-1], -1)
            got.append(list(queue))
            if clash == "unqueued":
                queue.remove(ids[1])  # the reclaim's batch then names an unqueued block
            pool.acquire_many([ids[1], ids[3]])
        except ValueError as e:
            got.append(str(e))
        results.append((got, list(queue), list(pool.state), list(pool.refcount)))
    assert results[0] == results[1]


def _queue_observer(queue, direct: bool):
    """An observer keeping `queue`: its batch hooks the queue's own methods (`direct`) or
    Python functions calling them."""

    class Observer:
        block_cached, block_uncached = queue.push, queue.remove
        if direct:
            blocks_cached, blocks_uncached = queue.push_many, queue.remove_many
        else:
            def blocks_cached(self, ids):
                queue.push_many(ids)

            def blocks_uncached(self, ids):
                queue.remove_many(ids)

    return Observer()


@pytest.mark.parametrize("core", ["python", "cpp"])
@pytest.mark.parametrize("listed", [True, False, 0, None, 1, "no"])
def test_return_slots_must_be_a_bool_on_either_core(monkeypatch, core, listed):
    """A truthy 1 or "no" for return_slots is a typo: both cores refuse it with the same
    error before any block is taken (the C++ binding alone would raise a bare TypeError)."""
    if core == "cpp" and not _core.cpp_available():
        pytest.skip("the C++ core is not built")
    monkeypatch.setenv("KVSAGA_CORE", core)
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 4)
    assert m.core.name == core
    m.begin_step("a", [1, 2, 3, 4, 5])
    before = m.stats()
    if isinstance(listed, bool):
        out = m.allocate_slots("a", 5, return_slots=listed)
        assert out == ([0, 1, 2, 3, 4] if listed else None)
        return
    with pytest.raises(InvalidRequest, match=f"return_slots must be True or False, got "
                                             f"{re.escape(repr(listed))}"):
        m.allocate_slots("a", 5, return_slots=listed)
    assert m.stats() == before and m.sessions["a"].num_computed == 0
    assert m.allocate_slots("a", 5) == [0, 1, 2, 3, 4]  # nothing was taken



# Each runs in a child under PYTHONMALLOC=debug: its allocator fills memory it frees with
# dead bytes, so reading a freed list's items crashes there instead of finding them intact.
_APPEND_OWN_CONTEXT = """
from kvsaga import KVCacheManager, KVSpec
for n in (5, 1000):
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=16), 1 << 10, core=CORE, clock=lambda: 0.0)
    m.begin_step("a", list(range(n)))
    m.append_tokens("a", m.sessions["a"].token_ids)
    assert m.sessions["a"].token_ids == list(range(n)) * 2
    m.allocate_slots("a", 2 * n)
    m.finish_step("a")
    m.check_integrity()
"""

_DECODE_A_CONTEXT = """
from kvsaga import KVCacheManager, KVSpec
for k in (2, 600):
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=16), 1 << 10, core=CORE, clock=lambda: 0.0)
    others = [f"s{i}" for i in range(1, k)]
    for sid, prompt in [("a", list(range(k))), *((sid, [7]) for sid in others)]:
        m.begin_step(sid, prompt)
        m.allocate_slots(sid, len(prompt))
    m.decode_step(["a", *others], m.sessions["a"].token_ids)
    assert m.sessions["a"].token_ids == [*range(k), 0]
    assert [m.sessions[sid].token_ids for sid in others] == [[7, i] for i in range(1, k)]
    m.check_integrity()
"""


def _run_with_debug_malloc(core: str, code: str) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONMALLOC": "debug"}
    done = subprocess.run([sys.executable, "-c", f"CORE = {core!r}\n{code}"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


@pytest.mark.parametrize("core", ["python", "cpp"])
def test_append_tokens_of_the_sessions_own_context(core):
    """`append_tokens(sid, m.sessions[sid].token_ids)` repeats the context. The C++ core
    read the ids in place while appending them to that very list: its growth moved them, and
    the core read freed memory (a wrong id, a TypeError, a SystemError or a crash)."""
    if core == "cpp" and not _core.cpp_available():
        pytest.skip("the C++ core is not built")
    _run_with_debug_malloc(core, _APPEND_OWN_CONTEXT)


@pytest.mark.parametrize("core", ["python", "cpp"])
def test_decode_step_with_a_batch_sessions_context_as_its_tokens(core):
    """decode_step's token list may be the context of a session in its batch: each session
    gets the token at its index in the list as it was passed (the C++ core read the later
    ones through the list's items after the first append had moved them)."""
    if core == "cpp" and not _core.cpp_available():
        pytest.skip("the C++ core is not built")
    _run_with_debug_malloc(core, _DECODE_A_CONTEXT)


_INDEX_EMPTIES_THE_PROMPT = """
from kvsaga import KVCacheManager, KVSpec

class Emptier:
    calls = 0

    def __init__(self, ids):
        self.ids = ids

    def __index__(self):  # the first read checks the ids; the hasher's is the second
        Emptier.calls += 1
        if Emptier.calls == 2:
            self.ids[:] = []
        return 1

m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 64, core=CORE, clock=lambda: 0.0)
toks = [1000 + i for i in range(64)]  # ints past 256: freed with the list's references
toks[0] = Emptier(toks)
try:
    m.lookup("x", toks)
except Exception:
    pass
m.check_integrity()
"""


@pytest.mark.parametrize("core", ["python", "cpp"])
def test_lookup_of_ids_whose_index_changes_the_prompt(core):
    """The C++ hasher reads ids other than ints through __index__, arbitrary code, while it
    read the list's items in place: an __index__ that empties the list freed them under the
    loop (a crash under PYTHONMALLOC=debug). The rest is now read from a tuple of its own."""
    if core == "cpp" and not _core.cpp_available():
        pytest.skip("the C++ core is not built")
    _run_with_debug_malloc(core, _INDEX_EMPTIES_THE_PROMPT)
