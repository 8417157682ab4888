// kvsaga._kvcore.ShadowLoops: a shadow cache's per-block loops (adaptive's shadow_cache,
// kvsaga/policy/shadow.py), the twin of kvsaga/policy/shadow_loops.py's PyShadowLoops (the
// reference; read its docstrings for what each method means). tests/policy/
// test_shadow_loops.py drives both side by side.
//
// Why: adaptive replays every step in one shadow pool per expert, and each step's blocks pass
// through these loops in each shadow; as Python bytecode over tables of the pool's length,
// which a step finds out of the CPU caches, they were more than half of the shadows' cost (a
// third of adaptive's whole step) at 4,000 paused sessions. The tables stay the shadow's
// Python objects (its expert reads them as it reads the real pool's): here each loop is one
// call that stores into them in place.
// Bad input (a block id out of range, an evicted block that is not cached) raises before
// anything is changed.
#pragma once
#include <nanobind/nanobind.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "kvcore_common.h"
#include "prefetch.h"

namespace kvcore {

class ShadowLoops {
 public:
  ShadowLoops(nb::handle state, nb::handle ref, nb::handle gen, nb::handle owner,
              nb::handle position, nb::handle block_hash, nb::handle free, nb::handle index,
              std::string name)
      : name_(std::move(name)) {
    if (!PyByteArray_CheckExact(state.ptr())) throw nb::type_error("state must be a bytearray");
    n_ = PyByteArray_GET_SIZE(state.ptr());
    if (n_ > INT32_MAX) throw nb::value_error("a shadow of more than 2^31 - 1 blocks");
    const char* what[] = {"ref", "owner", "position", "block_hash"};
    nb::handle lists[] = {ref, owner, position, block_hash};
    for (int i = 0; i < 4; ++i)
      if (!PyList_CheckExact(lists[i].ptr()) || PyList_GET_SIZE(lists[i].ptr()) != n_) {
        PyErr_Format(PyExc_TypeError, "%s must be a list of %zd entries, one per block", what[i],
                     n_);
        throw_current();
      }
    if (!PyList_CheckExact(free.ptr()) || !PyDict_CheckExact(index.ptr()))
      throw nb::type_error("free must be a list and index a dict");
    // The generations: int64s in place (held as a buffer export, so that the memoryview
    // cannot be released or its bytes resized while these loops write them).
    if (!PyMemoryView_Check(gen.ptr()) ||
        PyObject_GetBuffer(gen.ptr(), &gen_buf_,
                           PyBUF_FORMAT | PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) != 0) {
      PyErr_Clear();
      PyErr_Format(PyExc_TypeError, "gen must be a writable memoryview of %zd int64s ('q')", n_);
      throw_current();
    }
    if (gen_buf_.ndim != 1 || gen_buf_.itemsize != 8 || gen_buf_.shape[0] != n_ ||
        !gen_buf_.format || std::string(gen_buf_.format) != "q") {
      PyBuffer_Release(&gen_buf_);
      PyErr_Format(PyExc_TypeError, "gen must be a writable memoryview of %zd int64s ('q')", n_);
      throw_current();
    }
    reserve_ids(static_cast<int32_t>(n_));  // the ids these loops hand back, made once
    state_ = nb::borrow(state);
    ref_ = nb::borrow(ref);
    owner_ = nb::borrow(owner);
    position_ = nb::borrow(position);
    hash_ = nb::borrow(block_hash);
    free_ = nb::borrow(free);
    index_ = nb::borrow(index);
  }

  ~ShadowLoops() { PyBuffer_Release(&gen_buf_); }
  ShadowLoops(const ShadowLoops&) = delete;
  ShadowLoops& operator=(const ShadowLoops&) = delete;

  nb::list hits(nb::handle hashes, Py_ssize_t limit) {
    nb::object fast = steal_or_throw(PySequence_Fast(hashes.ptr(), "hashes must be a sequence"));
    Py_ssize_t k = PySequence_Fast_GET_SIZE(fast.ptr());
    if (limit < 0) limit = std::max<Py_ssize_t>(k + limit, 0);  // as hashes[:limit] reads
    k = std::min(k, limit);
    nb::list out;
    for (Py_ssize_t i = 0; i < k; ++i) {
      PyObject* b = PyDict_GetItemWithError(index_.ptr(), PySequence_Fast_GET_ITEM(fast.ptr(), i));
      if (!b) {
        if (PyErr_Occurred()) throw_current();
        break;
      }
      if (b == Py_None) break;
      if (PyList_Append(out.ptr(), b)) throw_current();
    }
    return out;
  }

  nb::list take(nb::handle hits, nb::handle sid) {
    nb::object fast = steal_or_throw(PySequence_Fast(hits.ptr(), "hits must be a sequence"));
    std::vector<int32_t> ids;
    read_ids(fast, n(), ids);
    check_sizes();
    nb::list reclaimed;
    char* state = PyByteArray_AS_STRING(state_.ptr());
    for (size_t i = 0; i < ids.size(); ++i) {
      const int32_t b = ids[i];
      long r = int_at(ref_, b);
      if (r == 0) {
        state[b] = kActive;
        if (append_id(reclaimed, b)) throw_current();
      }
      store(ref_, b, PyLong_FromLong(r + 1));
      PyObject* o = PyList_GET_ITEM(owner_.ptr(), b);
      int ne = o == sid.ptr() ? 0 : PyObject_RichCompareBool(o, sid.ptr(), Py_NE);
      if (ne < 0) throw_current();
      if (ne) store(owner_, b, Py_NewRef(Py_None));
    }
    return reclaimed;
  }

  int64_t allocate(nb::handle sid, nb::handle table, nb::handle hashes, int64_t need,
                   int64_t full) {
    if (!PyList_CheckExact(table.ptr())) throw nb::type_error("table must be a list");
    nb::object fast = steal_or_throw(PySequence_Fast(hashes.ptr(), "hashes must be a sequence"));
    check_sizes();
    PyObject* free = free_.ptr();
    const Py_ssize_t first = PyList_GET_SIZE(table.ptr());
    const int64_t k = std::max<int64_t>(std::min<int64_t>(need, PyList_GET_SIZE(free)), 0);
    // Every block handed out is checked (an int, a block) before anything changes.
    const Py_ssize_t top = PyList_GET_SIZE(free);
    std::vector<int32_t> ids(static_cast<size_t>(k));
    for (int64_t j = 0; j < k; ++j) ids[j] = block_at(PyList_GET_ITEM(free, top - 1 - j));
    const int64_t hashed = std::min<int64_t>(first + k, full);
    if (hashed > PySequence_Fast_GET_SIZE(fast.ptr()))
      throw nb::index_error("allocate: fewer hashes than full blocks");
    // Every hash to be indexed is hashed first (an unhashable one raises here, not half-way).
    for (Py_ssize_t i = first; i < hashed; ++i)
      if (PyObject_Hash(PySequence_Fast_GET_ITEM(fast.ptr(), i)) == -1) throw_current();
    char* state = PyByteArray_AS_STRING(state_.ptr());
    int64_t* gen = static_cast<int64_t*>(gen_buf_.buf);
    for (int64_t j = 0; j < k; ++j) {
      const int32_t b = ids[j];
      nb::object obj = nb::borrow(PyList_GET_ITEM(free, top - 1 - j));
      const Py_ssize_t i = first + j;
      store(ref_, b, PyLong_FromLong(1));
      state[b] = kActive;
      ++gen[b];
      store(owner_, b, Py_NewRef(sid.ptr()));
      store(position_, b, PyLong_FromSsize_t(i));
      store(hash_, b, Py_NewRef(Py_None));
      if (PyList_Append(table.ptr(), obj.ptr())) throw_current();
      if (i < full) index_block(obj, b, PySequence_Fast_GET_ITEM(fast.ptr(), i));
    }
    if (k && PyList_SetSlice(free, top - k, top, nullptr)) throw_current();
    return k;
  }

  void index_block(nb::handle b, nb::handle h) {
    const int32_t id = block_at(b.ptr());
    check_sizes();
    index_block(steal_or_throw(id_object(id)), id, h.ptr());
  }

  void evict(nb::handle victims) {
    nb::object fast = steal_or_throw(PySequence_Fast(victims.ptr(), "victims must be a sequence"));
    std::vector<int32_t> ids;
    read_ids(fast, n(), ids);
    check_sizes();
    char* state = PyByteArray_AS_STRING(state_.ptr());
    for (size_t i = 0; i < ids.size(); ++i) {
      if (state[ids[i]] != kCached) {
        for (size_t j = 0; j < i; ++j) state[ids[j]] = kCached;
        PyErr_Format(PyExc_RuntimeError, "shadow '%s' named block %d, not cached", name_.c_str(),
                     ids[i]);
        throw_current();
      }
      state[ids[i]] = kFree;
    }
    PyObject* index = index_.ptr();
    PyObject** hashes = items(hash_);
    const int64_t k = static_cast<int64_t>(ids.size());
    for (int64_t i = 0; i < k; ++i) {
      const int32_t b = ids[i];
      // Each victim's hash object (its cached hash leads to the index's entry), fetched ahead.
      if (i + kFar < k) KV_PREFETCH(&hashes[ids[i + kFar]]);
      if (i + kNear < k) KV_PREFETCH(hashes[ids[i + kNear]]);
      PyObject* h = PyList_GET_ITEM(hash_.ptr(), b);
      if (h != Py_None) {
        PyObject* held = PyDict_GetItemWithError(index, h);
        if (!held && PyErr_Occurred()) throw_current();
        long v;
        if (held && (small_long(held, v) ? v == b : same_int(held, b)) &&
            PyDict_DelItem(index, h))
          throw_current();
      }
      store(hash_, b, Py_NewRef(Py_None));
      if (append_id(free_, b)) throw_current();
    }
  }

  void disown(nb::handle blocks) {
    std::vector<int32_t> ids;
    read_ids(blocks, n(), ids);
    check_sizes();
    for (int32_t b : ids) store(owner_, b, Py_NewRef(Py_None));
  }

  nb::tuple release(nb::handle table, int64_t tail) {
    std::vector<int32_t> ids;
    read_ids(table, n(), ids);
    check_sizes();
    char* state = PyByteArray_AS_STRING(state_.ptr());
    nb::list to_cache;
    int64_t released = 0;
    for (size_t i = ids.size(); i-- > 0;) {
      const int32_t b = ids[i];
      const long r = int_at(ref_, b) - 1;
      store(ref_, b, PyLong_FromLong(r));
      if (r) continue;
      ++released;
      if (PyList_GET_ITEM(hash_.ptr(), b) != Py_None || b == tail) {
        state[b] = kCached;
        if (append_id(to_cache, b)) throw_current();
      } else {
        state[b] = kFree;
        if (append_id(free_, b)) throw_current();
      }
    }
    return nb::make_tuple(to_cache, released);
  }

  template <class F>
  void for_each_ref(F&& f) {
    for (nb::object* o : {&state_, &ref_, &owner_, &position_, &hash_, &free_, &index_})
      f(*o);
  }

 private:
  static constexpr int64_t kFar = 16, kNear = 8;  // prefetch distances, in blocks

  int32_t n() const { return static_cast<int32_t>(n_); }

  // Block `b` appended to list `l` as an int (what the caller named it by, bool or index-like,
  // converted as the Python twin converts it); nonzero on failure, an error set.
  static int append_id(const nb::object& l, int32_t b) {
    PyObject* o = id_object(b);
    if (!o) return -1;
    const int rc = PyList_Append(l.ptr(), o);
    Py_DECREF(o);
    return rc;
  }

  static PyObject** items(const nb::object& l) {
    return reinterpret_cast<PyListObject*>(l.ptr())->ob_item;
  }

  // The tables keep their lengths (a Python caller could have resized one: refuse).
  void check_sizes() const {
    if (!PyByteArray_CheckExact(state_.ptr()) || PyByteArray_GET_SIZE(state_.ptr()) != n_ ||
        PyList_GET_SIZE(ref_.ptr()) != n_ ||
        PyList_GET_SIZE(owner_.ptr()) != n_ || PyList_GET_SIZE(position_.ptr()) != n_ ||
        PyList_GET_SIZE(hash_.ptr()) != n_)
      throw nb::value_error("a shadow's per-block table changed its length");
  }

  int32_t block_at(PyObject* o) const {
    long v = as_long(o);
    if (v == -1 && PyErr_Occurred()) throw_current();
    if (v < 0 || v >= n_) {
      PyErr_Format(PyExc_IndexError, "block id %ld out of range [0, %zd)", v, n_);
      throw_current();
    }
    return static_cast<int32_t>(v);
  }

  static bool same_int(PyObject* o, int32_t b) {
    nb::object x = steal_or_throw(PyLong_FromLong(b));
    int eq = PyObject_RichCompareBool(o, x.ptr(), Py_EQ);
    if (eq < 0) throw_current();
    return eq;
  }

  static long int_at(const nb::object& l, int32_t b) {
    long v = as_long(PyList_GET_ITEM(l.ptr(), b));
    if (v == -1 && PyErr_Occurred()) throw_current();
    return v;
  }

  // l[b] = v (a new reference), the old value released after the store.
  static void store(const nb::object& l, int32_t b, PyObject* v) {
    if (!v) throw_current();
    PyObject** it = items(l);
    PyObject* old = it[b];
    it[b] = v;
    Py_XDECREF(old);
  }

  void index_block(nb::handle obj, int32_t b, PyObject* h) {
    int has = PyDict_Contains(index_.ptr(), h);
    if (has < 0) throw_current();
    if (has) {
      store(hash_, b, Py_NewRef(Py_None));
    } else {
      if (PyDict_SetItem(index_.ptr(), h, obj.ptr())) throw_current();
      store(hash_, b, Py_NewRef(h));
    }
  }

  std::string name_;
  Py_ssize_t n_ = 0;
  nb::object state_, ref_, owner_, position_, hash_, free_, index_;
  Py_buffer gen_buf_{};
};

}  // namespace kvcore
