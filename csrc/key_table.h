// The prefix index's hash table: 32-byte block hashes -> block ids, open addressing with
// linear probing and backward-shift deletion (no tombstones, so erasing never slows later
// lookups), at most half full.
//
// Why our own table rather than a library map: eviction unindexes thousands of blocks in a
// row, and a map that keeps each 32-byte key in its slot spends a cache miss per erase on a
// table of ~40 bytes a slot (1.3 MB for 16k blocks). Here the probe array holds 8 bytes a
// slot (32 bits of the key's seeded hash and the block id; 256 KB for 16k blocks, cache
// resident) and the keys sit in a parallel array that only a successful lookup reads. An
// erase whose caller knows the block (the pool records which block holds which hash) probes
// by (hash bits, block) and reads no key at all; `prefetch` fetches a probe slot ahead.
#pragma once
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "prefetch.h"

namespace kvcore {

struct Key {
  uint64_t w[4];
  bool operator==(const Key& o) const { return std::memcmp(w, o.w, 32) == 0; }
};

class KeyTable {
 public:
  KeyTable() : meta_(16, Meta{0, -1}), keys_(16), mask_(15) {
    // The keys are SHA-256 digests, but a client can grind prompts whose digests share low
    // bits; a per-process secret seed keeps it from aiming at one run of slots.
    std::random_device rd;
    seed0_ = (uint64_t(rd()) << 32) | rd();
    seed1_ = (uint64_t(rd()) << 32) | rd();
  }

  size_t size() const { return size_; }

  // The block holding `k`, or -1.
  int32_t find(const Key& k) const {
    uint32_t h = hash(k);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Meta& m = meta_[i];
      if (m.block < 0) return -1;
      if (m.hash == h && keys_[i] == k) return m.block;
    }
  }

  // Adds k -> block; false (and nothing changes) when k is present.
  bool insert(const Key& k, int32_t block) {
    if (2 * (size_ + 1) > meta_.size()) grow();
    uint32_t h = hash(k);
    size_t i = h & mask_;
    for (; meta_[i].block >= 0; i = (i + 1) & mask_)
      if (meta_[i].hash == h && keys_[i] == k) return false;
    meta_[i] = Meta{h, block};
    keys_[i] = k;
    ++size_;
    return true;
  }

  // Room for n keys without growing (a table about to be filled: one allocation instead of
  // a rehash at every doubling on the way).
  void reserve(size_t n) {
    size_t want = meta_.size();
    while (2 * n > want) want *= 2;
    if (want > meta_.size()) rehash(want);
  }

  // Removes k; false when it is absent.
  bool erase(const Key& k) {
    uint32_t h = hash(k);
    for (size_t i = h & mask_; meta_[i].block >= 0; i = (i + 1) & mask_)
      if (meta_[i].hash == h && keys_[i] == k) return erase_at(i);
    return false;
  }

  // Removes k, which maps to `block`, where no other key maps to `block` (the manager's
  // index: a block holds one hash): the probe matches (hash bits, block) and reads no key.
  // Falls back to erase(k) when no slot matches so.
  bool erase_held(const Key& k, int32_t block) {
    uint32_t h = hash(k);
    for (size_t i = h & mask_; meta_[i].block >= 0; i = (i + 1) & mask_)
      if (meta_[i].block == block && meta_[i].hash == h) return erase_at(i);
    return erase(k);
  }

  // Fetch k's home slot ahead of a find or erase: its probe entry, and the keys there and
  // after it (a find compares them; an erase's backward shift moves them).
  void prefetch(const Key& k) const {
    size_t i = hash(k) & mask_;
    KV_PREFETCH(&meta_[i]);
    KV_PREFETCH(&keys_[i]);
    KV_PREFETCH(&keys_[(i + 2) & mask_]);
  }

  template <class F>
  void for_each(F&& f) const {
    for (size_t i = 0; i < meta_.size(); ++i)
      if (meta_[i].block >= 0) f(keys_[i], meta_[i].block);
  }

 private:
  struct Meta {
    uint32_t hash;  // low 32 bits of the key's seeded hash: the home slot is hash & mask
    int32_t block;  // -1: empty
  };

  uint32_t hash(const Key& k) const {
    uint64_t x = (k.w[0] ^ seed0_) * 0x9E3779B97F4A7C15ull;
    uint64_t y = (k.w[1] ^ seed1_) * 0xC2B2AE3D27D4EB4Full;
    return static_cast<uint32_t>(x ^ (y >> 29) ^ (x >> 32));
  }

  // Backward shift: pull each later slot of the run whose home does not lie in (i, j]
  // into the hole, so that every key stays reachable from its home without tombstones.
  bool erase_at(size_t i) {
    for (size_t j = (i + 1) & mask_; meta_[j].block >= 0; j = (j + 1) & mask_) {
      size_t home = meta_[j].hash & mask_;
      bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
      if (stays) continue;
      meta_[i] = meta_[j];
      keys_[i] = keys_[j];
      i = j;
    }
    meta_[i].block = -1;
    --size_;
    return true;
  }

  void grow() { rehash(2 * meta_.size()); }

  // Re-inserts every key into `slots` slots (a power of 2, more than the keys held).
  void rehash(size_t slots) {
    std::vector<Meta> old_meta(slots, Meta{0, -1});
    std::vector<Key> old_keys(slots);
    old_meta.swap(meta_);
    old_keys.swap(keys_);
    mask_ = meta_.size() - 1;
    size_ = 0;
    for (size_t i = 0; i < old_meta.size(); ++i)
      if (old_meta[i].block >= 0) insert(old_keys[i], old_meta[i].block);
  }

  std::vector<Meta> meta_;
  std::vector<Key> keys_;
  size_t mask_;
  size_t size_ = 0;
  uint64_t seed0_, seed1_;
};

}  // namespace kvcore
