// kvsaga._kvcore.BlockQueue: the Python-facing twin of kvsaga/block_queue.py over queue.h.
#pragma once
#include <algorithm>
#include <vector>

#include "kvcore_common.h"
#include "queue.h"

namespace kvcore {

// Python-facing intrusive queue (the policies' orders). Checks what the raw queue assumes.
class PyQueue {
 public:
  explicit PyQueue(int32_t capacity) : q_(check_capacity(capacity)) { reserve_ids(capacity); }

  IntrusiveQueue& raw() { return q_; }
  int64_t size() const { return q_.size(); }

  bool contains(int64_t b) const { return b >= 0 && b < q_.capacity() && q_.contains(b); }

  nb::list items() const {
    std::vector<int32_t> out;
    out.reserve(q_.size());
    for (int32_t b = q_.first(); b != q_.end(); b = q_.after(b)) out.push_back(b);
    return to_list(out.data(), out.size());
  }

  void push(int64_t b) {
    check_id(b);
    if (q_.contains(b)) raise_linked(b);
    q_.push(static_cast<int32_t>(b));
  }

  void push_many(nb::handle ids) {
    read_ids(ids, q_.capacity(), buf_);
    push_ids(buf_.data(), buf_.size());
  }

  // push_many / remove_many of ids already read and in range (the pool's batches, when this
  // queue's own methods are its observer's: no list made and read back).
  void push_ids(const int32_t* ids, size_t k) {
    check_batch(ids, k, true);
    for (size_t i = 0; i < k; ++i) q_.push(ids[i]);
  }

  void remove_ids(const int32_t* ids, size_t k) {
    check_batch(ids, k, false);
    for (size_t i = 0; i < k; ++i) q_.remove(ids[i]);
  }

  void remove(int64_t b) {
    check_id(b);
    if (!q_.contains(b)) raise_unlinked(b);
    q_.remove(static_cast<int32_t>(b));
  }

  void remove_many(nb::handle ids) {
    read_ids(ids, q_.capacity(), buf_);
    remove_ids(buf_.data(), buf_.size());
  }

  int64_t peek() const { return q_.size() ? q_.first() : -1; }

  nb::list head(int64_t count) const {
    std::vector<int32_t> out;
    int64_t k = std::max<int64_t>(0, std::min<int64_t>(count, q_.size()));
    out.reserve(k);
    int32_t b = q_.first();
    for (int64_t i = 0; i < k; ++i, b = q_.after(b)) out.push_back(b);
    return to_list(out.data(), out.size());
  }

  int64_t pop() {
    if (!q_.size()) throw nb::index_error("pop from an empty BlockQueue");
    return q_.pop();
  }

  nb::list pop_many(int64_t count) {
    if (count < 0 || count > q_.size()) {
      PyErr_Format(PyExc_ValueError, "pop_many(%lld) on a queue of %lld", (long long)count,
                   (long long)q_.size());
      throw_current();
    }
    buf_.resize(count);
    for (int64_t i = 0; i < count; ++i) buf_[i] = q_.pop();
    return to_list(buf_.data(), buf_.size());
  }

 private:
  static int32_t check_capacity(int64_t c) {
    if (c < 0 || c > (1 << 30)) throw nb::value_error("BlockQueue capacity out of range");
    return static_cast<int32_t>(c);
  }
  void check_id(int64_t b) const {
    if (b < 0 || b >= q_.capacity()) {
      PyErr_Format(PyExc_IndexError, "block id %lld out of range [0, %d)", (long long)b,
                   q_.capacity());
      throw_current();
    }
  }
  [[noreturn]] static void raise_linked(int32_t b) {
    PyErr_Format(PyExc_ValueError, "block %d is already queued", b);
    throw_current();
  }
  [[noreturn]] static void raise_unlinked(int32_t b) {
    PyErr_Format(PyExc_ValueError, "block %d is not queued", b);
    throw_current();
  }
  // Every id once, and unlinked (push) or linked (remove): checked before any change, so a
  // bad batch changes nothing.
  void check_batch(const int32_t* ids, size_t k, bool push) {
    marks_.resize(q_.capacity(), 0);
    size_t i = 0;
    bool ok = true;
    for (; i < k; ++i) {
      int32_t b = ids[i];
      if (marks_[b]++ || q_.contains(b) == push) {
        ok = false;
        break;
      }
    }
    for (size_t j = 0; j < k && j <= i; ++j) marks_[ids[j]] = 0;
    if (ok) return;
    if (q_.contains(ids[i]) == push) push ? raise_linked(ids[i]) : raise_unlinked(ids[i]);
    PyErr_Format(PyExc_ValueError, "block %d appears twice", ids[i]);
    throw_current();
  }

  IntrusiveQueue q_;
  std::vector<int32_t> buf_;
  std::vector<uint8_t> marks_;
};

}  // namespace kvcore
