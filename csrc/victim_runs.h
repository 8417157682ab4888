// A victim search's runs off the session groups, in one C++ call each (the twins and
// references are PySessionHeap's `tail_victims` and `cut_tails`, kvsaga/policy/
// session_heap.py; tests/policy/test_victim_runs.py runs both side by side).
//
// `groups` is the grouped policy's dict: session id -> its cached blocks, tail first (a list).
// A search's runs (session, count) name the tails it evicts: `tail_victims` concatenates them
// (the victims), `cut_tails` takes them off their groups when the pool uncaches them and marks
// the sessions for re-keying. Why in C++: each was a Python loop over the runs whose
// bytecode, frames and C-API paths a search between two steps finds out of the CPU caches,
// the glue around the index that cost more there than the index's own work.
#pragma once
#include <nanobind/nanobind.h>

#include <cstdint>
#include <vector>

#include "timed_record.h"

namespace victim_runs {

namespace nb = nanobind;
using timed_record::throw_current;

// (session, count) of run `i` of `runs` (a list of 2-tuples: `check_args`).
inline void read_run(PyObject* runs, Py_ssize_t i, PyObject*& sid, Py_ssize_t& k) {
  PyObject* r = PyList_GET_ITEM(runs, i);
  sid = PyTuple_GET_ITEM(r, 0);
  PyObject* count = PyTuple_GET_ITEM(r, 1);
  if (!PyIndex_Check(count)) {
    PyErr_Format(PyExc_TypeError, "runs: a count must be an integer, got %s",
                 Py_TYPE(count)->tp_name);
    throw_current();
  }
  k = PyNumber_AsSsize_t(count, PyExc_OverflowError);
  if (k == -1 && PyErr_Occurred()) throw_current();
}

// The group of `sid` in `groups` (a borrowed list), or nullptr when it has none.
inline PyObject* group_of(PyObject* groups, PyObject* sid) {
  PyObject* g = PyDict_GetItemWithError(groups, sid);
  if (!g) {
    if (PyErr_Occurred()) throw_current();
    return nullptr;
  }
  if (!PyList_Check(g)) throw nb::type_error("groups: a session's group must be a list");
  return g;
}

inline void check_args(nb::handle groups, nb::handle runs) {
  if (!PyDict_Check(groups.ptr())) throw nb::type_error("groups must be a dict");
  PyObject* rs = runs.ptr();
  bool ok = PyList_Check(rs);
  for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(rs); ++i) {
    PyObject* r = PyList_GET_ITEM(rs, i);
    ok = PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 2;
  }
  if (!ok) throw nb::type_error("runs must be a list of (session, count) tuples");
}

// groups[sid][:k] for each run (sid, k), concatenated; KeyError for a session without a
// group, ValueError for a negative count (nothing is changed either way).
inline nb::list tail_victims(nb::handle groups, nb::handle runs) {
  check_args(groups, runs);
  PyObject* rs = runs.ptr();
  const Py_ssize_t n = PyList_GET_SIZE(rs);
  std::vector<std::pair<PyObject*, Py_ssize_t>> taken;
  taken.reserve(n);
  Py_ssize_t total = 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* sid;
    Py_ssize_t k;
    read_run(rs, i, sid, k);
    if (k < 0) throw nb::value_error("runs: a count must be >= 0");
    PyObject* g = group_of(groups.ptr(), sid);
    if (!g) {
      PyErr_SetObject(PyExc_KeyError, sid);
      throw_current();
    }
    if (k > PyList_GET_SIZE(g)) k = PyList_GET_SIZE(g);  // (as the slice g[:k] reads)
    taken.emplace_back(g, k);
    total += k;
  }
  nb::list out = nb::steal<nb::list>(PyList_New(total));
  if (!out.is_valid()) throw_current();
  Py_ssize_t at = 0;
  for (const auto& [g, k] : taken) {
    for (Py_ssize_t j = 0; j < k; ++j) {
      PyObject* b = PyList_GET_ITEM(g, j);
      Py_INCREF(b);
      PyList_SET_ITEM(out.ptr(), at++, b);
    }
  }
  return out;
}

// Take each run (sid, k) of `runs` off the tail of its group in `groups` when the runs are
// `block_ids` in order, each run its session's first k blocks and no session twice: delete
// them (the whole group when k is its length) and add each session to every set of
// `dirty` (a tuple of sets). True when done; False, nothing changed, for any other batch
// (a count < 1 included).
inline bool cut_tails(nb::handle groups, nb::handle runs, nb::handle block_ids,
                      nb::handle dirty) {
  check_args(groups, runs);
  if (!PyList_Check(block_ids.ptr())) throw nb::type_error("block_ids must be a list");
  if (!PyTuple_Check(dirty.ptr())) throw nb::type_error("dirty must be a tuple of sets");
  for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(dirty.ptr()); ++j)
    if (!PySet_Check(PyTuple_GET_ITEM(dirty.ptr(), j)))
      throw nb::type_error("dirty must be a tuple of sets");
  PyObject* rs = runs.ptr();
  PyObject* ids = block_ids.ptr();
  const Py_ssize_t n = PyList_GET_SIZE(rs), nb_ids = PyList_GET_SIZE(ids);
  std::vector<std::pair<PyObject*, Py_ssize_t>> cut;  // (group, k), checked first
  cut.reserve(n);
  nb::object seen = nb::steal(PySet_New(nullptr));
  if (!seen.is_valid()) throw_current();
  Py_ssize_t i = 0;
  for (Py_ssize_t r = 0; r < n; ++r) {
    PyObject* sid;
    Py_ssize_t k;
    read_run(rs, r, sid, k);
    if (k < 1) return false;
    PyObject* g = group_of(groups.ptr(), sid);
    if (!g || k > PyList_GET_SIZE(g) || i + k > nb_ids) return false;
    int dup = PySet_Contains(seen.ptr(), sid);
    if (dup < 0) throw_current();
    if (dup) return false;
    for (Py_ssize_t j = 0; j < k; ++j) {
      PyObject* a = PyList_GET_ITEM(g, j);
      PyObject* b = PyList_GET_ITEM(ids, i + j);
      if (a == b) continue;
      int eq = PyObject_RichCompareBool(a, b, Py_EQ);
      if (eq < 0) throw_current();
      if (!eq) return false;
    }
    if (PySet_Add(seen.ptr(), sid) < 0) throw_current();
    cut.emplace_back(g, k);
    i += k;
  }
  // Checked: now the cuts (a group's deletion from the dict, else a slice off its list).
  for (Py_ssize_t r = 0; r < n; ++r) {
    PyObject* sid = PyTuple_GET_ITEM(PyList_GET_ITEM(rs, r), 0);
    const auto& [g, k] = cut[r];
    if (k == PyList_GET_SIZE(g)) {
      if (PyDict_DelItem(groups.ptr(), sid) < 0) throw_current();
    } else if (PyList_SetSlice(g, 0, k, nullptr) < 0) {
      throw_current();
    }
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(dirty.ptr()); ++j)
      if (PySet_Add(PyTuple_GET_ITEM(dirty.ptr(), j), sid) < 0) throw_current();
  }
  return true;
}

}  // namespace victim_runs
