// Reading a push of kvsaga._evict's victim index (csrc/session_heap.cpp): its arguments, or
// one of `refresh_runs`'s push tuples, read and checked into a `Pushed` before anything
// changes (timed_keys.py `_check_push` and `check_timed` are the references: the same
// checks in the same order with the same messages), so that a bad push changes nothing.
// Header-only: session_heap.cpp is the extension's one translation unit.
#pragma once
#include <nanobind/nanobind.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "class_table.h"
#include "session_keys.h"
#include "timed_record.h"

namespace session_push {

namespace nb = nanobind;
using namespace session_keys;
using namespace timed_record;

// A push read and checked, not applied yet (`refresh_runs` reads all its pushes first,
// so that a bad one changes nothing).
struct Pushed {
  nb::handle sid;
  double k0, k1, until;
  Timed t;
  TableKey tk;
  Formula formula;
  int64_t k;
};

// `key` must be a tuple of two items (the callers check).
// `inv_cdf`: the index's quantile function, looked up at its first mode-4 push.
inline Pushed read_push(nb::handle sid, nb::handle key, int64_t tie, int64_t size,
                        double until, nb::handle timed, InvCdf& inv_cdf) {
  Timed t;
  TableKey tk{};
  Formula formula{};
  int64_t k = 0;
  if (!timed.is_none()) {
    // timed_keys.py `check_timed`: the same fields, order, rules and messages; all read
    // before anything changes.
    PyObject* o = timed.ptr();
    if (!PyTuple_Check(o) || PyTuple_GET_SIZE(o) != 9)
      raise_type_error("timed must be (cls, k, k0, value, mode, t0, limit, extra, mult)");
    // (class, grid point) must make a table key (csrc/class_table.h): cls below 2^48 and
    // k + 1 below 2^16 - 1, so that no key is the table's empty-cell mark.
    t.cls = read_bounded(PyTuple_GET_ITEM(o, 0), "cls", 0, class_table::kMaxClass,
                         "0 to 2**48 - 1");
    k = read_bounded(PyTuple_GET_ITEM(o, 1), "k", -1, class_table::kMaxPoint, "-1 to 65533");
    tk.k0 = read_field(PyTuple_GET_ITEM(o, 2), "k0");
    tk.mode = read_index(PyTuple_GET_ITEM(o, 4), "mode");
    if (tk.mode < 0 || tk.mode > 4) {
      PyErr_Format(PyExc_ValueError, "timed: mode must be 0 to 4, got %lld",
                   static_cast<long long>(tk.mode));
      throw_current();
    }
    if (tk.mode < 2) tk.v = read_field(PyTuple_GET_ITEM(o, 3), "value");
    if (tk.mode >= 2) {
      // mode 4's tuple starts with the session's own base (`base`), then the formula's.
      const FormulaFields& fields = kFormulaFields[tk.mode - 2];
      PyObject* f = PyTuple_GET_ITEM(o, 3);
      Py_ssize_t want = fields.size, skip = tk.mode == 4 ? 1 : 0;
      if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) != want)
        raise_type_error("timed modes 2, 3, 4: value must be a tuple of 4, 8, 8 numbers");
      formula.mode = tk.mode;
      formula.k0 = tk.k0;
      double read[8];
      for (Py_ssize_t i = 0; i < want; ++i)
        read[i] = read_field(PyTuple_GET_ITEM(f, i), fields.names[i], fields.rules[i]);
      for (Py_ssize_t i = skip; i < want; ++i) formula.p[i - skip] = read[i];
      tk.v = skip ? read[0] : std::numeric_limits<double>::quiet_NaN();
      if (tk.mode == 4 && !inv_cdf.fn.is_valid()) inv_cdf = normal_inv_cdf();
    }
    t.t0 = read_field(PyTuple_GET_ITEM(o, 5), "t0");
    t.limit = read_field(PyTuple_GET_ITEM(o, 6), "limit");
    t.extra = read_field(PyTuple_GET_ITEM(o, 7), "extra");
    t.mult = read_field(PyTuple_GET_ITEM(o, 8), "mult");
    t.value = tk.v;
  }
  double k0 = read_number(PyTuple_GET_ITEM(key.ptr(), 0));
  double k1 = read_number(PyTuple_GET_ITEM(key.ptr(), 1));
  if (PyObject_Hash(sid.ptr()) == -1) throw_current();
  t.tie = tie;
  t.size = size;
  return Pushed{sid, k0, k1, until, t, tk, formula, k};
}

// `refresh_runs`'s push i, (sid, key, tie, size, until, timed): session_heap.py
// `_check_push`, the same checks in the same order with the same messages.
inline Pushed read_refresh(Py_ssize_t i, PyObject* p, InvCdf& inv_cdf) {
  long long at = static_cast<long long>(i);
  if (!PyTuple_Check(p) || PyTuple_GET_SIZE(p) != 6) {
    PyErr_Format(PyExc_TypeError,
                 "refresh_runs: push %lld must be (sid, key, tie, size, until, timed)", at);
    throw_current();
  }
  PyObject* sid = PyTuple_GET_ITEM(p, 0);
  PyObject* key = PyTuple_GET_ITEM(p, 1);
  PyObject* tie = PyTuple_GET_ITEM(p, 2);
  PyObject* size = PyTuple_GET_ITEM(p, 3);
  PyObject* until = PyTuple_GET_ITEM(p, 4);
  if (PyObject_Hash(sid) == -1) reraise_naming(at, "sid: ");
  if (!PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 2 ||
      !is_real(PyTuple_GET_ITEM(key, 0)) || !is_real(PyTuple_GET_ITEM(key, 1))) {
    PyErr_Format(PyExc_TypeError, "refresh_runs: push %lld: key must be a tuple of two numbers",
                 at);
    throw_current();
  }
  if (!PyIndex_Check(tie) || !PyIndex_Check(size)) {
    PyErr_Format(PyExc_TypeError, "refresh_runs: push %lld: tie and size must be integers", at);
    throw_current();
  }
  if (!is_real(until)) {
    PyErr_Format(PyExc_TypeError, "refresh_runs: push %lld: until must be a number", at);
    throw_current();
  }
  long long t, n;
  double u;
  read_push_values(at, key, tie, size, until, t, n, u);
  try {
    return read_push(sid, key, t, n, u, PyTuple_GET_ITEM(p, 5), inv_cdf);
  } catch (nb::python_error& e) {  // a bad timed record: the same error, the push named
    e.restore();
    reraise_naming(at, "");
  }
}

}  // namespace session_push
