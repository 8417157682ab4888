// kvsaga._kvcore.BlockPool: the twin of kvsaga/pool.py (refcounts, states, generations and
// the free queue; the per-block arrays Python reads as memoryviews).
#pragma once
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "block_queue.h"
#include "kvcore_common.h"
#include "queue.h"

namespace kvcore {

// An int array in a bytearray that Python sees as a writable memoryview of `fmt`. The array
// holds its own export of the bytearray for its lifetime (released in the destructor): the
// memoryview Python gets may be released (`with pool.refcount as rc:` does), which would
// otherwise free the bytes that `data` still writes.
template <class T>
struct SharedArray {
  nb::object view;
  Py_buffer buf{};
  T* data = nullptr;
  SharedArray(size_t n, const char* fmt) {
    nb::object ba = steal_or_throw(
        PyByteArray_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n * sizeof(T))));
    view = steal_or_throw(PyMemoryView_FromObject(ba.ptr())).attr("cast")(fmt);
    if (PyObject_GetBuffer(ba.ptr(), &buf, PyBUF_WRITABLE) != 0) throw_current();
    data = static_cast<T*>(buf.buf);
    std::memset(data, 0, n * sizeof(T));
  }
  ~SharedArray() { PyBuffer_Release(&buf); }
  SharedArray(const SharedArray&) = delete;
  SharedArray& operator=(const SharedArray&) = delete;
};

inline int32_t check_num_blocks(nb::handle num_blocks) {
  PyObject* o = num_blocks.ptr();
  long long v = -1;
  int overflow = 0;
  if (PyLong_Check(o) && !PyBool_Check(o)) {
    v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow) v = -1;
  }
  if (overflow > 0 || v > (1 << 30)) {  // ids are int32: a limit the Python twin has not
    PyErr_Format(g_errors->invalid.ptr(),
                 "num_blocks %R is more than the C++ core's limit of 2**30 blocks "
                 "(the Python core, KVSAGA_CORE=python, has none)", o);
    throw_current();
  }
  if (v < 1) {
    PyErr_Format(g_errors->invalid.ptr(), "num_blocks must be a positive int, got %R", o);
    throw_current();
  }
  return static_cast<int32_t>(v);
}

class Pool {
 public:
  Pool(nb::handle num_blocks, std::string tier)
      : n(check_num_blocks(num_blocks)),
        tier(std::move(tier)),
        ref(n, "i"),
        state(n, "i"),
        gen(n, "q"),
        free_q_(n),
        scratch_(n, 0),
        cached_at_(n, 0.0),
        held_(n, 0) {
    reserve_ids(n);
    block_hash = steal_or_throw(PyList_New(n));
    for (int32_t b = 0; b < n; ++b) {
      PyList_SET_ITEM(block_hash.ptr(), b, Py_NewRef(Py_None));
      free_q_.push(b);
    }
  }

  const int32_t n;
  const std::string tier;
  SharedArray<int32_t> ref, state;
  SharedArray<int64_t> gen;
  nb::object block_hash;  // list: bytes | None per block
  int64_t num_cached = 0;
  // Cache residence, for a simulator's usage metrics: `clock` is the time its owner says
  // it is; `reused_s` adds, for each CACHED block a hit reclaims, in order, the time since
  // it became CACHED. A block `hold_many` took from CACHED is not reused: it keeps its time
  // (`held_`) and is CACHED again as of then when released.
  double clock = 0.0;
  double reused_s = 0.0;
  // The record of the last mutator call (allocate, acquire_many, hold_many, release_many,
  // evict_many) that completed, its observer told: `calls` counts them, `last_result` is
  // its result (allocate's ids, evict_many's hashes; None for the others). CPython checks
  // for a pending signal as a method call returns, so an interrupt (a signal handler's
  // raise) that arrives during a call lands in the caller as it returns, the result lost;
  // a caller that reads `calls` first tells "returned" (changed) from "raised inside"
  // (nothing changed, or, for release_many, its `blocks_cached` hook raised) and recovers
  // the result here (kvsaga/manager_evict.py `_drop`). The Python twin records the same.
  int64_t calls = 0;
  nb::object last_result = nb::none();

  int64_t num_free() const { return free_q_.size(); }
  int64_t num_active() const { return n - free_q_.size() - num_cached; }
  int64_t num_available() const { return free_q_.size() + num_cached; }

  nb::list free_ids() const {
    std::vector<int32_t> out;
    for (int32_t b = free_q_.first(); b != free_q_.end(); b = free_q_.after(b)) out.push_back(b);
    return to_list(out.data(), out.size());
  }

  // -- observer -------------------------------------------------------------------------
  nb::object observer() const { return observer_; }

  void set_observer(nb::object obs) {
    nb::object one_c = obs.attr("block_cached"), one_u = obs.attr("block_uncached");
    nb::object many_c = nb::getattr(obs, "blocks_cached", nb::none());
    nb::object many_u = nb::getattr(obs, "blocks_uncached", nb::none());
    observer_ = obs;
    one_cached_ = one_c;
    one_uncached_ = one_u;
    many_cached_ = nb::bool_(many_c) ? many_c : nb::object();
    many_uncached_ = nb::bool_(many_u) ? many_u : nb::object();
    queue_cached_ = queue_method(many_cached_, "push_many");
    queue_uncached_ = queue_method(many_uncached_, "remove_many");
  }

  // -- transitions (the Python twin's API) ----------------------------------------------
  [[noreturn]] void raise_out_of_blocks(nb::handle needed, int64_t available) const {
    raise_instance(g_errors->out_of_blocks,
                   g_errors->out_of_blocks(needed, available, nb::str(tier.c_str())));
  }

  // `count`: any int, as the Python twin's (one past 2^63 is OutOfBlocks naming it, not a
  // TypeError from the binding: review s52 csrc, finding 3).
  nb::list allocate(nb::handle count_obj) {
    check_quiet("allocate");
    Py_ssize_t count = clamped_index(count_obj.ptr());
    if (count < 0) throw nb::value_error("allocate: count must be >= 0");
    if (count > free_q_.size()) raise_out_of_blocks(count_obj, free_q_.size());
    PyObject* l = PyList_New(static_cast<Py_ssize_t>(count));
    if (!l) throw_current();
    nb::list out = nb::steal<nb::list>(l);
    for (int64_t i = 0; i < count; ++i) {
      int32_t b;
      take(1, &b);
      PyList_SET_ITEM(out.ptr(), i, id_object(b));
    }
    record(out);
    return out;
  }

  void acquire_many(nb::handle ids) {
    check_quiet("acquire_many");
    read_ids(ids, n, buf_);
    reference_ids<false>(buf_, "acquire_many takes active or cached blocks");
    record(nb::none());
  }

  // acquire_many for a moment's hold, not a hit (a prefetch keeps a session's blocks from
  // its own evictions): a CACHED block taken adds nothing to reused_s, and when released it
  // is CACHED as of when it was before (a later hit counts its whole stay, an eviction none).
  void hold_many(nb::handle ids) {
    check_quiet("hold_many");
    read_ids(ids, n, buf_);
    reference_ids<true>(buf_, "hold_many takes active or cached blocks");
    record(nb::none());
  }

  void release_many(nb::handle ids, int64_t keep_unhashed) {
    check_quiet("release_many");
    read_ids(ids, n, buf_);
    check_releasable(buf_.data(), buf_.size());
    release(buf_.data(), buf_.size(), keep_unhashed);
    record(nb::none());
  }

  nb::list evict_many(nb::handle ids) {
    check_quiet("evict_many");
    read_ids(ids, n, buf_);
    nb::list out = evict_ids(buf_);
    record(out);
    return out;
  }

  // The call completed: `calls`, `last_result` (the old one's release runs no Python code:
  // a list of ints or of bytes and None).
  void record(nb::object result) {
    last_result = std::move(result);
    ++calls;
  }

  // evict_many of ids already read, each in [0, n): their old hashes, in order. The observer
  // is told first, so that a raising hook leaves every block as it was (CACHED, hashed), as
  // the policy, told nothing by the raise, still has them (review s49 hooks, finding 2).
  nb::list evict_ids(const std::vector<int32_t>& ids) {
    check_evictable(ids);
    notify(false, ids.data(), ids.size());  // (a hook cannot change the pool: check_quiet)
    return free_checked(ids);
  }

  // Tells the observer that `ids` leave CACHED (before free_ids_untold frees them).
  void tell_uncached(const int32_t* ids, size_t k) {
    check_quiet("evict_blocks");
    notify(false, ids, k);
  }

  // The pool's mutators call this first: a RuntimeError, nothing changed, while the pool is
  // telling its observer (a Python hook). A hook that changed the pool would leave the
  // caller's checked ids, its told blocks and its scratch buffers wrong (review s50
  // diff-acquire F1-F3): re-entrance is refused, not half-supported. Reads stay allowed.
  void check_quiet(const char* op) const {
    if (telling_) refuse_change(op);  // (a noreturn call: the compiler's cold path)
  }
  [[noreturn]] static void refuse_change(const char* op) {
    PyErr_Format(PyExc_RuntimeError, "a pool observer hook may not change the pool (%s)", op);
    throw_current();
  }

  // A ValueError naming the first of `ids` that is not CACHED or is named twice.
  void check_evictable(const std::vector<int32_t>& ids) {
    size_t k = ids.size();
    size_t i = 0;
    const char* why = nullptr;
    for (; i < k; ++i) {
      int32_t b = ids[i];
      if (state.data[b] != kCached) why = "evict_many takes cached blocks";
      else if (scratch_[b]++) why = "evict_many got it twice";
      if (why) break;
    }
    for (size_t j = 0; j < k && j <= i; ++j) scratch_[ids[j]] = 0;
    if (why) raise_state(ids[i], why);
  }

  // evict_ids without telling the observer (the manager core's victims, told first:
  // tell_uncached), checked here to be distinct CACHED blocks.
  nb::list free_ids_untold(const std::vector<int32_t>& ids) {
    check_quiet("evict_blocks");
    check_evictable(ids);
    return free_checked(ids);
  }

  // Frees `ids`, checked by check_evictable: their old hashes, in order.
  nb::list free_checked(const std::vector<int32_t>& ids) {
    size_t k = ids.size();
    PyObject* hashes = PyList_New(static_cast<Py_ssize_t>(k));
    if (!hashes) throw_current();
    nb::list out = nb::steal<nb::list>(hashes);
    for (size_t j = 0; j < k; ++j) PyList_SET_ITEM(hashes, j, free_cached(ids[j]));
    num_cached -= static_cast<int64_t>(k);
    return out;
  }

  // A CACHED block becomes FREE (at the free queue's tail); returns its old hash (a new
  // reference). The caller fixes num_cached and tells the observer.
  PyObject* free_cached(int32_t b) {
    PyObject* h = PyList_GET_ITEM(block_hash.ptr(), b);  // the reference moves to the caller
    PyList_SET_ITEM(block_hash.ptr(), b, Py_NewRef(Py_None));
    state.data[b] = kFree;
    free_q_.push(b);
    return h;
  }

  // -- internal, for the manager's hot loops (arguments already valid) ------------------
  void take(int64_t count, int32_t* out) {
    check_quiet("allocate");
    for (int64_t i = 0; i < count; ++i) {
      int32_t b = free_q_.pop();
      ref.data[b] = 1;
      state.data[b] = kActive;
      gen.data[b] += 1;
      out[i] = b;
    }
  }

  // acquire_many (Hold: hold_many) of ids already read, each in [0, n): one more reference
  // on each; a ValueError (`why`) naming the first FREE one. The observer is told first of
  // the CACHED ones (each once, in order), so that a raising hook changes nothing, as the
  // policy, told nothing by the raise, still has them cached (before, the references stayed
  // taken: a hit's blocks ACTIVE with no table holding them).
  template <bool Hold>
  void reference_ids(std::vector<int32_t>& ids, const char* why) {
    // The CACHED ids, marked ACTIVE as they are met so that one named twice is reclaimed
    // once (refcount 0 still: CACHED). No Python code runs until the marks are taken back
    // (recache) or the observer, a C++ queue, was told.
    std::vector<int32_t>& reclaimed = buf2_;
    reclaimed.clear();
    size_t k = ids.size();
    for (size_t i = 0; i < k; ++i) {
      int32_t b = ids[i], s = state.data[b];
      if (s == kCached) {
        state.data[b] = kActive;
        reclaimed.push_back(b);
      } else if (s == kFree) {
        recache(reclaimed);
        raise_state(b, why);
      }
    }
    if (reclaimed.empty()) {
      add_refs<Hold>(ids.data(), k);
      return;
    }
    if (!tells_python(false)) {
      try {
        notify(false, reclaimed.data(), reclaimed.size());
      } catch (...) {
        recache(reclaimed);
        throw;
      }
    } else {
      // A Python hook sees them CACHED (it may read the pool, not change it: check_quiet,
      // so ids and buf2_ are still this call's after it).
      recache(reclaimed);
      notify(false, reclaimed.data(), reclaimed.size());
      for (int32_t b : reclaimed) state.data[b] = kActive;
    }
    add_refs<Hold>(ids.data(), k);
    take_cached<Hold>(reclaimed);
  }

 private:
  [[noreturn]] void raise_state(int32_t b, const char* why) const {
    static const char* names[] = {"free", "active", "cached"};
    PyErr_Format(PyExc_ValueError, "%s block %d: %s", names[state.data[b]], b, why);
    throw_current();
  }

  // Every id must be ACTIVE and named at most refcount times.
  void check_releasable(const int32_t* ids, size_t k) {
    size_t i = 0;
    bool ok = true;
    for (; i < k; ++i) {
      int32_t b = ids[i];
      if (state.data[b] != kActive || ++scratch_[b] > ref.data[b]) {
        ok = false;
        break;
      }
    }
    for (size_t j = 0; j < k && j <= i; ++j) scratch_[ids[j]] = 0;
    if (!ok) raise_state(ids[i], "release_many names it more often than it is referenced");
  }

  void release(const int32_t* ids, size_t k, int64_t keep_unhashed) {
    std::vector<int32_t>& to_cache = buf2_;
    to_cache.clear();
    PyObject** hashes = reinterpret_cast<PyListObject*>(block_hash.ptr())->ob_item;
    for (size_t i = 0; i < k; ++i) {
      int32_t b = ids[i];
      if (--ref.data[b]) continue;
      // A held block is cached as of before its hold.
      bool was_held = num_held_ && unhold(b);
      if (hashes[b] != Py_None || b == keep_unhashed) {
        state.data[b] = kCached;
        if (!was_held) cached_at_[b] = clock;
        to_cache.push_back(b);
      } else {
        state.data[b] = kFree;
        free_q_.push(b);
      }
    }
    if (!to_cache.empty()) {
      num_cached += static_cast<int64_t>(to_cache.size());
      notify(true, to_cache.data(), to_cache.size());
    }
  }

  // The C++ queue whose own `name` method (push_many or remove_many) `fn` is, bound, when
  // its capacity is this pool's (LRU's order: the policy binds its hooks to them); else null.
  PyQueue* queue_method(const nb::object& fn, const char* name) const {
    if (!fn.is_valid()) return nullptr;
    nb::object self = nb::getattr(fn, "__self__", nb::none());
    PyQueue* q = nullptr;
    if (!nb::try_cast<PyQueue*>(self, q, false) || !q) return nullptr;
    if (!nb::getattr(fn, "__func__", nb::none()).is(nb::getattr(nb::type<PyQueue>(), name)))
      return nullptr;
    return q->raw().capacity() == n ? q : nullptr;
  }

  // The references of reference_ids, the observer told and its CACHED blocks marked ACTIVE
  // (refcount 0): one more on each (a hit also ends a hold: its next stay starts anew).
  template <bool Hold>
  void add_refs(const int32_t* ids, size_t k) {
    for (size_t i = 0; i < k; ++i) {
      int32_t b = ids[i];
      if (!Hold && num_held_) unhold(b);
      ref.data[b] += 1;
    }
  }

  // The CACHED accounting of reference_ids' `reclaimed`: num_cached, and each one's stay
  // (a hit's adds to reused_s; a hold's is kept: held_).
  template <bool Hold>
  void take_cached(const std::vector<int32_t>& reclaimed) {
    for (int32_t b : reclaimed) {
      if (Hold) {
        held_[b] = 1;
        ++num_held_;
      } else {
        reused_s += clock - cached_at_[b];
      }
    }
    num_cached -= static_cast<int64_t>(reclaimed.size());
  }

  // Sets telling_ for a Python hook's call, cleared however it ends (a raise included).
  struct Telling {
    bool& flag;
    explicit Telling(bool& f) : flag(f) { flag = true; }
    ~Telling() { flag = false; }
    Telling(const Telling&) = delete;
    Telling& operator=(const Telling&) = delete;
  };

  // Takes back reference_ids' marks: `ids` CACHED again.
  void recache(const std::vector<int32_t>& ids) {
    for (int32_t b : ids) state.data[b] = kCached;
  }

  // Whether notify(cached, ...) may run Python code (which may read the pool meanwhile): not
  // for a C++ queue's own method, nor without a hook.
  bool tells_python(bool cached) const {
    const nb::object& many = cached ? many_cached_ : many_uncached_;
    if ((cached ? queue_cached_ : queue_uncached_) && !many.is_none()) return false;
    return many.is_valid() || (cached ? one_cached_ : one_uncached_).is_valid();
  }

  // Tells the observer, in one call when it takes batches, else block by block (undone on
  // a raise: see undo_told). A batch callback that is a C++ queue's own method gets the
  // ids straight (the same checks and errors as through the call; `many_*_` keeps the
  // queue alive, unless the collector cleared it to None).
  void notify(bool cached, const int32_t* ids, size_t k) {
    const nb::object& many = cached ? many_cached_ : many_uncached_;
    PyQueue* q = cached ? queue_cached_ : queue_uncached_;
    if (q && !many.is_none()) {
      cached ? q->push_ids(ids, k) : q->remove_ids(ids, k);
      return;
    }
    // Python code from here on: the pool refuses changes until it returns (check_quiet),
    // so `ids` (often buf_) stays this call's.
    if (many.is_valid()) {
      nb::object hook = many, list = to_list(ids, k);  // (owned: see below)
      Telling telling(telling_);
      hook(list);
      return;
    }
    const nb::object& one = cached ? one_cached_ : one_uncached_;
    if (!one.is_valid()) return;
    // (owned here: a hook may set another observer meanwhile)
    nb::object hook = one, undo = cached ? one_uncached_ : one_cached_;
    Telling telling(telling_);
    size_t told = 0;
    try {
      for (size_t i = 0; i < k; ++i) {
        hook(ids[i]);
        ++told;
      }
    } catch (nb::python_error& e) {
      undo_told(undo, ids, told, e);
      throw;
    }
  }

  // pool.py `_each`: a per-block hook raised (`e`) after `told` blocks; the opposite hook
  // undoes them, last told first, so the raise told the observer nothing. An undo that
  // raises too stops there and adds a note to `e`.
  static void undo_told(const nb::object& undo, const int32_t* ids, size_t told,
                        nb::python_error& e) {
    for (size_t i = told; i-- > 0;) {
      try {
        undo(ids[i]);
      } catch (nb::python_error& u) {
        nb::object note = nb::str("undoing the hook for block {} raised too: {!r}")
                              .attr("format")(ids[i], u.value());
        e.value().attr("add_note")(note);
        return;
      }
    }
  }

  IntrusiveQueue free_q_;
  std::vector<int32_t> scratch_;  // per-block counters for batch checks; all 0 between calls
  std::vector<int32_t> buf_, buf2_;
  std::vector<double> cached_at_;  // when each CACHED block became so (`clock` then)
  std::vector<uint8_t> held_;      // 1: taken from CACHED by hold_many, not released since
  int64_t num_held_ = 0;
  bool telling_ = false;  // a Python hook of the observer is running (check_quiet)

  // Clears b's hold; returns whether it had one.
  bool unhold(int32_t b) {
    if (!held_[b]) return false;
    held_[b] = 0;
    --num_held_;
    return true;
  }
  nb::object observer_ = nb::none(), one_cached_, one_uncached_, many_cached_, many_uncached_;
  PyQueue* queue_cached_ = nullptr;  // see queue_method
  PyQueue* queue_uncached_ = nullptr;

 public:
  // The observer (a policy) holds the manager, which holds this pool: a cycle that Python's
  // collector must see through (tp_traverse / tp_clear below).
  template <class F>
  void for_each_ref(F&& f) {
    for (nb::object* o : {&block_hash, &observer_, &one_cached_, &one_uncached_, &many_cached_,
                          &many_uncached_, &last_result})
      f(*o);
  }
};

}  // namespace kvcore
