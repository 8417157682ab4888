// An intrusive doubly linked queue over integer block ids (the C++ twin of
// kvsaga/block_queue.py): links live in two arrays indexed by block id, index `capacity`
// is the sentinel, and a block is linked iff prev[b] != -1. No allocation after construction.
#pragma once
#include <cstdint>
#include <vector>

namespace kvcore {

class IntrusiveQueue {
 public:
  explicit IntrusiveQueue(int32_t capacity)
      : s_(capacity), next_(capacity + 1, -1), prev_(capacity + 1, -1) {
    next_[s_] = s_;
    prev_[s_] = s_;
  }

  int32_t capacity() const { return s_; }
  int64_t size() const { return size_; }
  bool contains(int32_t b) const { return prev_[b] != -1; }
  int32_t first() const { return next_[s_]; }  // == end() when empty
  int32_t end() const { return s_; }
  int32_t after(int32_t b) const { return next_[b]; }

  // Append at the tail (newest). `b` must not be linked.
  void push(int32_t b) {
    int32_t t = prev_[s_];
    next_[t] = b;
    prev_[b] = t;
    next_[b] = s_;
    prev_[s_] = b;
    ++size_;
  }

  // Unlink a linked block.
  void remove(int32_t b) {
    int32_t p = prev_[b], n = next_[b];
    next_[p] = n;
    prev_[n] = p;
    prev_[b] = -1;
    next_[b] = -1;
    --size_;
  }

  // Unlink and return the head (oldest). The queue must not be empty.
  int32_t pop() {
    int32_t b = next_[s_];
    remove(b);
    return b;
  }

 private:
  int32_t s_;
  std::vector<int32_t> next_, prev_;
  int64_t size_ = 0;
};

}  // namespace kvcore
