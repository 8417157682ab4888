// The key formulas of kvsaga._evict's victim index (csrc/session_heap.cpp), apart from the
// index itself: the log-normal pause model of kvsaga/policy/lognormal.py and aeg.py, operation
// for operation with the same libm functions (erfc, log, exp, pow) and the quantile
// statistics.NormalDist uses, and the keys it gives ttl (timed mode 3, `ttl_key`) and graph
// (mode 4, `graph_rate`), so that a key is the float Python computes (session_heap.py
// `ttl_window_key`, `graph_rate`: the references; tests/policy/test_key_formulas.py compares).
// Header-only: session_heap.cpp is the extension's one translation unit.
#pragma once
#include <nanobind/nanobind.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace session_keys {

namespace nb = nanobind;

// A class's key at one grid point, as the index's table holds it: (k0, v * mult) (mode 0)
// or (k0, (t0 + grid(k)) + v) (mode 1).
struct TableKey {
  double k0, v;
  int64_t mode;
};

// --- kvsaga/policy/lognormal.py and aeg.py's pause model, operation for operation -----------
// Python's max(a, b) / min(a, b) of two floats: the second only when strictly beyond.
inline double py_max(double a, double b) { return b > a ? b : a; }
inline double py_min(double a, double b) { return b < a ? b : a; }
// A product kept apart from the sum it feeds (no fused multiply-add: as Python).
inline double mul(double a, double b) {
  volatile double x = a * b;
  return x;
}
const double kSqrt2 = std::sqrt(2.0);
inline double phi_upper(double z) { return mul(0.5, std::erfc(z / kSqrt2)); }

const double kMinSigma = 0.05;  // lognormal.py MIN_SIGMA: LogNormalDist floors sigma there

// A quantile function of statistics and how many arguments it takes (`normal_inv_cdf`).
struct InvCdf {
  nb::object fn;
  size_t nargs = 3;
};

struct LogNormal {
  double mu, sigma;
  LogNormal(double m, double s) : mu(m), sigma(py_max(s, kMinSigma)) {}
  double mean() const {
    volatile double two = 2.0;  // pow(), as Python's ** calls it, not folded into sigma * sigma
    return std::exp(mu + mul(0.5, std::pow(sigma, two)));
  }
  double sf(double t) const {
    if (t <= 0) return 1.0;
    return phi_upper((std::log(t) - mu) / sigma);
  }
  double limited_mean(double b) const {
    if (b <= 0) return 0.0;
    double z = (std::log(b) - mu) / sigma;
    double below = mul(mean(), 1.0 - phi_upper(z - sigma));
    return below + mul(b, phi_upper(z));
  }
  double mean_residual(double elapsed) const {
    if (elapsed <= 0) return mean();
    double z = (std::log(elapsed) - mu) / sigma;
    double s = phi_upper(z);
    if (s < 1e-250) return mul(elapsed, sigma) / py_max(z - sigma, 1.0);
    return mul(mean(), phi_upper(z - sigma)) / s - elapsed;
  }
  // inv_cdf: statistics.NormalDist().inv_cdf's own function, called (not copied), with
  // (p, 0, 1) (its private function) or (p) (the public method: `normal_inv_cdf`).
  double median_residual(double elapsed, const InvCdf& inv_cdf) const {
    double s = sf(elapsed);
    if (s < 1e-300) return mean_residual(elapsed);
    PyObject* args[3];
    nb::object p = nb::steal(PyFloat_FromDouble(s / 2.0)), zero = nb::steal(PyFloat_FromDouble(0.0)),
               one = nb::steal(PyFloat_FromDouble(1.0));
    args[0] = p.ptr(), args[1] = zero.ptr(), args[2] = one.ptr();
    nb::object q = nb::steal(PyObject_Vectorcall(inv_cdf.fn.ptr(), args, inv_cdf.nargs, nullptr));
    if (!q.is_valid()) throw nb::python_error();
    double z = -PyFloat_AsDouble(q.ptr());
    if (z == 1.0 && PyErr_Occurred()) throw nb::python_error();
    return py_max(std::exp(mu + mul(sigma, z)) - py_max(elapsed, 0.0), 0.0);
  }
};

// A point x of the pause model, as resume_window reads it: (sf(x), limited_mean(x)), both
// from one z and one phi_upper(z), the floats LogNormal::sf and limited_mean give apart.
struct TailAt {
  double sf, lm;
};
inline TailAt tail_at(const LogNormal& d, double mean, double x) {
  if (x <= 0) return {1.0, 0.0};
  double z = (std::log(x) - d.mu) / d.sigma;
  double up = phi_upper(z);
  return {up, mul(mean, 1.0 - phi_upper(z - d.sigma)) + mul(x, up)};
}

// What a class's ttl keys share (kept with its formula): the model's mean, and the window's
// end x = lo + (ttl - lo), which rounding leaves at the same float for most grid points.
struct TtlMemo {
  bool has_mean = false;
  double mean = 0.0;
  double end_x = std::numeric_limits<double>::quiet_NaN();  // NaN: none yet
  TailAt end{1.0, 0.0};
};

// ttl's key at elapsed grid point lo (ttl.py `_value`, `_key`) as a table entry: (2, V / n)
// (mode 0, ttl's multiplier being 1) while V > 0, else (1, (V / n) / r) (mode 1: the key
// adds the pause's start and lo). lognormal.py `resume_window` operation for operation,
// with each of its repeated survival and limited-mean terms computed once (and the window's
// end remembered in `memo`): the same floats, two erfc calls per new grid point, not seven.
inline TableKey ttl_key(const double* f, double lo, TtlMemo& memo) {
  LogNormal d{f[0], f[1]};
  double p0 = f[2], w = f[7] - lo, p = 0.0, held = 0.0;
  if (w > 0) {
    if (!memo.has_mean) memo.mean = d.mean(), memo.has_mean = true;
    TailAt now = tail_at(d, memo.mean, lo);
    double s_now = mul(p0, now.sf) + (1.0 - p0);
    if (s_now <= 0) {
      held = w;
    } else {
      double x = lo + w;
      if (!(x == memo.end_x)) memo.end = tail_at(d, memo.mean, x), memo.end_x = x;
      double p_within = mul(p0, now.sf - memo.end.sf) / s_now;
      double h = mul(p0, memo.end.lm - now.lm);
      h = (h + mul(1.0 - p0, w)) / s_now;
      p = py_min(py_max(p_within, 0.0), 1.0);
      held = py_min(py_max(h, 0.0), w);
    }
  }
  double v = mul(p, f[3]) - mul(f[4], held);
  if (v > 0) return {2.0, v / f[5], 0};
  return {1.0, (v / f[5]) / f[6], 1};
}

// graph's rate P(reuse) / E[time to reuse] at elapsed grid point lo (graph.py
// `_predict_session`, `_session_base`; aeg.py `predict`): f = (mu, sigma, p0, wait, corr,
// min_wait, hedge), the time multiplied by corr, then divided by hedge, as Python does.
inline double graph_rate(const double* f, double lo, const InvCdf& inv_cdf) {
  LogNormal d{f[0], f[1]};
  double p0 = f[2];
  double s = d.sf(lo);
  double p = p0 < 1.0 ? mul(p0, s) / (mul(p0, s) + (1.0 - p0)) : 1.0;
  double t = mul(d.median_residual(lo, inv_cdf) + f[3], f[4]) / f[6];
  double w = f[5] > t ? f[5] : t;
  return p / w;
}

// statistics.NormalDist().inv_cdf's own function (what lognormal.py's quantile calls):
// the module's private `_normal_dist_inv_cdf(p, mu, sigma)` where it exists, else the
// public method of NormalDist(0, 1), called with p alone.
// The public method checks 0 < p < 1 (true here: p = sf / 2 with sf >= 1e-300) and calls the
// private function with (p, 0.0, 1.0): the same float either way.
inline InvCdf normal_inv_cdf() {
  nb::module_ st = nb::module_::import_("statistics");
  if (nb::hasattr(st, "_normal_dist_inv_cdf")) return {st.attr("_normal_dist_inv_cdf"), 3};
  return {st.attr("NormalDist")().attr("inv_cdf"), 1};
}

}  // namespace session_keys
