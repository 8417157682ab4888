// kvsaga._fused_ops: the CPU engine's elementwise work between its matmuls, one call each.
//
// Why (bench/RESULTS.md, "Fewer calls between the matmuls"): in an fp32 decode step of
// SmolLM2-135M the weights streamed through the caches evict everything else, so every
// torch op between two matmuls runs cold; F.rms_norm took ~118 us a call inside the step
// against ~13 us alone, 61 calls a step, with the other core waiting. Each function here is
// one call for what was several torch ops: RMSNorm (with the residual add before it),
// SiLU(gate) * up.
//
// fp32 only, rows contiguous, no two written rows or arguments overlapping (the Python side,
// kvsaga/engine/fused_ops.py, checks shapes, dtypes, devices and layout, and passes raw
// pointers). The GIL is released. Rows are split over
// `threads` threads of torch's own OpenMP team where kvsaga/kernels/inplace.py found one (`team`,
// its GOMP_parallel), each chunk worth at least kMinWork elements, so a decode step's few
// rows stay on the caller; with no team everything runs on the caller.

#include <nanobind/nanobind.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// Elements a chunk of rows must hold before a second thread is worth waking (a parked
// OpenMP worker takes microseconds to wake; 64 Ki floats take about that to normalise).
constexpr int64_t kMinWork = 1 << 16;

// libgomp's entry for a parallel region (what `#pragma omp parallel` compiles to).
using OmpParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);

template <class Body>
struct RowChunks {
  const Body* body;
  std::atomic<int64_t> next;
  int64_t rows, chunk, count;

  static void run(void* self) {
    auto* c = static_cast<RowChunks*>(self);
    for (int64_t i = c->next++; i < c->count; i = c->next++)
      (*c->body)(i * c->chunk, std::min(c->rows, (i + 1) * c->chunk));
  }
};

// body(r0, r1) over rows [0, rows) of `width` elements: chunks taken from a shared counter
// on up to `threads` threads of the team, or body(0, rows) on the caller.
template <class Body>
void for_rows(int64_t rows, int64_t width, int64_t threads, uintptr_t team, const Body& body) {
  const int64_t chunk = std::max<int64_t>(1, kMinWork / std::max<int64_t>(1, width));
  const int64_t count = (rows + chunk - 1) / chunk;
  const int64_t t = std::min(threads, count);
  if (t <= 1 || team == 0) {
    if (rows > 0) body(0, rows);
    return;
  }
  RowChunks<Body> c{&body, {0}, rows, chunk, count};
  reinterpret_cast<OmpParallel>(team)(&RowChunks<Body>::run, &c, static_cast<unsigned>(t), 0);
}

constexpr int kLanes = 8;  // partial sums of the squares (one AVX-512 register of doubles)

// out = x / sqrt(mean(x^2) + eps) * w for one row of n elements (x * r first, then * w,
// each product rounded on its own, as torch's fp32 rms_norm with a weight does). The squares
// are summed in double (8 lanes, then pairwise): an fp32 sum in lanes alone loses accuracy
// as the width grows (tests/engine/test_fused_ops.py's wide rows), a double one stays far
// under an fp32 ulp at any model's width, and r is rounded to fp32 once.
inline void norm_row(const float* __restrict x, const float* __restrict w,
                     float* __restrict out, int64_t n, float eps) {
  double acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double v = x[j + l];
      acc[l] += v * v;
    }
  for (int l = 0; j < n; ++j, ++l) acc[l] += static_cast<double>(x[j]) * x[j];
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) acc[l] += acc[l + width];
  const float r = static_cast<float>(1.0 / std::sqrt(acc[0] / static_cast<double>(n) + eps));
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * r * w[i];
}

// out[t] = rms_norm(x[t]) * w for T rows of n (row strides in elements).
void rms_norm(uintptr_t x, uintptr_t w, uintptr_t out, int64_t rows, int64_t n,
              int64_t x_row, int64_t out_row, float eps, int64_t threads, uintptr_t team) {
  const auto* xs = reinterpret_cast<const float*>(x);
  const auto* ws = reinterpret_cast<const float*>(w);
  auto* os = reinterpret_cast<float*>(out);
  for_rows(rows, n, threads, team, [=](int64_t r0, int64_t r1) {
    for (int64_t t = r0; t < r1; ++t) norm_row(xs + t * x_row, ws, os + t * out_row, n, eps);
  });
}

// The pre-norm residual step: residual[t] = x[t] + residual[t] (in place; fp32 addition
// commutes, so the bits of torch's x + residual), then out[t] = rms_norm(residual[t]) * w.
void add_rms_norm(uintptr_t x, uintptr_t residual, uintptr_t w, uintptr_t out, int64_t rows,
                  int64_t n, int64_t x_row, int64_t res_row, int64_t out_row, float eps,
                  int64_t threads, uintptr_t team) {
  const auto* xs = reinterpret_cast<const float*>(x);
  auto* rs = reinterpret_cast<float*>(residual);
  const auto* ws = reinterpret_cast<const float*>(w);
  auto* os = reinterpret_cast<float*>(out);
  for_rows(rows, n, threads, team, [=](int64_t r0, int64_t r1) {
    for (int64_t t = r0; t < r1; ++t) {
      const float* __restrict a = xs + t * x_row;
      float* __restrict res = rs + t * res_row;
      for (int64_t i = 0; i < n; ++i) res[i] = a[i] + res[i];
      norm_row(res, ws, os + t * out_row, n, eps);
    }
  });
}

// out[t, i] = silu(gu[t, i]) * gu[t, n + i]: gate and up side by side in one row of 2n, as
// the fused gate/up projection writes them; silu(g) = g / (1 + exp(-g)).
void silu_mul(uintptr_t gate_up, uintptr_t out, int64_t rows, int64_t n, int64_t gu_row,
              int64_t out_row, int64_t threads, uintptr_t team) {
  const auto* gu = reinterpret_cast<const float*>(gate_up);
  auto* os = reinterpret_cast<float*>(out);
  for_rows(rows, 2 * n, threads, team, [=](int64_t r0, int64_t r1) {
    for (int64_t t = r0; t < r1; ++t) {
      const float* __restrict g = gu + t * gu_row;
      const float* __restrict u = g + n;
      float* __restrict o = os + t * out_row;
      for (int64_t i = 0; i < n; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
  });
}

}  // namespace

NB_MODULE(_fused_ops, m) {
  m.doc() = "The CPU engine's fused elementwise ops (fp32); see kvsaga/engine/fused_ops.py.";
  m.def("rms_norm", &rms_norm, "x"_a, "w"_a, "out"_a, "rows"_a, "n"_a, "x_row"_a,
        "out_row"_a, "eps"_a, "threads"_a, "team"_a, nb::call_guard<nb::gil_scoped_release>());
  m.def("add_rms_norm", &add_rms_norm, "x"_a, "residual"_a, "w"_a, "out"_a, "rows"_a, "n"_a,
        "x_row"_a, "res_row"_a, "out_row"_a, "eps"_a, "threads"_a, "team"_a,
        nb::call_guard<nb::gil_scoped_release>());
  m.def("silu_mul", &silu_mul, "gate_up"_a, "out"_a, "rows"_a, "n"_a, "gu_row"_a,
        "out_row"_a, "threads"_a, "team"_a, nb::call_guard<nb::gil_scoped_release>());
}
