// ManagerCore.evict_runs' reading and cutting of a grouped policy's victim runs (issue 11:
// eviction cost). A usual search of the indexed policies (kvsaga/policy/search.py,
// fast_search.py) answers with runs (session, count), each its session's tail: the first k
// blocks of its group (kvsaga/policy/groups.py: session id -> its cached blocks, tail first).
// The core reads the victims off the groups as C++ ids, where the Python path made a list of
// them (victim_runs.h `tail_victims`), had the manager check and evict that list, and had
// the pool call the policy's `blocks_uncached` back, which cut the runs off the groups
// (`cut_tails`). The cut here is that one: the same groups and marks after it.
#pragma once
#include <algorithm>
#include <vector>

#include "block_pool.h"
#include "kvcore_common.h"

namespace kvcore {

// A run read off `runs`: its session id and group (each held) and its count.
struct TailRun {
  nb::object sid, group;
  Py_ssize_t k;
};

[[noreturn]] inline void bad_runs(const char* why, PyObject* o) {
  PyErr_Format(PyExc_RuntimeError, "evict_runs: the policy's runs %s (%R)", why, o);
  throw_current();
}

// The runs of `runs` (a list of (session id, count) tuples) against `groups`, checked: each
// a session with a group (a list) and a count k >= 1 of at most its length, `num_blocks`
// blocks in all, each an exact int naming a distinct CACHED block of `pool`. Fills `out` with
// the runs and `ids` with their blocks, in order; RuntimeError (TypeError for arguments of
// the wrong type) naming what is wrong otherwise, nothing changed. The groups are looked up
// first (a session id's __hash__ / __eq__ may run Python code); from the first length read
// on, no Python code runs.
inline void read_tail_runs(const Pool& pool, nb::handle groups, nb::handle runs,
                           nb::handle dirty, int64_t num_blocks, std::vector<TailRun>& out,
                           std::vector<int32_t>& ids, std::vector<int32_t>& sorted) {
  out.clear();
  if (!PyDict_Check(groups.ptr())) throw nb::type_error("evict_runs: groups must be a dict");
  bool sets = PyTuple_Check(dirty.ptr());
  for (Py_ssize_t j = 0; sets && j < PyTuple_GET_SIZE(dirty.ptr()); ++j)
    sets = PySet_Check(PyTuple_GET_ITEM(dirty.ptr(), j));
  if (!sets) throw nb::type_error("evict_runs: dirty must be a tuple of sets");
  if (!PyList_Check(runs.ptr())) throw nb::type_error("evict_runs: runs must be a list");
  const nb::object snap = steal_or_throw(PyList_AsTuple(runs.ptr()));  // runs as called
  const Py_ssize_t n = PyTuple_GET_SIZE(snap.ptr());
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* r = PyTuple_GET_ITEM(snap.ptr(), i);
    if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) != 2) bad_runs("hold a non-(session, count)", r);
    PyObject* count = PyTuple_GET_ITEM(r, 1);
    long k = 0;
    if (!small_long(count, k) || k < 1) bad_runs("hold a count that is not an int >= 1", r);
    PyObject* g = PyDict_GetItemWithError(groups.ptr(), PyTuple_GET_ITEM(r, 0));
    if (!g && PyErr_Occurred()) throw_current();
    if (!g || !PyList_Check(g)) bad_runs("name a session without a group", r);
    out.push_back({nb::borrow(PyTuple_GET_ITEM(r, 0)), nb::borrow(g), k});
  }
  ids.clear();
  for (const TailRun& r : out) {
    PyObject* g = r.group.ptr();
    if (r.k > PyList_GET_SIZE(g)) bad_runs("take more blocks than a group holds", r.sid.ptr());
    PyObject** items = reinterpret_cast<PyListObject*>(g)->ob_item;
    for (Py_ssize_t j = 0; j < r.k; ++j) {
      long b = -1;
      if (!small_long(items[j], b) || b < 0 || b >= pool.n || pool.state.data[b] != kCached)
        bad_runs("name a block that is not a cached block id", items[j]);
      ids.push_back(static_cast<int32_t>(b));
    }
  }
  if (static_cast<int64_t>(ids.size()) != num_blocks)
    bad_runs("do not name num_blocks blocks", snap.ptr());
  sorted.assign(ids.begin(), ids.end());
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
    bad_runs("name a block twice", snap.ptr());
}

// The runs off their groups, as groups.py `blocks_uncached` takes a search's victims
// (victim_runs.h `cut_tails`): the whole group when a run is all of it, else a slice off its
// head of the list, and each run's session added to every set of `dirty`.
inline void cut_tail_runs(nb::handle groups, nb::handle dirty, std::vector<TailRun>& runs) {
  for (const TailRun& r : runs) {
    PyObject* g = r.group.ptr();
    if (r.k == PyList_GET_SIZE(g)) {
      if (PyDict_DelItem(groups.ptr(), r.sid.ptr()) < 0) throw_current();
    } else if (PyList_SetSlice(g, 0, r.k, nullptr) < 0) {
      throw_current();
    }
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(dirty.ptr()); ++j)
      if (PySet_Add(PyTuple_GET_ITEM(dirty.ptr(), j), r.sid.ptr()) < 0) throw_current();
  }
  runs.clear();
}

}  // namespace kvcore
