// kvsaga._small_gemm: out = x @ W^T (+ bias) for the few rows of a decode step, fp32, read
// from the weight as it is: W [N][K], k contiguous (the model's parameter, no copy).
//
// Why (bench/RESULTS.md, "A small-rows GEMM for the decode step's linears"): a decode
// step of SmolLM2-135M makes 121 matmuls of 1-16 rows, each streaming its weight from
// memory once. torch's oneDNN linear (`mkldnn._linear_pointwise`) spends ~19 us a call
// around its kernel (primitive lookup, descriptors, the boxed dispatcher), on the engine
// thread while the other core waits; a few rows need no blocking decisions, so here one
// loop per ISA streams the weight once and keeps every (row, weight row) pair's sums in
// registers (csrc/small_gemm_tiles.h).
//
// Why the plain layout (bench/RESULTS.md, "One copy of each linear weight"): the first
// kernel (`gemm_groups`, small_gemm_groups.h) reads a column-group copy of each weight
// ([N / 64][K][64], x broadcast against 64 columns at a time), made at load beside the
// parameter and oneDNN's own packed copy: three copies of every weight. Reading W's rows
// directly costs a horizontal sum per output (`reduce16x4`) and keeps the weights once; it
// ran 16 rows and two threads 10-22% slower until its tiles went over K in chunks that stay
// in L1 and asked for the lines read next (small_gemm_tiles.h, "Blocking"); since, a step's
// linears take 0.96x-1.08x the column-group kernel's CPU (SmolLM2-135M, 1-16 rows; 1.07x-1.08x
// at 12-16) and 0.97x-1.06x for a Llama-3-8B layer (bench/RESULTS.md, "The plain-layout
// tiles blocked for L1"), so cpu_linear still packs models of up to 1 GiB of linear weights.
//
// Numerics: out[m][n] = (the 16 lane sums of x[m][k] * W[n][k], lane j over k = j, j + 16,
// ... in order, one fused multiply-add a term, reduced in a fixed tree) + bias[n]. The order
// depends on nothing else: not on the number of rows, a row's block, the thread count or
// the ISA (AVX-512 or AVX2 + FMA), so a sequence's outputs do not change with the batch it
// decodes in as long as every batch takes this kernel: in cpu_linear.linear that is up to
// 16 rows (SMALL_ROWS), on one thread or in torch's team; 17+ rows, or more threads with no
// team to join, go to oneDNN, whose sums run in other orders. The two differ by fp32
// rounding (tests/kernels/test_small_gemm.py bounds it).
//
// Weight rows are split over `threads` threads of torch's own OpenMP team (`team`, its
// GOMP_parallel, found by kvsaga/kernels/inplace.py) in chunks taken from a shared counter; with
// no team everything runs on the caller (the Python side keeps oneDNN for more than one
// thread without a team). The GIL is released.

#include <nanobind/nanobind.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define SG_X86 1
#define SG_AVX512 __attribute__((target("avx512f")))
#define SG_AVX2 __attribute__((target("avx2,fma")))
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "small_gemm_common.h"  // small_gemm::fill_bias

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// libgomp's entry for a parallel region: fn(data) on num_threads threads of the calling
// thread's team (what `#pragma omp parallel` compiles to).
using OmpParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);

// Weight floats a chunk of rows holds at least, and a second thread must have to be woken
// (a parked OpenMP worker takes microseconds to wake; 64 Ki floats stream from memory in
// about 20 us on one core).
constexpr int64_t kMinWork = int64_t{1} << 16;

struct Call {
  const float* x;
  int64_t x_row, m, k;
  const float* w;  // [n][k], row stride w_row
  int64_t w_row, n;
  const float* bias;  // [n] or null
  float* out;
  int64_t out_row;
  int64_t chunk, count;  // weight rows a chunk takes, chunks
  std::atomic<int64_t> next;
};

// This thread's buffer of at least n floats for partial sums, 64-byte aligned.
inline float* partial_sums(int64_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < static_cast<size_t>(n + 16)) buf.resize(static_cast<size_t>(n + 16));
  const auto at = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<float*>((at + 63) & ~uintptr_t{63});
}

#ifdef SG_X86

bool has_avx512() { return __builtin_cpu_supports("avx512f"); }
bool has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

#include "small_gemm_tiles.h"  // tiles::cols512, tiles::cols256 (uses Call, partial_sums)

// Weight rows n0 .. n1 - 1 against every row of x, on AVX-512 unless `avx2`.
void run_rows(const Call& c, int64_t n0, int64_t n1, bool avx2) {
  if (!avx2) tiles::cols512(c, n0, n1);
  else tiles::cols256(c, n0, n1);
}

#else
bool has_avx512() { return false; }
bool has_avx2() { return false; }
void run_rows(const Call&, int64_t, int64_t, bool) {}
#endif

// The widest ISA this CPU runs the kernel with: 2 (AVX-512), 1 (AVX2 + FMA), 0 (none: the
// Python side keeps oneDNN).
int64_t isa() { return has_avx512() ? 2 : has_avx2() ? 1 : 0; }

template <bool AVX2>
void run_chunks(void* self) {
  auto* c = static_cast<Call*>(self);
  for (int64_t i = c->next++; i < c->count; i = c->next++)
    run_rows(*c, i * c->chunk, std::min(c->n, (i + 1) * c->chunk), AVX2);
}

// out[m][n] (row stride out_row) = x[m] (row stride x_row, k contiguous) . W[n] (row
// stride w_row, k contiguous) + bias[n], for m < rows, n < n_out; with `use_isa` (2:
// AVX-512, 1: AVX2 + FMA; a test runs both on one CPU).
void gemm(uintptr_t x, int64_t x_row, int64_t rows, int64_t k, uintptr_t w, int64_t w_row,
          int64_t n_out, uintptr_t bias, uintptr_t out, int64_t out_row, int64_t threads,
          uintptr_t team, int64_t use_isa) {
  if (!((use_isa == 2 && has_avx512()) || (use_isa == 1 && has_avx2())))
    throw std::invalid_argument("small_gemm: this CPU has no tiles for isa " +
                                std::to_string(use_isa) + " (2: AVX-512, 1: AVX2 + FMA)");
  if (rows <= 0 || n_out <= 0) return;
  if (k <= 0) {  // no products: every output is its bias (or 0); the loops below store none
    small_gemm::fill_bias(reinterpret_cast<float*>(out), out_row, rows, n_out,
                          reinterpret_cast<const float*>(bias));
    return;
  }
  Call c{reinterpret_cast<const float*>(x), x_row, rows, k, reinterpret_cast<const float*>(w),
         w_row, n_out, reinterpret_cast<const float*>(bias), reinterpret_cast<float*>(out),
         out_row, 0, 0, {0}};
  // chunks of whole tiles (a multiple of 4 and of 3 weight rows) and of whole lines of an
  // output row (16 floats): where out's rows start on a line, no line has two writers
  c.chunk = std::max<int64_t>(48, (kMinWork / k + 47) / 48 * 48);
  c.count = (n_out + c.chunk - 1) / c.chunk;
  const bool avx2 = use_isa == 1;
  const int64_t t = std::min({threads, c.count, 1 + n_out * k / kMinWork});
  if (t <= 1 || team == 0) {
    run_rows(c, 0, n_out, avx2);
    return;
  }
  reinterpret_cast<OmpParallel>(team)(avx2 ? &run_chunks<true> : &run_chunks<false>, &c,
                                      static_cast<unsigned>(t), 0);
}

#include "small_gemm_groups.h"  // groups::gemm: the column-group copy's kernel

// The column group width this CPU's group tiles take: 64 (AVX-512), 32 (AVX2 + FMA), 0.
int64_t group_width() { return has_avx512() ? 64 : has_avx2() ? 32 : 0; }

}  // namespace

NB_MODULE(_small_gemm, m) {
  m.doc() = "fp32 x @ W^T for a few rows, W read in its plain [N, K] layout; see "
            "kvsaga/engine/cpu_linear.py.";
  m.def("gemm", &gemm, "x"_a, "x_row"_a, "rows"_a, "k"_a, "w"_a, "w_row"_a, "n"_a, "bias"_a,
        "out"_a, "out_row"_a, "threads"_a, "team"_a, "isa"_a,
        nb::call_guard<nb::gil_scoped_release>());
  m.def("gemm_groups", &groups::gemm, "x"_a, "x_row"_a, "rows"_a, "k"_a, "w"_a, "n"_a,
        "group"_a, "bias"_a, "out"_a, "out_row"_a, "threads"_a, "team"_a,
        nb::call_guard<nb::gil_scoped_release>());
  m.def("group_width", &group_width,
        "64 (AVX-512), 32 (AVX2 + FMA) or 0: the column group width of gemm_groups' tiles.");
  m.def("isa", &isa,
        "2 (AVX-512), 1 (AVX2 + FMA) or 0: the widest ISA this CPU runs the kernel with.");
  m.def("has_avx512", &has_avx512);
  m.def("has_avx2", &has_avx2);
}
