"""Block hashes and the prefix index, on both cores (tests/conftest.py's `core` fixture)."""

import hashlib
import random
import struct

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.prefix import root_hash


def reference_chain(root: bytes, tokens: list[int], bs: int) -> list[bytes]:
    """SHA-256(parent || block's token ids as native uint32), written out with hashlib."""
    out, parent = [], root
    for i in range(len(tokens) // bs):
        parent = hashlib.sha256(parent + struct.pack(f"={bs}I", *tokens[i * bs:(i + 1) * bs]))
        parent = parent.digest()
        out.append(parent)
    return out


def test_hash_chain_depends_on_parent_salt_and_tokens(core):
    h = core.BlockHasher(4)
    r = root_hash(None)

    def chain(root, tokens):
        out: list[bytes] = []
        h.extend(out, root, tokens)
        return out

    (a,) = chain(r, [1, 2, 3, 4])
    assert chain(r, [1, 2, 3, 4]) == [a]
    assert chain(r, [1, 2, 3, 5]) != [a]
    assert chain(root_hash("tenant-b"), [1, 2, 3, 4]) != [a]
    # Same block tokens after different prefixes hash differently.
    assert chain(r, [9, 9, 9, 9, 1, 2, 3, 4])[1] != a
    assert len(a) == 32


def test_manager_sessions_hash_the_reference_chain_per_tenant(core):
    """The production path: a manager's session hashes are the reference chain from its
    tenant's root, so two tenants with the same prompt hold disjoint hashes."""
    bs = 4
    m = KVCacheManager(KVSpec(2, 2, 8, block_size=bs), 16, clock=lambda: 0.0, core=core.name)
    toks = [7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    for sid, salt in (("a", None), ("b", "tenant-a"), ("c", "tenant-b")):
        m.begin_step(sid, toks, salt=salt)
        assert m.sessions[sid].block_hashes == reference_chain(root_hash(salt), toks, bs)
    hashes = [set(m.sessions[sid].block_hashes) for sid in "abc"]
    assert not (hashes[0] & hashes[1] or hashes[0] & hashes[2] or hashes[1] & hashes[2])


def test_extend_hashes_only_full_blocks_incrementally(core):
    h = core.BlockHasher(4)
    r = root_hash("s")
    hashes: list[bytes] = []
    h.extend(hashes, r, list(range(7)))
    assert len(hashes) == 1
    h.extend(hashes, r, list(range(12)))
    assert len(hashes) == 3
    fresh: list[bytes] = []
    h.extend(fresh, r, list(range(12)))
    assert fresh == hashes


def test_extend_up_to_num_blocks_equals_extending_a_slice(core):
    """`num_blocks` caps the hashes in all: the same chain as hashing the context's first
    blocks, grown in steps, never past the context's full blocks."""
    toks = list(range(3, 40))  # 9 full blocks of 4, and one token
    want: list[bytes] = []
    core.BlockHasher(4).extend(want, b"r" * 32, toks)
    got: list[bytes] = []
    h = core.BlockHasher(4)
    for n, expected in ((0, 0), (2, 2), (1, 2), (5, 5), (12, 9), (None, 9)):
        h.extend(got, b"r" * 32, toks, n)
        assert got == want[:expected]


@pytest.mark.parametrize("bs", [1, 4, 16, 17])
def test_chain_equals_its_reference(core, bs):
    """Either core's chain is exactly SHA-256 over (parent, uint32 tokens), per tenant root."""
    rng = random.Random(bs)
    toks = [rng.randrange(2**32) for _ in range(bs * 9 + 3)]
    for salt in (None, "tenant-a", "tenant-b"):
        got: list[bytes] = []
        core.BlockHasher(bs).extend(got, root_hash(salt), toks)
        assert got == reference_chain(root_hash(salt), toks, bs)
    assert reference_chain(root_hash("a"), toks, bs) != reference_chain(root_hash("b"), toks, bs)


def test_index_longest_prefix_and_first_copy_wins(core):
    a, b, c = (bytes([x]) * 32 for x in (1, 2, 3))
    idx = core.PrefixIndex()
    assert idx.insert(a, 1)
    assert idx.insert(b, 2)
    assert not idx.insert(a, 7)
    assert idx.get(a) == 1 and idx.get(c) is None and len(idx) == 2
    assert idx.longest_prefix([a, b, c, a]) == [1, 2]
    assert idx.longest_prefix([a, b, c], limit=1) == [1]
    assert sorted(idx.items()) == [(a, 1), (b, 2)]
    idx.remove(a)
    assert idx.longest_prefix([a, b]) == []
    with pytest.raises(KeyError):
        idx.remove(a)


def test_cpp_sha256_both_paths_equal_hashlib(core):
    """The C++ SHA-256, with and without the x86 SHA extensions, over every padding case."""
    if core.name != "cpp":
        pytest.skip("C++ only")
    from kvsaga import _kvcore

    rng = random.Random(0)
    for n in [0, 1, 55, 56, 63, 64, 65, 96, 119, 120, 128, 1000]:
        data = rng.randbytes(n)
        for portable in (False, True):
            assert _kvcore._sha256(data, portable) == hashlib.sha256(data).digest()


def test_extend_reads_any_sequence_as_a_list(core):
    """A sequence other than a list or tuple (the simulator's view of a prompt, a prefix
    of a longer list) hashes as the list of its ids; the C++ core slices it to the blocks
    it hashes, and a bad id among them still raises."""
    from kvsaga.sim.request import IdsPrefix

    ids = list(range(100, 150))
    h = core.BlockHasher(4)
    want: list[bytes] = []
    h.extend(want, b"r" * 32, ids[:37])
    got: list[bytes] = [want[0]]  # from block 1 on: the view is read from there
    h.extend(got, b"r" * 32, IdsPrefix(ids, 37))
    assert got == want and len(got) == 9
    bad = ids[:8] + [2**32] + ids[9:]
    with pytest.raises((ValueError, OverflowError)):
        h.extend([], b"r" * 32, IdsPrefix(bad, 20))
