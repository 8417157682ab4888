// A victim search's runs off the session groups, in one C++ call each (the twins and
// references are kvsaga/policy/victim_runs.py's `tail_victims` and `cut_tails`, which
// PySessionHeap carries; tests/policy/test_victim_runs.py runs both side by side).
//
// `groups` is the grouped policy's dict: session id -> its cached blocks, tail first (a list).
// A search's runs (session, count) name the tails it evicts: `tail_victims` concatenates them
// (the victims), `cut_tails` takes them off their groups when the pool uncaches them and marks
// the sessions for re-keying. Why in C++: each was a Python loop over the runs whose
// bytecode, frames and C-API paths a search between two steps finds out of the CPU caches,
// the glue around the index that cost more there than the index's own work.
#pragma once
#include <nanobind/nanobind.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "timed_record.h"

namespace victim_runs {

namespace nb = nanobind;
using timed_record::throw_current;

// Python code can run in the middle of each call (a count's `__index__`, a session id's
// `__hash__` / `__eq__`, a block's `__eq__`, the garbage collector's finalizers on any
// allocation) and change `runs`, `groups`, the groups' lists or `block_ids`. So the calls
// read the runs off a snapshot, convert every count before any group is read, hold a
// reference to each group and session id they keep, and read a list's length only with no
// Python code run between it and the reads it bounds: each step is the Python twin's, in
// its order, so both answer alike even then.

// `runs`, checked (a list of 2-tuples), as a tuple: the runs as the call began, each
// session id and count held by it.
inline nb::tuple read_runs(nb::handle groups, nb::handle runs) {
  if (!PyDict_Check(groups.ptr())) throw nb::type_error("groups must be a dict");
  PyObject* rs = runs.ptr();
  bool ok = PyList_Check(rs);
  for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(rs); ++i) {
    PyObject* r = PyList_GET_ITEM(rs, i);
    ok = PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 2;
  }
  if (!ok) throw nb::type_error("runs must be a list of (session, count) tuples");
  PyObject* t = PyList_AsTuple(rs);
  if (!t) throw_current();
  return nb::steal<nb::tuple>(t);
}

// Run `i`'s session id (held by `runs`).
inline PyObject* sid_of(const nb::tuple& runs, Py_ssize_t i) {
  return PyTuple_GET_ITEM(PyTuple_GET_ITEM(runs.ptr(), i), 0);
}

// The count of run `i` (an integer, or an object with __index__; one beyond Py_ssize_t is
// clipped to it, which every use reads as the Python twin reads the unclipped count).
inline Py_ssize_t read_count(const nb::tuple& runs, Py_ssize_t i) {
  PyObject* count = PyTuple_GET_ITEM(PyTuple_GET_ITEM(runs.ptr(), i), 1);
  if (!PyIndex_Check(count)) {
    PyErr_Format(PyExc_TypeError, "runs: a count must be an integer, got %s",
                 Py_TYPE(count)->tp_name);
    throw_current();
  }
  Py_ssize_t k = PyNumber_AsSsize_t(count, nullptr);
  if (k == -1 && PyErr_Occurred()) throw_current();
  return k;
}

// The runs' counts, each read by `read_count` before any group is read; on the stack for a
// search's usual few runs (a heap allocation is a measurable share of a call on a few runs).
class Counts {
 public:
  explicit Counts(Py_ssize_t n) : at_(small_) {
    if (n > kSmall) {
      big_.resize(n);
      at_ = big_.data();
    }
  }
  Py_ssize_t& operator[](Py_ssize_t i) { return at_[i]; }

 private:
  static constexpr Py_ssize_t kSmall = 16;
  Py_ssize_t small_[kSmall];
  std::vector<Py_ssize_t> big_;
  Py_ssize_t* at_;
};

// The group of `sid` in `groups` (a list, held), or a null object when it has none.
inline nb::object group_of(nb::handle groups, PyObject* sid) {
  PyObject* g = PyDict_GetItemWithError(groups.ptr(), sid);
  if (!g) {
    if (PyErr_Occurred()) throw_current();
    return nb::object();
  }
  if (!PyList_Check(g)) throw nb::type_error("groups: a session's group must be a list");
  return nb::borrow(g);
}

// References owned until handed on to a list (`release`), dropped otherwise (an error).
class OwnedRefs {
 public:
  OwnedRefs() = default;
  OwnedRefs(const OwnedRefs&) = delete;
  OwnedRefs& operator=(const OwnedRefs&) = delete;
  ~OwnedRefs() {
    for (PyObject* o : refs_) Py_DECREF(o);
  }
  // list[:k] (k <= its length), read now.
  void add_slice(PyObject* list, Py_ssize_t k) {
    const size_t need = refs_.size() + static_cast<size_t>(k);
    if (need > refs_.capacity()) refs_.reserve(std::max(need, 2 * refs_.capacity()));
    for (Py_ssize_t j = 0; j < k; ++j) {
      PyObject* o = PyList_GET_ITEM(list, j);
      Py_INCREF(o);
      refs_.push_back(o);
    }
  }
  // A new list that owns them, in order (none are left here).
  nb::list release() {
    PyObject* out = PyList_New(static_cast<Py_ssize_t>(refs_.size()));
    if (!out) throw_current();
    for (size_t j = 0; j < refs_.size(); ++j)
      PyList_SET_ITEM(out, static_cast<Py_ssize_t>(j), refs_[j]);
    refs_.clear();
    return nb::steal<nb::list>(out);
  }

 private:
  std::vector<PyObject*> refs_;
};

// groups[sid][:k] for each run (sid, k), concatenated; KeyError for a session without a
// group, ValueError for a negative count (nothing is changed either way).
inline nb::list tail_victims(nb::handle groups, nb::handle runs) {
  const nb::tuple rs = read_runs(groups, runs);
  const Py_ssize_t n = PyTuple_GET_SIZE(rs.ptr());
  Counts counts(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    counts[i] = read_count(rs, i);
    if (counts[i] < 0) throw nb::value_error("runs: a count must be >= 0");
  }
  OwnedRefs taken;  // the victims, each held: a later lookup's Python code may free a group
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* sid = sid_of(rs, i);
    const nb::object g = group_of(groups, sid);
    if (!g.is_valid()) {
      PyErr_SetObject(PyExc_KeyError, sid);
      throw_current();
    }
    // The slice g[:k], taken now (no Python code runs from the length read to the copies).
    taken.add_slice(g.ptr(), std::min(counts[i], PyList_GET_SIZE(g.ptr())));
  }
  return taken.release();
}

// g[:k] != ids[at:at + k] as Python compares the two slices: unequal when their lengths
// (read now) differ, else item by item, identity first, up to the first unequal pair.
// Exact ints (block ids) compare with no Python code run; from the first other pair on,
// the rest of both slices is read and held first, as Python's slices hold their items.
inline bool slices_differ(PyObject* g, PyObject* ids, Py_ssize_t at, Py_ssize_t k) {
  const Py_ssize_t len = std::min(k, PyList_GET_SIZE(g));
  if (std::max<Py_ssize_t>(0, std::min(at + k, PyList_GET_SIZE(ids)) - at) != len) return true;
  Py_ssize_t j = 0;
  for (; j < len; ++j) {
    PyObject* a = PyList_GET_ITEM(g, j);
    PyObject* b = PyList_GET_ITEM(ids, at + j);
    if (a == b) continue;
    if (!PyLong_CheckExact(a) || !PyLong_CheckExact(b)) break;
    int eq = PyObject_RichCompareBool(a, b, Py_EQ);
    if (eq < 0) throw_current();
    if (!eq) return true;
  }
  std::vector<std::pair<nb::object, nb::object>> rest;
  rest.reserve(len - j);
  for (; j < len; ++j)
    rest.emplace_back(nb::borrow(PyList_GET_ITEM(g, j)), nb::borrow(PyList_GET_ITEM(ids, at + j)));
  for (const auto& [a, b] : rest) {
    int eq = PyObject_RichCompareBool(a.ptr(), b.ptr(), Py_EQ);
    if (eq < 0) throw_current();
    if (!eq) return true;
  }
  return false;
}

constexpr Py_ssize_t kFewRuns = 16;  // runs whose session ids `cut_tails` compares pairwise

// Take each run (sid, k) of `runs` off the tail of its group in `groups` when the runs are
// `block_ids` in order, all of them, each run its session's first k blocks and no session
// twice: delete them (the whole group when k is its length) and add each session to every
// set of `dirty` (a tuple of sets). True when done; False, nothing changed, for any other
// batch (a count < 1 included); TypeError for a group that is not a list.
inline bool cut_tails(nb::handle groups, nb::handle runs, nb::handle block_ids,
                      nb::handle dirty) {
  const nb::tuple rs = read_runs(groups, runs);
  if (!PyList_Check(block_ids.ptr())) throw nb::type_error("block_ids must be a list");
  if (!PyTuple_Check(dirty.ptr())) throw nb::type_error("dirty must be a tuple of sets");
  for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(dirty.ptr()); ++j)
    if (!PySet_Check(PyTuple_GET_ITEM(dirty.ptr(), j)))
      throw nb::type_error("dirty must be a tuple of sets");
  const Py_ssize_t n = PyTuple_GET_SIZE(rs.ptr());
  Counts counts(n);
  for (Py_ssize_t r = 0; r < n; ++r) {
    counts[r] = read_count(rs, r);
    if (counts[r] < 1) return false;
  }
  PyObject* ids = block_ids.ptr();
  std::vector<nb::object> cut;  // each run's group, checked first
  cut.reserve(n);
  // No session twice: the few str ids of a search's runs compared with those before (no
  // Python code runs for an exact str, and no set is made), other ids through a set.
  bool few_str = n <= kFewRuns;
  for (Py_ssize_t r = 0; few_str && r < n; ++r) few_str = PyUnicode_CheckExact(sid_of(rs, r));
  nb::object seen;
  if (!few_str) {
    seen = nb::steal(PySet_New(nullptr));
    if (!seen.is_valid()) throw_current();
  }
  Py_ssize_t i = 0;
  for (Py_ssize_t r = 0; r < n; ++r) {
    PyObject* sid = sid_of(rs, r);
    const Py_ssize_t k = counts[r];
    nb::object g = group_of(groups, sid);
    if (!g.is_valid() || k > PyList_GET_SIZE(g.ptr()) || i + k > PyList_GET_SIZE(ids))
      return false;
    int dup = 0;
    if (few_str) {
      for (Py_ssize_t q = 0; !dup && q < r; ++q) {
        PyObject* other = sid_of(rs, q);
        dup = other == sid || PyUnicode_Compare(other, sid) == 0;
      }
    } else if ((dup = PySet_Contains(seen.ptr(), sid)) < 0) {
      throw_current();
    }
    if (dup || slices_differ(g.ptr(), ids, i, k)) return false;
    if (!few_str && PySet_Add(seen.ptr(), sid) < 0) throw_current();
    cut.push_back(std::move(g));
    i += k;
  }
  if (i != PyList_GET_SIZE(ids)) return false;  // an id no run names
  // Checked: now the cuts (a group's deletion from the dict, else a slice off its list).
  for (Py_ssize_t r = 0; r < n; ++r) {
    PyObject* sid = sid_of(rs, r);
    PyObject* g = cut[r].ptr();
    if (counts[r] == PyList_GET_SIZE(g)) {
      if (PyDict_DelItem(groups.ptr(), sid) < 0) throw_current();
    } else if (PyList_SetSlice(g, 0, counts[r], nullptr) < 0) {
      throw_current();
    }
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(dirty.ptr()); ++j)
      if (PySet_Add(PyTuple_GET_ITEM(dirty.ptr(), j), sid) < 0) throw_current();
  }
  return true;
}

}  // namespace victim_runs
