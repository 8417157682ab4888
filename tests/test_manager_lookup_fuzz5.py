"""`lookup(block_hashes=...)` with malformed hashes, on both cores.

The C++ core raised a bare TypeError ("hashes must be a sequence") for a non-sequence and
took any item that is no 32-byte digest for a miss; the Python core's dict raised TypeError
for an unhashable item, took a str for a miss, and took a str of hashes or a bytes object
for a sequence of misses (an answer of no hits for a prompt that hits). Both now raise the
same InvalidRequest naming the argument (and the index and value of a bad item) and change
nothing; on valid hashes they answer alike, and as a lookup without hashes does."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsaga import InvalidRequest, KVCacheManager, KVSpec
from kvsaga._core import cpp_available
from tests.test_error_atomicity_stateful import full_state

BS = 4
CORES = ["python", "cpp"] if cpp_available() else ["python"]
PROMPT = [*range(12), 40, 41, 42, 43, 44]  # 17 tokens: 4 full blocks, 3 of them cached


def _manager(core: str, host: int = 0) -> KVCacheManager:
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 16, core=core, clock=lambda: 0.0,
                       num_host_blocks=host)
    m.begin_step("a", list(range(13)))
    m.allocate_slots("a", 13)
    m.finish_step("a")
    return m


def _hashes() -> list[bytes]:
    """The true hashes of PROMPT's 4 full blocks (salt None)."""
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 16, core="python")
    m.begin_step("h", PROMPT)
    return list(m.session("h").block_hashes)


H = _hashes()
X = bytes(32)  # a well-formed digest no block has

# (block_hashes, the message): read by both cores, each refused by name.
MALFORMED = [
    ("abc", "block_hashes must be None or a sequence (list or tuple) of 32-byte bytes "
     "digests, got str"),
    (H[0], "got bytes"),
    (bytearray(H[0]), "got bytearray"),
    (5, "got int"),
    ({H[0]: 0}, "got dict"),
    (iter(H), "got list_iterator"),
    ({H[0]}, "got set"),
    ([*H, X], "block_hashes holds 5 hashes; the prompt of 17 tokens has only 4 full "
     "blocks of 4 tokens"),
    (["x"], "block_hashes[0] must be a 32-byte bytes digest, got str 'x'"),
    ([H[0], "x"], "block_hashes[1] must be a 32-byte bytes digest, got str 'x'"),
    ([H[0], H[1], None], "block_hashes[2] must be a 32-byte bytes digest, got NoneType None"),
    ([[1, 2]], "block_hashes[0] must be a 32-byte bytes digest, got list [1, 2]"),
    ([H[0], bytearray(H[1])], "block_hashes[1] must be a 32-byte bytes digest, got "
     "bytearray"),
    ([H[0][:31]], "block_hashes[0] must be a 32-byte bytes digest, got 31 bytes"),
    ([H[0] + b"\0"], "block_hashes[0] must be a 32-byte bytes digest, got 33 bytes"),
    ((H[0], 7), "block_hashes[1] must be a 32-byte bytes digest, got int 7"),
    (range(3), "block_hashes[0] must be a 32-byte bytes digest, got int 0"),
]


def _outcome(m: KVCacheManager, hashes, prompt=PROMPT, sid: str = "b"):
    before = full_state(m)
    try:
        out = ("ok", m.lookup(sid, prompt, block_hashes=hashes))
    except InvalidRequest as e:
        out = ("refused", str(e))
    assert full_state(m) == before  # a lookup changes nothing, refused or not
    return out


@pytest.mark.parametrize("host", [0, 4])
@pytest.mark.parametrize("hashes,message", MALFORMED,
                         ids=[f"malformed{i}" for i in range(len(MALFORMED))])
def test_malformed_hashes_are_refused_alike_on_both_cores(hashes, message, host):
    outcomes = []
    for core in CORES:
        if isinstance(hashes, type(iter(()))):
            hashes = iter(H)  # a fresh iterator per core
        kind, msg = _outcome(_manager(core, host), hashes)
        assert kind == "refused" and message in msg, msg
        outcomes.append(msg)
    assert len(set(outcomes)) == 1


@pytest.mark.parametrize("core", CORES)
def test_a_memoryview_equal_to_a_digest_is_refused(core):
    """Python's dict found a memoryview of a cached hash (equal to it, same hash): a hit on
    the Python core, a miss on the C++ core. Both refuse it now."""
    kind, msg = _outcome(_manager(core), [H[0], memoryview(H[1])])
    assert kind == "refused"
    assert msg.startswith("block_hashes[1] must be a 32-byte bytes digest, got memoryview")


@pytest.mark.parametrize("core", CORES)
def test_items_past_the_first_miss_are_not_read_without_a_host_tier(core):
    """As with token ids, lookup checks the hashes it reads: up to the first miss (a
    well-formed digest of no block); a host tier reads every one, and checks every one."""
    assert _outcome(_manager(core), [H[0], X, "junk"])[0] == "ok"
    kind, msg = _outcome(_manager(core, host=4), [H[0], X, "junk"])
    assert (kind, msg) == ("refused",
                           "block_hashes[2] must be a 32-byte bytes digest, got str 'junk'")


@pytest.mark.parametrize("core", CORES)
def test_the_tuple_and_list_of_the_true_hashes_answer_as_no_hashes(core):
    m = _manager(core)
    plain = m.lookup("b", PROMPT)
    assert plain.gpu_hit_blocks == 3
    for k in range(len(H) + 1):
        for hashes in (H[:k], tuple(H[:k])):
            assert m.lookup("b", PROMPT, block_hashes=hashes) == plain


@settings(max_examples=60, deadline=None, derandomize=True)
@given(prompt=st.lists(st.integers(0, 3), min_size=1, max_size=30),
       cached=st.lists(st.integers(0, 3), min_size=1, max_size=30),
       k=st.integers(0, 8), junk=st.sampled_from([None, "x", b"short", X, 3]),
       at=st.integers(0, 8), host=st.sampled_from([0, 4]))
def test_both_cores_agree_on_any_hashes(prompt, cached, k, junk, at, host):
    """A prefix of the prompt's true hashes, perhaps with one item replaced by junk (or by
    another well-formed digest): both cores give the same answer or the same refusal; the
    true hashes give the answer of a lookup without hashes."""
    full = len(prompt) // BS
    k = min(k, full)
    hasher = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 16, core="python")
    hasher.begin_step("h", prompt)
    true = list(hasher.session("h").block_hashes[:k])
    hashes = list(true)
    if hashes:
        hashes[at % len(hashes)] = junk
    outcomes = []
    for core in CORES:
        m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 16, core=core, clock=lambda: 0.0,
                           num_host_blocks=host)
        m.begin_step("c", cached)
        m.allocate_slots("c", len(cached))
        m.finish_step("c")
        assert _outcome(m, true, prompt) == ("ok", m.lookup("b", prompt))
        outcomes.append(_outcome(m, hashes, prompt))
        if junk is X or not hashes:
            assert outcomes[-1][0] == "ok"
    assert outcomes.count(outcomes[0]) == len(outcomes)


@pytest.mark.parametrize("core", CORES)
def test_lookup_after_checks_the_hashes_it_reads(core):
    """`lookup_after` reads the hash of an evicted hit and of the first block past the
    hits: a non-digest there is refused by name on both cores (the C++ index's `get` took
    it for a miss, the dict raised TypeError for an unhashable one)."""
    m = _manager(core)
    found = m.lookup("b", PROMPT, block_hashes=H)
    evicted = [(m.session("a").block_ids[0], H[0], 0)]  # the prompt's first hit
    assert m.lookup_after("b", found, H, []) is found
    for hashes, victims, message in (
        ("abc", [], "hashes must be a sequence (list or tuple) of 32-byte bytes digests, "
         "got str"),
        ([H[0], H[1], H[2], [0]], [], "hashes[3] must be a 32-byte bytes digest, got list"),
        ([None, H[1], H[2], X], evicted, "hashes[0] must be a 32-byte bytes digest, got "
         "NoneType"),
    ):
        before = full_state(m)
        with pytest.raises(InvalidRequest, match=re.escape(message)):
            m.lookup_after("b", found, hashes, victims)
        assert full_state(m) == before
    assert m.lookup_after("b", found, H, []) is found
