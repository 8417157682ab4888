// Per-block marks written in one call: `scatter(marks, ids, values)` and
// `fill(marks, ids, value)` set `marks[id]` for each id of `ids`, in a list or a bytearray.
// The twin and reference is kvsaga/marks.py (tests/test_marks.py runs both side by side).
//
// Why: a grouped policy marks every block a step releases (position, cached time, owner,
// where), thousands per step on a long session, in Python a few stores per block each; on
// the simulator's full-size cases that loop was a third of the run. Here a store is a pointer
// swap. Everything is checked before anything is written: bad input raises and leaves
// `marks` as it was.
#pragma once
#include <nanobind/nanobind.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kvcore_common.h"

namespace kvcore {

enum class Source { kEach, kOne, kSame };

// Where each id's value comes from: kEach `values[i]` (a sequence as long as `ids`), kOne
// `values` itself, kSame `values[ids[i]]` (another per-block sequence: a copy of its marks).
inline void store_marks(nb::handle marks, nb::handle ids, nb::handle values, Source from) {
  const bool one = from == Source::kOne;
  PyObject* t = marks.ptr();
  const bool is_list = PyList_CheckExact(t);
  if (!is_list && !PyByteArray_CheckExact(t)) {
    PyErr_Format(PyExc_TypeError, "marks must be a list or a bytearray, got %s",
                 Py_TYPE(t)->tp_name);
    throw_current();
  }
  const Py_ssize_t n = is_list ? PyList_GET_SIZE(t) : PyByteArray_GET_SIZE(t);
  if (n > INT32_MAX) throw nb::value_error("marks longer than 2^31 - 1");
  nb::object fast;
  PyObject* const* vals = nullptr;
  Py_ssize_t m = 0;
  if (!one) {
    fast = steal_or_throw(PySequence_Fast(values.ptr(), "values must be a sequence"));
    // `values` is `marks` itself (PySequence_Fast hands a list back as is): read a snapshot,
    // as the twin does (its stores would otherwise change the values still to be read).
    if (fast.ptr() == t) fast = steal_or_throw(PySequence_List(t));
    m = PySequence_Fast_GET_SIZE(fast.ptr());
    vals = PySequence_Fast_ITEMS(fast.ptr());
  }
  std::vector<int32_t> idx;
  read_ids(ids, static_cast<int32_t>(from == Source::kSame ? std::min(n, m) : n), idx);
  const size_t k = idx.size();
  if (from == Source::kEach && m != static_cast<Py_ssize_t>(k)) {
    PyErr_Format(PyExc_ValueError, "%zd values for %zd block ids", m, static_cast<Py_ssize_t>(k));
    throw_current();
  }
  auto value = [&](size_t i) {
    return one ? values.ptr() : vals[from == Source::kSame ? idx[i] : i];
  };
  if (is_list) {
    // The old values are released after every store: a release that runs Python code (a
    // finalizer) then sees the list whole.
    PyObject** items = reinterpret_cast<PyListObject*>(t)->ob_item;
    std::vector<PyObject*> old(k);
    for (size_t i = 0; i < k; ++i) {
      PyObject* v = value(i);
      Py_INCREF(v);
      old[i] = items[idx[i]];
      items[idx[i]] = v;
    }
    for (PyObject* o : old) Py_XDECREF(o);
    return;
  }
  std::vector<uint8_t> bytes(one ? 1 : k);
  for (size_t i = 0; i < bytes.size(); ++i) {
    long v = as_long(value(i));
    if (v == -1 && PyErr_Occurred()) throw_current();
    if (v < 0 || v > 255) throw nb::value_error("byte must be in range(0, 256)");
    bytes[i] = static_cast<uint8_t>(v);
  }
  char* buf = PyByteArray_AS_STRING(t);
  for (size_t i = 0; i < k; ++i) buf[idx[i]] = static_cast<char>(one ? bytes[0] : bytes[i]);
}

// The runs of equal owners along `ids` (owners[id], compared as Python's ==), each as
// (owner, length, whether positions[id] strictly fall along it): how a grouped policy splits
// a release into its sessions' runs (kvsaga/marks.py `owner_runs`).
inline nb::list owner_runs(nb::handle ids, nb::handle owners, nb::handle positions) {
  nb::object own = steal_or_throw(PySequence_Fast(owners.ptr(), "owners must be a sequence"));
  nb::object pos = steal_or_throw(PySequence_Fast(positions.ptr(), "positions must be a sequence"));
  const Py_ssize_t n = std::min(PySequence_Fast_GET_SIZE(own.ptr()),
                                PySequence_Fast_GET_SIZE(pos.ptr()));
  if (n > INT32_MAX) throw nb::value_error("marks longer than 2^31 - 1");
  std::vector<int32_t> idx;
  read_ids(ids, static_cast<int32_t>(n), idx);
  PyObject* const* o = PySequence_Fast_ITEMS(own.ptr());
  PyObject* const* p = PySequence_Fast_ITEMS(pos.ptr());
  nb::list out;
  size_t i = 0;
  while (i < idx.size()) {
    PyObject* owner = o[idx[i]];
    size_t j = i + 1;
    bool falling = true;
    for (; j < idx.size(); ++j) {
      PyObject* next = o[idx[j]];
      int same = next == owner ? 1 : PyObject_RichCompareBool(owner, next, Py_EQ);
      if (same < 0) throw_current();
      if (!same) break;
      if (falling) {
        PyObject* a = p[idx[j - 1]];
        PyObject* b = p[idx[j]];
        long x, y;
        int gt = small_long(a, x) && small_long(b, y) ? x > y
                                                       : PyObject_RichCompareBool(a, b, Py_GT);
        if (gt < 0) throw_current();
        falling = gt;
      }
    }
    out.append(nb::make_tuple(nb::borrow(owner), static_cast<Py_ssize_t>(j - i),
                              nb::bool_(falling)));
    i = j;
  }
  return out;
}

}  // namespace kvcore
