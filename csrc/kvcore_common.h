// What every class of kvsaga._kvcore (csrc/kvcore.cpp) shares: the block states, kvsaga.errors'
// classes, raising the pending Python error, and block-id lists read and written as Python ints.
// Header-only like the rest of the core: kvcore.cpp is the extension's one translation unit.
#pragma once
#include <nanobind/nanobind.h>

#include <cstdint>
#include <vector>

namespace nb = nanobind;

namespace kvcore {

enum : int32_t { kFree = 0, kActive = 1, kCached = 2 };

// kvsaga.errors' classes, looked up once at import.
struct Errors {
  nb::object invalid, unknown, out_of_blocks;
};
inline Errors* g_errors = nullptr;

[[noreturn]] inline void throw_current() { throw nb::python_error(); }

[[noreturn]] inline void raise_instance(const nb::object& cls, const nb::object& inst) {
  PyErr_SetObject(cls.ptr(), inst.ptr());
  throw_current();
}

inline nb::object steal_or_throw(PyObject* o) {
  if (!o) throw_current();
  return nb::steal(o);
}

// -- ints -------------------------------------------------------------------------------

// The value of `o` when it is an exact int below 2^30 in size (every block id and most token
// ids; on Python 3.11 below 2^60, which covers the simulator's ids below 2^31), read inline;
// false otherwise, and the caller then uses the C API's conversion (for its errors, big ints,
// subclasses and __index__). Saves the call and the overflow checks of PyLong_AsLong on each
// of a context's blocks and tokens.
inline bool small_long(PyObject* o, long& v) {
  if (!PyLong_CheckExact(o)) return false;
#if PY_VERSION_HEX >= 0x030C0000
  PyLongObject* l = reinterpret_cast<PyLongObject*>(o);
  if (!PyUnstable_Long_IsCompact(l)) return false;
  v = static_cast<long>(PyUnstable_Long_CompactValue(l));
  return true;
#else
  static_assert(PyLong_SHIFT == 30, "CPython 3.11 ints hold 30-bit digits");
  Py_ssize_t size = Py_SIZE(o);
  const digit* d = reinterpret_cast<PyLongObject*>(o)->ob_digit;
  constexpr Py_ssize_t kDigits = sizeof(long) >= 8 ? 2 : 1;  // as many as a long holds
  if (size < -kDigits || size > kDigits) return false;
  long m = size == 0 ? 0 : static_cast<long>(d[0]);
  if (size == 2 || size == -2) m |= static_cast<long>(d[1]) << PyLong_SHIFT;
  v = size < 0 ? -m : m;
  return true;
#endif
}

// PyLong_AsLong, without a call for a small exact int.
inline long as_long(PyObject* o) {
  long v;
  return small_long(o, v) ? v : PyLong_AsLong(o);
}

// An integer argument read as a slice bound is: an int (a bool, or any object with
// __index__) as Py_ssize_t, clamped to its range (a limit past it limits nothing, as in the
// Python twins' min(limit, len(...))); TypeError, as theirs, for anything else. nb::cast
// raised "RuntimeError: std::bad_cast" past 2^63 (review s52 csrc, finding 2).
inline Py_ssize_t clamped_index(PyObject* o) {
  long v;
  if (small_long(o, v)) return static_cast<Py_ssize_t>(v);
  Py_ssize_t r = PyNumber_AsSsize_t(o, nullptr);
  if (r == -1 && PyErr_Occurred()) throw_current();
  return r;
}

// -- id lists -----------------------------------------------------------------------------

// Reads a sequence of block ids into `out`, each checked against [0, n).
inline void read_ids(nb::handle seq, int32_t n, std::vector<int32_t>& out) {
  nb::object fast = steal_or_throw(PySequence_Fast(seq.ptr(), "block ids must be a sequence"));
  Py_ssize_t k = PySequence_Fast_GET_SIZE(fast.ptr());
  PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
  out.resize(k);
  for (Py_ssize_t i = 0; i < k; ++i) {
    long v = as_long(items[i]);
    if (v == -1 && PyErr_Occurred()) throw_current();
    if (v < 0 || v >= n) {
      PyErr_Format(PyExc_IndexError, "block id %ld out of range [0, %d)", v, n);
      throw_current();
    }
    out[i] = static_cast<int32_t>(v);
  }
}

// Python ints for block ids 0..n-1 of the largest pool or queue made so far: handing out a
// block id is then a reference, not an allocation (ints above 256 are not cached by Python).
inline std::vector<PyObject*>* g_ids = new std::vector<PyObject*>();

inline void reserve_ids(int32_t n) {
  g_ids->reserve(n);
  while (g_ids->size() < static_cast<size_t>(n)) {
    PyObject* o = PyLong_FromSize_t(g_ids->size());
    if (!o) throw_current();
    g_ids->push_back(o);
  }
}

inline PyObject* id_object(int32_t b) {
  return static_cast<size_t>(b) < g_ids->size() ? Py_NewRef((*g_ids)[b]) : PyLong_FromLong(b);
}

inline nb::list to_list(const int32_t* ids, size_t k) {
  PyObject* l = PyList_New(static_cast<Py_ssize_t>(k));
  if (!l) throw_current();
  for (size_t i = 0; i < k; ++i) PyList_SET_ITEM(l, i, id_object(ids[i]));
  return nb::steal<nb::list>(l);
}

}  // namespace kvcore
