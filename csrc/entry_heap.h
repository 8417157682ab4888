// The victim index's heap of entries (csrc/session_heap.cpp), laid out so that a sift reads
// one cache line a level.
//
// A victim search pops a few sessions off a heap of one entry per paused session (4,000 in
// bench/allocator.py's scaling case) that the step between two searches has pushed out of
// the caches: each pop (std::pop_heap, which sifts the hole down to a leaf) reads both
// children at every level. With 48-byte entries two siblings spanned two or three lines;
// here an entry is 32 bytes and the root sits at byte 32 of a 64-byte line (slot 0 of the
// array is unused), so siblings 2i+1 and 2i+2 share one line: half the lines a pop reads
// (bench/RESULTS.md, "The index's heap a line a level").
//
// The heap operations are std::push_heap / pop_heap / make_heap as before, with the same
// comparator, so the entries compare in the same order and the same session surfaces.
// What shrank: the session's size left the entry (the index keeps it per slot, beside the
// slot's live tag, which a pop reads anyway), and the entry's version is a 32-bit *tag*:
// the index's count of entries made, from 1, which the slot keeps too (an entry is live
// when its tag is its slot's; 0: the slot has no live entry). Before the count wraps, the
// index drops every stale entry and numbers the live ones 1, 2, ... in their tags' order
// (`SessionHeap::enter`, `renumber`): every comparison then answers as before, and no
// stale entry is left to match a later tag. (The timers keep the 64-bit versions.)
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

namespace entry_heap {

struct Entry {
  double k0, k1;  // the key (class, value)
  int64_t tie;    // the tail block
  int32_t slot;
  uint32_t ver;   // its tag (above)
};
static_assert(sizeof(Entry) == 32, "two entries a cache line");

// Lexicographic (key, tie, version), as Python compares the reference's tuples.
inline bool before(const Entry& a, const Entry& b) {
  if (a.k0 != b.k0) return a.k0 < b.k0;
  if (a.k1 != b.k1) return a.k1 < b.k1;
  if (a.tie != b.tie) return a.tie < b.tie;
  return a.ver < b.ver;
}
inline bool after(const Entry& a, const Entry& b) { return before(b, a); }  // min-heap order

// Storage on 64-byte boundaries.
template <class T>
struct LineAlloc {
  using value_type = T;
  LineAlloc() = default;
  template <class U>
  LineAlloc(const LineAlloc<U>&) {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
  }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <class U>
  bool operator==(const LineAlloc<U>&) const { return true; }
  template <class U>
  bool operator!=(const LineAlloc<U>&) const { return false; }
};

// A binary min-heap of entries whose root is slot 1 of a line-aligned array.
class Heap {
 public:
  Heap() : v_(1) {}
  std::size_t size() const { return v_.size() - 1; }
  bool empty() const { return v_.size() == 1; }
  const Entry& front() const { return v_[1]; }
  void push(const Entry& e) {
    v_.push_back(e);
    std::push_heap(v_.begin() + 1, v_.end(), after);
  }
  Entry pop() {
    std::pop_heap(v_.begin() + 1, v_.end(), after);
    Entry e = v_.back();
    v_.pop_back();
    return e;
  }
  void clear() { v_.resize(1); }
  void reserve(std::size_t n) { v_.reserve(n + 1); }
  // The entries, in heap order (a change must keep each one's order to the others).
  Entry* begin() { return v_.data() + 1; }
  Entry* end() { return v_.data() + v_.size(); }
  // Drop the entries `stale` names and heapify the rest (std::make_heap).
  template <class Stale>
  void remove_if(Stale stale) {
    v_.erase(std::remove_if(v_.begin() + 1, v_.end(), stale), v_.end());
    std::make_heap(v_.begin() + 1, v_.end(), after);
  }

 private:
  std::vector<Entry, LineAlloc<Entry>> v_;
};

}  // namespace entry_heap
