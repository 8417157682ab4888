// The small-rows GEMM over a column-group copy of the weight ([N / G][K][G], k-major,
// columns past N zero; G = 64 on AVX-512, 32 on AVX2 + FMA; cpu_linear.pack_rows makes it):
// the kernel before the plain-layout tiles (small_gemm_tiles.h), kept for the "packed"
// weight mode (kvsaga/engine/cpu_linear.py, `WEIGHTS`), where a model holds this copy and
// oneDNN's beside its parameters for speed. Included by small_gemm.cpp.
//
// Rows go in blocks of up to 6 (AVX-512) or 3 (AVX2), every block's sums in registers;
// with several blocks they take a group 16 KiB at a time (`Span`), and each asks for the
// lines 16 KiB ahead (`prefetch_ahead`). Numerics: out[m][n] = (sum over k = 0 .. K - 1
// of x[m][k] * W[n][k], one fused multiply-add a term in that order) + bias[n]; the order
// depends on nothing else (rows, blocks, threads, ISA).

#pragma once

#include "small_gemm_common.h"  // small_gemm::fill_bias (included first by small_gemm.cpp)

namespace groups {

struct Call {
  const float* x;
  int64_t x_row, m, k;
  const float* w;  // [groups][k][group]
  int64_t n, group;
  const float* bias;  // [groups * group] or null
  float* out;
  int64_t out_row;
  int64_t chunk, count;
  std::atomic<int64_t> next;
};

// A row block's share of k: steps k0 .. k1 - 1, its partial sums kept in `part` ([MR][G],
// 64-byte aligned) between spans.
struct Span {
  int64_t k0, k1;
  float* part;
};

// k steps a span takes when a group has several row blocks (64 of a group of 64: 16 KiB).
// Why spans: a group's blocks one after the other read it from memory once (the first
// block, waiting on it) and then from L2 (the others, with memory idle): with 8 rows a
// step's linears took 57 ms of CPU that way against 54.5 in spans (one thread, the
// prefetch below on; a small gain, within this host's noise at 12 and 16 rows). Span by
// span, every block runs over the same 16 KiB while the next span streams in.
constexpr int64_t kSpan = 64;


#ifdef SG_X86


// How far ahead of the k step it reads a row block asks for the weight's lines (into L2):
// 16 KiB. Why: with a few rows the loop's multiply-adds fill the out-of-order window before
// enough of the weight's lines are in flight, and the hardware's stream prefetch alone kept
// a step's linears at 48-49 ms of CPU with 3 rows against 39-41 with 1 (one thread); asking
// 16 KiB ahead, 38-39 with 3 and 42-43 with 6 (bench/RESULTS.md, the section above).
// Lines past the weight's end are never read: a prefetch does not fault.
constexpr int64_t kAheadBytes = 16 * 1024;

// One k step's lines kAheadBytes ahead of wk (G floats a step: G * 4 / 64 lines).
template <int G>
inline void prefetch_ahead(const float* wk) {
  const char* a = reinterpret_cast<const char*>(wk) + kAheadBytes;
  for (int p = 0; p < G * 4 / 64; ++p) _mm_prefetch(a + p * 64, _MM_HINT_T1);
}

// Rows r .. r + MR - 1 of x against one group of 64 columns (4 vectors), `cols` of them
// real (the rest masked off on store), over k steps s.k0 .. s.k1 - 1 (`Span`).
template <int MR>
SG_AVX512 void block512(const Call& c, int64_t r, const float* w, int64_t col0, int64_t cols,
                        const Span& s) {
  const float* x = c.x + r * c.x_row;
  __m512 acc[MR][4];
  for (int i = 0; i < MR; ++i)
    for (int p = 0; p < 4; ++p)
      acc[i][p] = s.k0 == 0 ? _mm512_setzero_ps() : _mm512_load_ps(s.part + i * 64 + p * 16);
  for (int64_t k = s.k0; k < s.k1; ++k) {
    const float* wk = w + k * 64;
    prefetch_ahead<64>(wk);
    __m512 wv[4];
    for (int p = 0; p < 4; ++p) wv[p] = _mm512_loadu_ps(wk + p * 16);
    for (int i = 0; i < MR; ++i) {
      const __m512 xb = _mm512_set1_ps(x[i * c.x_row + k]);
      for (int p = 0; p < 4; ++p) acc[i][p] = _mm512_fmadd_ps(wv[p], xb, acc[i][p]);
    }
  }
  if (s.k1 < c.k) {  // partial sums, continued by the next span
    for (int i = 0; i < MR; ++i)
      for (int p = 0; p < 4; ++p) _mm512_store_ps(s.part + i * 64 + p * 16, acc[i][p]);
    return;
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
                      const Span& s) {
  const float* x = c.x + r * c.x_row;
  __m256 acc[MR][4];
  for (int i = 0; i < MR; ++i)
    for (int p = 0; p < 4; ++p)
      acc[i][p] = s.k0 == 0 ? _mm256_setzero_ps() : _mm256_load_ps(s.part + i * 32 + p * 8);
  for (int64_t k = s.k0; k < s.k1; ++k) {
    const float* wk = w + k * 32;
    prefetch_ahead<32>(wk);
    __m256 wv[4];
    for (int p = 0; p < 4; ++p) wv[p] = _mm256_loadu_ps(wk + p * 8);
    for (int i = 0; i < MR; ++i) {
      const __m256 xb = _mm256_broadcast_ss(x + i * c.x_row + k);
      for (int p = 0; p < 4; ++p) acc[i][p] = _mm256_fmadd_ps(wv[p], xb, acc[i][p]);
    }
  }
  if (s.k1 < c.k) {  // partial sums, continued by the next span
    for (int i = 0; i < MR; ++i)
      for (int p = 0; p < 4; ++p) _mm256_store_ps(s.part + i * 32 + p * 8, acc[i][p]);
    return;
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
// registers) or 3 (AVX2), each group's blocks one after the other (the group in L2).
SG_AVX512 void groups512(const Call& c, int64_t g0, int64_t g1) {
  float* part = partial_sums(c.m * 64);
  for (int64_t g = g0; g < g1; ++g) {
    const float* w = c.w + g * c.k * 64;
    const int64_t col0 = g * 64, cols = std::min<int64_t>(64, c.n - col0);
    // ceil(m / 6) blocks of as even sizes as can be (8 rows: 4 + 4, not 6 + 2)
    const int64_t nb = (c.m + 5) / 6;
    const int64_t span = nb == 1 ? c.k : kSpan;
    for (int64_t k0 = 0; k0 < c.k; k0 += span) {
      for (int64_t b = 0, r = 0, rows = 0; b < nb; ++b, r += rows) {
        rows = (c.m - r + nb - b - 1) / (nb - b);
        const Span s{k0, std::min(c.k, k0 + span), part + r * 64};
        switch (rows) {
          case 1: block512<1>(c, r, w, col0, cols, s); break;
          case 2: block512<2>(c, r, w, col0, cols, s); break;
          case 3: block512<3>(c, r, w, col0, cols, s); break;
          case 4: block512<4>(c, r, w, col0, cols, s); break;
          case 5: block512<5>(c, r, w, col0, cols, s); break;
          default: block512<6>(c, r, w, col0, cols, s); break;
        }
      }
    }
  }
}

SG_AVX2 void groups256(const Call& c, int64_t g0, int64_t g1) {
  float* part = partial_sums(c.m * 32);
  for (int64_t g = g0; g < g1; ++g) {
    const float* w = c.w + g * c.k * 32;
    const int64_t col0 = g * 32, cols = std::min<int64_t>(32, c.n - col0);
    // ceil(m / 3) blocks of as even sizes as can be (8 rows: 3 + 3 + 2)
    const int64_t nb = (c.m + 2) / 3;
    const int64_t span = nb == 1 ? c.k : 2 * kSpan;  // 16 KiB of a group of 32, too
    for (int64_t k0 = 0; k0 < c.k; k0 += span) {
      for (int64_t b = 0, r = 0, rows = 0; b < nb; ++b, r += rows) {
        rows = (c.m - r + nb - b - 1) / (nb - b);
        const Span s{k0, std::min(c.k, k0 + span), part + r * 32};
        switch (rows) {
          case 1: block256<1>(c, r, w, col0, cols, s); break;
          case 2: block256<2>(c, r, w, col0, cols, s); break;
          default: block256<3>(c, r, w, col0, cols, s); break;
        }
      }
    }
  }
}

void run_groups(const Call& c, int64_t g0, int64_t g1) {
  if (c.group == 64) groups512(c, g0, g1);
  else groups256(c, g0, g1);
}

#else
void run_groups(const Call&, int64_t, int64_t) {}
#endif

void run_chunks(void* self) {
  auto* c = static_cast<Call*>(self);
  const int64_t groups = (c->n + c->group - 1) / c->group;
  for (int64_t i = c->next++; i < c->count; i = c->next++)
    run_groups(*c, i * c->chunk, std::min(groups, (i + 1) * c->chunk));
}

// out[m][n] (row stride out_row) = x[m] (row stride x_row, k contiguous) . W[n] + bias[n]
// for m < rows, n < n_out; w packed for `group` (64 or 32, this CPU's or a narrower one's).
void gemm(uintptr_t x, int64_t x_row, int64_t rows, int64_t k, uintptr_t w, int64_t n_out,
          int64_t group, uintptr_t bias, uintptr_t out, int64_t out_row, int64_t threads,
          uintptr_t team) {
  if (!((group == 64 && has_avx512()) || (group == 32 && has_avx2())))
    throw std::invalid_argument("small_gemm: no tiles of group width " +
                                std::to_string(group) + " on this CPU");
  if (rows <= 0 || n_out <= 0) return;
  if (k <= 0) {  // no products: every output is its bias (or 0); the loops below store none
    small_gemm::fill_bias(reinterpret_cast<float*>(out), out_row, rows, n_out,
                          reinterpret_cast<const float*>(bias));
    return;
  }
  const int64_t groups = (n_out + group - 1) / group;
  const int64_t per_group = std::max<int64_t>(1, k * group);
  Call c{reinterpret_cast<const float*>(x), x_row, rows, k, reinterpret_cast<const float*>(w),
         n_out, group, reinterpret_cast<const float*>(bias), reinterpret_cast<float*>(out),
         out_row, 0, 0, {0}};
  c.chunk = std::max<int64_t>(1, kMinWork / per_group);
  c.count = (groups + c.chunk - 1) / c.chunk;
  const int64_t t = std::min({threads, c.count, 1 + groups * per_group / kMinWork});
  if (t <= 1 || team == 0) {
    run_groups(c, 0, groups);
    return;
  }
  reinterpret_cast<OmpParallel>(team)(&run_chunks, &c, static_cast<unsigned>(t), 0);
}

}  // namespace groups
