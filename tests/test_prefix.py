from kvsaga.prefix import BlockHasher, PrefixIndex, root_hash


def test_hash_chain_depends_on_parent_salt_and_tokens():
    h = BlockHasher(4)
    r = root_hash(None)
    a = h.hash_block(r, [1, 2, 3, 4])
    assert a == h.hash_block(r, [1, 2, 3, 4])
    assert a != h.hash_block(r, [1, 2, 3, 5])
    assert a != h.hash_block(root_hash("tenant-b"), [1, 2, 3, 4])
    # Same block tokens after different prefixes hash differently.
    x = h.hash_block(h.hash_block(r, [9, 9, 9, 9]), [1, 2, 3, 4])
    assert x != a
    assert len(a) == 32


def test_extend_hashes_only_full_blocks_incrementally():
    h = BlockHasher(4)
    r = root_hash("s")
    hashes: list[bytes] = []
    h.extend(hashes, r, list(range(7)))
    assert len(hashes) == 1
    h.extend(hashes, r, list(range(12)))
    assert len(hashes) == 3
    fresh: list[bytes] = []
    h.extend(fresh, r, list(range(12)))
    assert fresh == hashes


def test_index_longest_prefix_and_first_copy_wins():
    idx = PrefixIndex()
    assert idx.insert(b"a", 1)
    assert idx.insert(b"b", 2)
    assert not idx.insert(b"a", 7)
    assert idx.get(b"a") == 1
    assert idx.longest_prefix([b"a", b"b", b"c", b"a"]) == [1, 2]
    idx.remove(b"a")
    assert idx.longest_prefix([b"a", b"b"]) == []
