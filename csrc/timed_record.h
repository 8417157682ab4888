// The timed records of kvsaga._evict's victim index (csrc/session_heap.cpp): what a push's
// `timed` tuple holds (`Timed`, and a class's `Formula` of modes 2-4), read and checked as
// timed_keys.py `check_timed` reads them (the same fields, order, rules and messages).
// Header-only: session_heap.cpp is the extension's one translation unit.
#pragma once
#include <nanobind/nanobind.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "session_keys.h"

namespace timed_record {

namespace nb = nanobind;
using session_keys::TtlMemo;

// A session's timed record (push's `timed`): its key at elapsed grid point k is
// table[(cls, k)] = (k0, v, mode): (k0, v * mult) (mode 0) or (k0, (t0 + grid(k)) + v)
// (mode 1), while now - t0 < limit; its deadline min(t0 + grid(k + 1), extra).
// One cache line each (alignas): `due` reads a record per due session, between two engine
// steps, when a record across two lines would cost two misses.
struct alignas(64) Timed {
  int64_t cls = -1;  // -1: none (Python re-keys it)
  double t0, limit, extra, mult;
  double value;  // the table's value it was last keyed from (`base`)
  int64_t tie, size;
};
// A class's key at every grid point: mode 2, p = (w, s, a, b): (k0, -((w * min(grid(k) /
// s, 1) + a) + b)), saga's score of an entry idle grid(k) seconds; mode 3 (ttl), p = (mu,
// sigma, p0, cost, rent, n, r, ttl): `ttl_key`; mode 4 (graph), p = (mu, sigma, p0, wait,
// corr, min_wait, hedge): (1, graph_rate(...) * mult).
struct Formula {
  int64_t mode;
  double k0;
  double p[8];
  double limit;  // the limit of the record that gave it (saga's: just past its TTL)
  TtlMemo memo;  // mode 3: what its keys share (`ttl_key`)
};

// timed_keys.py `first_past`: the first clock value T at which `T - t0 > x` as computed (no
// later than it where the subtraction rounds): t0 + x when that rounded up past it, else the
// next float.
inline double first_past(double t0, double x) {
  double r = t0 + x;
  return r - t0 > x ? r : std::nextafter(r, std::numeric_limits<double>::infinity());
}

// session_heap.py `_class_limits`: a record's (limit, deadline cap) in a formula's class.
inline void class_limits(const Formula& f, double t0, double& limit, double& extra) {
  const double inf = std::numeric_limits<double>::infinity();
  if (f.mode == 3) {
    limit = f.p[7], extra = t0 + f.p[7];
  } else if (f.mode == 2 && f.limit < inf) {
    limit = f.limit, extra = first_past(t0, std::nextafter(f.limit, -inf));
  } else {
    limit = inf, extra = inf;
  }
}

[[noreturn]] inline void throw_current() { throw nb::python_error(); }

// A TypeError as a Python error (nb::python_error, not nb::type_error), so that callers that
// catch python_error to name the bad push see it too.
[[noreturn]] inline void raise_type_error(const char* message) {
  PyErr_SetString(PyExc_TypeError, message);
  throw_current();
}

inline double read_number(PyObject* o) {
  double x = PyFloat_AsDouble(o);
  if (x == -1.0 && PyErr_Occurred()) throw_current();
  return x;
}

// session_heap.py `_RULES` and `FORMULA_FIELDS`: what each number of a timed record must be.
enum Rule { kNotNan, kFinite, kPos, kNonNeg, kShare };
inline const char* const kRuleText[] = {"not NaN", "finite", "finite and > 0", "finite and >= 0",
                                 "finite and in [0, 1]"};
inline bool meets(Rule r, double v) {
  switch (r) {
    case kNotNan: return !std::isnan(v);
    case kFinite: return std::isfinite(v);
    case kPos: return std::isfinite(v) && v > 0;
    case kNonNeg: return std::isfinite(v) && v >= 0;
    case kShare: return v >= 0.0 && v <= 1.0;
  }
  return false;
}
struct FormulaFields {
  Py_ssize_t size;
  const char* names[8];
  Rule rules[8];
};
inline const FormulaFields kFormulaFields[] = {
    {4, {"mode 2 w", "mode 2 s", "mode 2 a", "mode 2 b"}, {kFinite, kPos, kFinite, kFinite}},
    {8, {"mode 3 mu", "mode 3 sigma", "mode 3 p0", "mode 3 cost", "mode 3 rent", "mode 3 n",
         "mode 3 r", "mode 3 ttl"},
     {kFinite, kNonNeg, kShare, kFinite, kFinite, kPos, kPos, kFinite}},
    {8, {"mode 4 base", "mode 4 mu", "mode 4 sigma", "mode 4 p0", "mode 4 wait", "mode 4 corr",
         "mode 4 min_wait", "mode 4 hedge"},
     {kFinite, kFinite, kNonNeg, kShare, kFinite, kFinite, kPos, kPos}},
};

// A number as the index reads one (session_heap.py `_is_real`): a float, or an object with
// __float__ or __index__ (a str is not).
inline bool is_real(PyObject* o) {
  PyNumberMethods* nm = Py_TYPE(o)->tp_as_number;
  return PyFloat_Check(o) || (nm && (nm->nb_float || nm->nb_index));
}

// A number field of a timed record (session_heap.py `_real`): a float or an object with
// __float__ or __index__, meeting `rule`; else TypeError / ValueError naming it.
inline double read_field(PyObject* o, const char* name, Rule rule = kNotNan) {
  PyTypeObject* tp = Py_TYPE(o);
  if (!is_real(o)) {
    PyErr_Format(PyExc_TypeError, "timed: %s must be a real number, got %s", name, tp->tp_name);
    throw_current();
  }
  double v = read_number(o);
  if (!meets(rule, v)) {
    nb::object f = nb::steal(PyFloat_FromDouble(v));
    PyErr_Format(PyExc_ValueError, "timed: %s must be %s, got %R", name, kRuleText[rule],
                 f.ptr());
    throw_current();
  }
  return v;
}

// `o` as a Python int (operator.index), else TypeError "timed: <name> must be an integer".
inline nb::object index_of(PyObject* o, const char* name) {
  nb::object i = nb::steal(PyNumber_Index(o));
  if (!i.is_valid()) {
    if (!PyErr_ExceptionMatches(PyExc_TypeError)) throw_current();
    PyErr_Clear();
    PyErr_Format(PyExc_TypeError, "timed: %s must be an integer, got %s", name,
                 Py_TYPE(o)->tp_name);
    throw_current();
  }
  return i;
}

// An integer field of a timed record (session_heap.py `_int`: operator.index).
inline int64_t read_index(PyObject* o, const char* name) {
  nb::object i = index_of(o, name);
  long long x = PyLong_AsLongLong(i.ptr());
  if (x == -1 && PyErr_Occurred()) throw_current();
  return x;
}

// An integer field of a timed record within [lo, hi] (session_heap.py `_bounded`): else
// ValueError "timed: <name> must be <range>, got <value>", whatever the int's size.
inline int64_t read_bounded(PyObject* o, const char* name, int64_t lo, int64_t hi,
                            const char* range) {
  nb::object i = index_of(o, name);
  int over = 0;
  long long x = PyLong_AsLongLongAndOverflow(i.ptr(), &over);
  if (x == -1 && PyErr_Occurred()) throw_current();
  if (over != 0 || x < lo || x > hi) {
    PyErr_Format(PyExc_ValueError, "timed: %s must be %s, got %S", name, range, i.ptr());
    throw_current();
  }
  return x;
}

// The pending Python error, a TypeError or ValueError, raised again, its type kept, as
// "refresh_runs: push <at>: <what><message>" (timed_keys.py `_check_push` names the push
// the same way); any other error goes on as it is.
[[noreturn]] inline void reraise_naming(long long at, const char* what) {
  if (!PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_ValueError))
    throw_current();
  PyObject *type, *value, *trace;
  PyErr_Fetch(&type, &value, &trace);
  PyErr_NormalizeException(&type, &value, &trace);
  nb::object ty = nb::steal(type), val = nb::steal(value), tr = nb::steal(trace);
  PyErr_Format(ty.ptr(), "refresh_runs: push %lld: %s%S", at, what, val.ptr());
  throw_current();
}

// A push's values, its types already checked (timed_keys.py `_check_push`, the same
// order and messages): no NaN key or deadline, a tie within int64, a size >= 1 (a smaller
// one would make `runs` hand out more blocks than asked).
inline void read_push_values(long long at, PyObject* key, PyObject* tie, PyObject* size,
                             PyObject* until, long long& t, long long& n, double& u) {
  if (std::isnan(read_number(PyTuple_GET_ITEM(key, 0))) ||
      std::isnan(read_number(PyTuple_GET_ITEM(key, 1)))) {
    PyErr_Format(PyExc_ValueError, "refresh_runs: push %lld: key must not be NaN, got %R", at,
                 key);
    throw_current();
  }
  nb::object ti = nb::steal(PyNumber_Index(tie));
  if (!ti.is_valid()) throw_current();
  nb::object si = nb::steal(PyNumber_Index(size));
  if (!si.is_valid()) throw_current();
  int over = 0;
  t = PyLong_AsLongLongAndOverflow(ti.ptr(), &over);
  if (t == -1 && PyErr_Occurred()) throw_current();
  if (over != 0) {
    PyErr_Format(PyExc_ValueError, "refresh_runs: push %lld: tie must fit in int64, got %R", at,
                 ti.ptr());
    throw_current();
  }
  n = PyLong_AsLongLongAndOverflow(si.ptr(), &over);
  if (n == -1 && PyErr_Occurred()) throw_current();
  if (over != 0 || n < 1) {
    PyErr_Format(PyExc_ValueError,
                 "refresh_runs: push %lld: size must be >= 1 and fit in int64, got %R", at,
                 si.ptr());
    throw_current();
  }
  u = read_number(until);
  if (std::isnan(u)) {
    PyErr_Format(PyExc_ValueError, "refresh_runs: push %lld: until must not be NaN, got %R", at,
                 until);
    throw_current();
  }
}

}  // namespace timed_record
