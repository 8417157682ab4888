// The elapsed-time grid of kvsaga/policy/search.py (`grid_index`): 0, then grid_s, then
// steps of a fixed ratio, read exactly as the Python reference reads it (the same libm
// log and floor, the same points, computed by Python), so that a key judged at a grid
// point is the same float whichever side computed it. The victim index re-keys sessions
// through it (session_heap.cpp); `Grid` gives the policies' keying the same answer as one
// C++ call instead of a Python function a keyed session (search.py `grid_index`).
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/stl/vector.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace elapsed_grid {

namespace nb = nanobind;

// (k, grid(k), grid(k + 1)) of an elapsed time e >= 0 (k = -1: below the first point);
// false near the end of the points held (Python extends them), or for NaN.
inline bool lookup(const std::vector<double>& points, double grid_s, double log_ratio, double e,
                   int64_t& k, double& lo, double& hi) {
  if (e < grid_s) {
    k = -1, lo = 0.0, hi = grid_s;
    return true;
  }
  int64_t n = static_cast<int64_t>(points.size());
  double kd = std::floor(std::log(e / grid_s) / log_ratio + 1e-12);
  if (!(kd >= 0.0 && kd < static_cast<double>(n - 1))) return false;
  k = static_cast<int64_t>(kd);
  if (points[k] > e) --k;  // rounding in log(): step back
  if (k < 0 || k + 2 >= n) return false;
  lo = points[k], hi = points[k + 1];
  return true;
}

// search.py's `grid_index` as one call, the same answer everywhere: past the points held,
// grid(k) = grid_s * ratio**k (`_grid_point`: Python's float power is libm's pow too).
class Grid {
 public:
  Grid(double grid_s, double ratio, double log_ratio, std::vector<double> points)
      : grid_s_(grid_s), ratio_(ratio), log_ratio_(log_ratio), points_(std::move(points)) {
    if (points_.size() < 2) throw nb::value_error("the grid needs two points at least");
    if (!(grid_s_ > 0.0) || !(ratio_ > 1.0) || !(log_ratio_ > 0.0))
      throw nb::value_error("the grid needs a first point > 0 and a ratio > 1");
  }

  nb::tuple index(double e) const {
    int64_t k;
    double lo, hi;
    if (lookup(points_, grid_s_, log_ratio_, e, k, lo, hi)) return nb::make_tuple(k, lo, hi);
    double kd = std::floor(std::log(e / grid_s_) / log_ratio_ + 1e-12);
    if (std::isnan(kd)) throw nb::value_error("cannot convert float NaN to integer");
    if (std::isinf(kd)) throw std::overflow_error("cannot convert float infinity to integer");
    lo = point(kd);
    if (lo > e) kd -= 1.0, lo = point(kd);  // rounding in log(): step back
    return nb::make_tuple(static_cast<int64_t>(kd), lo, point(kd + 1.0));
  }

 private:
  double point(double k) const { return grid_s_ * std::pow(ratio_, k); }

  double grid_s_, ratio_, log_ratio_;
  std::vector<double> points_;
};

// kvsaga._evict.Grid's binding (csrc/session_heap.cpp's module).
inline void bind(nanobind::module_& m) {
  using namespace nanobind::literals;
  nanobind::class_<Grid>(m, "Grid")
      .def(nanobind::init<double, double, double, std::vector<double>>(), "grid_s"_a, "ratio"_a,
           "log_ratio"_a, "points"_a)
      .def("index", &Grid::index, "e"_a);
}

}  // namespace elapsed_grid
