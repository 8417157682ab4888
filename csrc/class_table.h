// The table of kvsaga._evict's victim index (csrc/session_heap.cpp): a class's key at a grid
// point, by (class, grid point) (session_heap.py `_table`, a dict, is the reference).
//
// Why not std::unordered_map: each due session looks its class's key up, and between two
// engine steps a node-based map costs a miss on its bucket array and another on the node
// (under callgrind's cache model, a quarter of the index's misses in `due`). Here the cells
// are one flat array probed linearly from the key's hash: one line, usually.
// Header-only: session_heap.cpp is the extension's one translation unit.
#pragma once

#include <cstdint>
#include <vector>

#include "prefetch.h"
#include "session_keys.h"

namespace class_table {

using session_keys::TableKey;

// The largest class id and grid point a key holds (the pushes are checked against them,
// csrc/session_push.h): cls < 2^48 fills the key's top 48 bits, k + 1 < 2^16 - 1 its low 16
// without all ones, so that no (class, grid point) is the empty-cell mark kEmpty.
constexpr int64_t kMaxClass = (int64_t{1} << 48) - 1;
constexpr int64_t kMaxPoint = 65533;

class ClassTable {
 public:
  // The key of (class, grid point) as the table stores it (0 <= cls <= kMaxClass,
  // -1 <= k <= kMaxPoint).
  static uint64_t key(int64_t cls, int64_t k) {
    return (static_cast<uint64_t>(cls) << 16) ^ static_cast<uint64_t>(k + 1);
  }

  // The entry of `k` (a `key`), or nullptr.
  const TableKey* find(uint64_t k) const {
    if (used_ == 0) return nullptr;
    for (size_t i = home(k);; i = (i + 1) & mask_) {
      const Cell& c = cells_[i];
      if (c.key == k) return &c.value;
      if (c.key == kEmpty) return nullptr;
    }
  }

  // Asks the CPU for the cell where a lookup of `k` starts (no effect on the contents).
  void prefetch(uint64_t k) const {
    if (used_ != 0) KV_PREFETCH(&cells_[home(k)]);
  }

  void set(uint64_t k, const TableKey& v) {
    if (2 * (used_ + 1) > cells_.size()) grow();
    for (size_t i = home(k);; i = (i + 1) & mask_) {
      Cell& c = cells_[i];
      if (c.key == k) {
        c.value = v;
        return;
      }
      if (c.key == kEmpty) {
        c = Cell{k, v};
        ++used_;
        return;
      }
    }
  }

  // Forgets every entry; the room kept is what the entries held needed (a table that once
  // grew large does not stay large for every later clear).
  void clear() {
    if (used_ == 0) return;
    size_t cap = 64;
    while (cap < 2 * used_) cap *= 2;
    reset(cap);
  }

 private:
  // No (class, grid point) key is all ones (kMaxClass, kMaxPoint).
  static constexpr uint64_t kEmpty = ~0ull;
  struct alignas(32) Cell {  // two to a cache line
    uint64_t key;
    TableKey value;
  };

  void reset(size_t cap) {
    cells_.assign(cap, Cell{kEmpty, TableKey{0.0, 0.0, 0}});
    mask_ = cap - 1;
    used_ = 0;
  }

  size_t home(uint64_t k) const {
    return static_cast<size_t>((k * 0x9E3779B97F4A7C15ull) >> 20) & mask_;
  }

  void grow() {
    std::vector<Cell> old;
    old.swap(cells_);
    reset(old.empty() ? 64 : 2 * old.size());
    for (const Cell& c : old)
      if (c.key != kEmpty) set(c.key, c.value);
  }

  std::vector<Cell> cells_;
  size_t mask_ = 0;
  size_t used_ = 0;
};

}  // namespace class_table
