// kvsaga._small_gemm: out = x @ W^T (+ bias) for the few rows of a decode step, fp32, with
// W packed once into column groups.
//
// Why (bench/RESULTS.md, "A small-rows GEMM for the decode step's linears"): a decode
// step of SmolLM2-135M makes 121 matmuls of 1-16 rows, each streaming its weight from
// memory once. torch's oneDNN linear (`mkldnn._linear_pointwise`) spends ~19 us a call
// around its kernel (primitive lookup, descriptors, the boxed dispatcher), on the engine
// thread while the other core waits; a few rows need no blocking decisions, so here one
// loop per ISA streams the packed weight once and keeps every row's accumulators in
// registers.
//
// Layout (kvsaga/engine/cpu_linear.py, `pack_rows`): W [N, K] as [N_pad / G][K][G], group
// g holding output columns g * G .. g * G + G - 1 k-major, so that a group's K x G floats
// are one contiguous stream; columns past N are zero. G = 64 on AVX-512 (4 zmm vectors),
// 32 on AVX2 + FMA (4 ymm). A group is read from memory by its first block of up to MR
// rows and from L2 by the others (K x G floats: 144 KiB at K = 576, G = 64).
//
// Numerics: out[m][n] = (sum over k = 0, 1, ..., K - 1 of x[m][k] * W[n][k], one fused
// multiply-add a term in that order) + bias[n]. The order depends on nothing else: not on
// the number of rows, a row's block, the thread count or the ISA, so a sequence's outputs
// do not change with the batch it decodes in. torch sums in other orders (blocked, split
// K): the two differ by fp32 rounding (tests/kernels/test_small_gemm.py bounds it).
//
// Groups are split over `threads` threads of torch's own OpenMP team (`team`, its
// GOMP_parallel, found by kernels/inplace.py) in chunks taken from a shared counter; with
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

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// libgomp's entry for a parallel region: fn(data) on num_threads threads of the calling
// thread's team (what `#pragma omp parallel` compiles to).
using OmpParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);

// Weight floats a chunk of groups holds at least, and a second thread must have to be
// woken (a parked OpenMP worker takes microseconds to wake; 64 Ki floats stream from
// memory in about 20 us on one core).
constexpr int64_t kMinWork = int64_t{1} << 16;

struct Call {
  const float* x;
  int64_t x_row, m, k;
  const float* w;  // [groups][k][group]
  int64_t n, group;
  const float* bias;  // [groups * group] or null
  float* out;
  int64_t out_row;
  int64_t prefetch;  // k rows ahead to prefetch in a group's first row block; 0: none
  int64_t chunk, count;
  std::atomic<int64_t> next;
};

#ifdef SG_X86

bool has_avx512() { return __builtin_cpu_supports("avx512f"); }
bool has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

// Rows r .. r + MR - 1 of x against one group of 64 columns (4 vectors), `cols` of them
// real (the rest masked off on store).
template <int MR>
SG_AVX512 void block512(const Call& c, int64_t r, const float* w, int64_t col0, int64_t cols,
                        bool first) {
  const float* x = c.x + r * c.x_row;
  __m512 acc[MR][4];
  for (int i = 0; i < MR; ++i)
    for (int p = 0; p < 4; ++p) acc[i][p] = _mm512_setzero_ps();
  const int64_t pf = first ? c.prefetch : 0;
  for (int64_t k = 0; k < c.k; ++k) {
    const float* wk = w + k * 64;
    if (pf != 0 && k + pf < c.k)
      for (int p = 0; p < 4; ++p)
        _mm_prefetch(reinterpret_cast<const char*>(wk + pf * 64 + p * 16), _MM_HINT_T0);
    __m512 wv[4];
    for (int p = 0; p < 4; ++p) wv[p] = _mm512_loadu_ps(wk + p * 16);
    for (int i = 0; i < MR; ++i) {
      const __m512 xb = _mm512_set1_ps(x[i * c.x_row + k]);
      for (int p = 0; p < 4; ++p) acc[i][p] = _mm512_fmadd_ps(wv[p], xb, acc[i][p]);
    }
  }
  for (int p = 0; p < 4; ++p) {
    const int64_t left = cols - p * 16;
    if (left <= 0) break;
    const __mmask16 mask = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
    const __m512 b = c.bias != nullptr ? _mm512_maskz_loadu_ps(mask, c.bias + col0 + p * 16)
                                       : _mm512_setzero_ps();
    for (int i = 0; i < MR; ++i)
      _mm512_mask_storeu_ps(c.out + (r + i) * c.out_row + col0 + p * 16, mask,
                            _mm512_add_ps(acc[i][p], b));
  }
}

// The AVX2 twin: one group of 32 columns (4 ymm vectors), up to 3 rows (12 accumulators
// of 16 registers).
template <int MR>
SG_AVX2 void block256(const Call& c, int64_t r, const float* w, int64_t col0, int64_t cols,
                      bool first) {
  const float* x = c.x + r * c.x_row;
  __m256 acc[MR][4];
  for (int i = 0; i < MR; ++i)
    for (int p = 0; p < 4; ++p) acc[i][p] = _mm256_setzero_ps();
  const int64_t pf = first ? c.prefetch : 0;
  for (int64_t k = 0; k < c.k; ++k) {
    const float* wk = w + k * 32;
    if (pf != 0 && k + pf < c.k)
      for (int p = 0; p < 2; ++p)
        _mm_prefetch(reinterpret_cast<const char*>(wk + pf * 32 + p * 16), _MM_HINT_T0);
    __m256 wv[4];
    for (int p = 0; p < 4; ++p) wv[p] = _mm256_loadu_ps(wk + p * 8);
    for (int i = 0; i < MR; ++i) {
      const __m256 xb = _mm256_broadcast_ss(x + i * c.x_row + k);
      for (int p = 0; p < 4; ++p) acc[i][p] = _mm256_fmadd_ps(wv[p], xb, acc[i][p]);
    }
  }
  for (int p = 0; p < 4; ++p) {
    const int64_t left = cols - p * 8;
    if (left <= 0) break;
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 b = c.bias != nullptr ? _mm256_maskload_ps(c.bias + col0 + p * 8, mask)
                                       : _mm256_setzero_ps();
    for (int i = 0; i < MR; ++i)
      _mm256_maskstore_ps(c.out + (r + i) * c.out_row + col0 + p * 8, mask,
                          _mm256_add_ps(acc[i][p], b));
  }
}

// Groups g0 .. g1 - 1, every row: blocks of up to 6 rows (AVX-512: 24 accumulators of 32
// registers) or 3 (AVX2).
SG_AVX512 void groups512(const Call& c, int64_t g0, int64_t g1) {
  for (int64_t g = g0; g < g1; ++g) {
    const float* w = c.w + g * c.k * 64;
    const int64_t col0 = g * 64, cols = std::min<int64_t>(64, c.n - col0);
    for (int64_t r = 0; r < c.m; r += 6) {
      const bool first = r == 0;
      switch (std::min<int64_t>(6, c.m - r)) {
        case 1: block512<1>(c, r, w, col0, cols, first); break;
        case 2: block512<2>(c, r, w, col0, cols, first); break;
        case 3: block512<3>(c, r, w, col0, cols, first); break;
        case 4: block512<4>(c, r, w, col0, cols, first); break;
        case 5: block512<5>(c, r, w, col0, cols, first); break;
        default: block512<6>(c, r, w, col0, cols, first); break;
      }
    }
  }
}

SG_AVX2 void groups256(const Call& c, int64_t g0, int64_t g1) {
  for (int64_t g = g0; g < g1; ++g) {
    const float* w = c.w + g * c.k * 32;
    const int64_t col0 = g * 32, cols = std::min<int64_t>(32, c.n - col0);
    for (int64_t r = 0; r < c.m; r += 3) {
      const bool first = r == 0;
      switch (std::min<int64_t>(3, c.m - r)) {
        case 1: block256<1>(c, r, w, col0, cols, first); break;
        case 2: block256<2>(c, r, w, col0, cols, first); break;
        default: block256<3>(c, r, w, col0, cols, first); break;
      }
    }
  }
}

void run_groups(const Call& c, int64_t g0, int64_t g1) {
  if (c.group == 64) groups512(c, g0, g1);
  else groups256(c, g0, g1);
}

#else
bool has_avx512() { return false; }
bool has_avx2() { return false; }
void run_groups(const Call&, int64_t, int64_t) {}
#endif

// The column group width this CPU's tiles take: 64 (AVX-512), 32 (AVX2 + FMA) or 0 (none:
// the Python side keeps oneDNN).
int64_t group_width() { return has_avx512() ? 64 : has_avx2() ? 32 : 0; }

void run_chunks(void* self) {
  auto* c = static_cast<Call*>(self);
  const int64_t groups = (c->n + c->group - 1) / c->group;
  for (int64_t i = c->next++; i < c->count; i = c->next++)
    run_groups(*c, i * c->chunk, std::min(groups, (i + 1) * c->chunk));
}

// out[m][n] (row stride out_row) = x[m] (row stride x_row, k contiguous) . W[n] + bias[n]
// for m < rows, n < n_out; w packed for `group` (64 or 32, this CPU's or a narrower one's).
void gemm(uintptr_t x, int64_t x_row, int64_t rows, int64_t k, uintptr_t w, int64_t n_out,
          int64_t group, uintptr_t bias, uintptr_t out, int64_t out_row, int64_t prefetch,
          int64_t threads, uintptr_t team) {
  if (!((group == 64 && has_avx512()) || (group == 32 && has_avx2())))
    throw std::invalid_argument("small_gemm: no tiles of group width " +
                                std::to_string(group) + " on this CPU");
  if (rows <= 0 || n_out <= 0) return;
  const int64_t groups = (n_out + group - 1) / group;
  const int64_t per_group = std::max<int64_t>(1, k * group);
  Call c{reinterpret_cast<const float*>(x), x_row, rows, k, reinterpret_cast<const float*>(w),
         n_out, group, reinterpret_cast<const float*>(bias), reinterpret_cast<float*>(out),
         out_row, prefetch, 0, 0, {0}};
  c.chunk = std::max<int64_t>(1, kMinWork / per_group);
  c.count = (groups + c.chunk - 1) / c.chunk;
  const int64_t t = std::min({threads, c.count, 1 + groups * per_group / kMinWork});
  if (t <= 1 || team == 0) {
    run_groups(c, 0, groups);
    return;
  }
  reinterpret_cast<OmpParallel>(team)(&run_chunks, &c, static_cast<unsigned>(t), 0);
}

}  // namespace

NB_MODULE(_small_gemm, m) {
  m.doc() = "fp32 x @ W^T for a few rows, W packed in column groups; see "
            "kvsaga/engine/cpu_linear.py.";
  m.def("gemm", &gemm, "x"_a, "x_row"_a, "rows"_a, "k"_a, "w"_a, "n"_a, "group"_a, "bias"_a,
        "out"_a, "out_row"_a, "prefetch"_a, "threads"_a, "team"_a,
        nb::call_guard<nb::gil_scoped_release>());
  m.def("group_width", &group_width,
        "64 (AVX-512), 32 (AVX2 + FMA) or 0: the column group width this CPU's tiles take.");
  m.def("has_avx512", &has_avx512);
  m.def("has_avx2", &has_avx2);
}
