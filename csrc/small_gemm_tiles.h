// The small-rows GEMM's loops over a weight in its plain layout W [N][K] (row stride
// w_row, k contiguous): the parameter itself, no packed copy. Included by small_gemm.cpp.
//
// Tiles: up to MR rows of x against NR rows of W; each pair (row, weight row) sums in one
// 16-lane accumulator, lane j over k = j, j + 16, j + 32, ... (one fused multiply-add a
// term, in k order), the last partial step masked (lanes past K add 0 * 0); then the 16
// lanes reduce in one fixed tree (`reduce16`): j + (j + 8), then + 4, + 2, + 1. AVX-512
// holds an accumulator in one zmm, AVX2 in two ymm (lanes 0-7, 8-15) with the same sums, so
// the result depends on nothing but x[m], W[n] and bias[n]: not on the number of rows, a
// row's place in its tile, the thread count or the ISA.
//
// Blocking (bench/RESULTS.md, "The plain-layout tiles blocked for L1"):
// a tile's rows of W stream from memory once; several row blocks of x (more than 6 rows on
// AVX-512, 2 on AVX2) read them again from L1, so K goes in chunks (`chunk_k`) small enough
// that the tile's weight rows and every row of x over the chunk stay there, the blocks'
// sums kept in `part` between chunks. While a chunk computes, its blocks ask for the lines
// read next (this tile's next chunk, or the next tile's first) into L2, each block its
// share of the tile's rows, so that memory keeps streaming while the blocks compute from
// L1 (asking for the next tile in address order from the first block alone left memory
// idle while the others ran: 1.10x-1.29x the column-group kernel's CPU before, 0.96x-1.08x
// since).

#pragma once

#ifdef SG_X86

namespace tiles {

// Tiles: 6 rows x 4 weight rows on AVX-512 (24 accumulators, 6 x vectors and a weight
// vector: 31 of 32 registers), 2 x 3 on AVX2 (12 accumulators of 16, in halves).
constexpr int kNr512 = 4, kMr512 = 6;
constexpr int kNr256 = 3, kMr256 = 2;

// lanes 0-7 + lanes 8-15, then the fixed tree on 8 lanes.
SG_AVX2 inline float reduce8(__m256 t8) {
  const __m128 t4 = _mm_add_ps(_mm256_castps256_ps128(t8), _mm256_extractf128_ps(t8, 1));
  const __m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));  // [0+2, 1+3, ...]
  const __m128 t1 = _mm_add_ss(t2, _mm_shuffle_ps(t2, t2, 1));
  return _mm_cvtss_f32(t1);
}

SG_AVX512 inline float reduce16(__m512 a) {
  const __m256 lo = _mm512_castps512_ps256(a);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
  return reduce8(_mm256_add_ps(lo, hi));
}

// reduce16 of 4 accumulators at once: [reduce16(a[0]), ..., reduce16(a[3])], the same
// tree (8 apart, 4 apart, 2 apart, then the pair) in shuffles and adds across them.
SG_AVX512 inline __m128 reduce16x4(const __m512* a) {
  __m512 p[2];  // p[q]: a[2q]'s 8 sums j + (j + 8) in lanes 0-7, a[2q + 1]'s in 8-15
  for (int q = 0; q < 2; ++q)
    p[q] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * q], a[2 * q + 1], 0x44),
                         _mm512_shuffle_f32x4(a[2 * q], a[2 * q + 1], 0xEE));
  // 128-bit lane L: a[L]'s 4 sums (+ 4 apart)
  const __m512 h = _mm512_add_ps(_mm512_shuffle_f32x4(p[0], p[1], 0x88),
                                 _mm512_shuffle_f32x4(p[0], p[1], 0xDD));
  const __m512 t2 = _mm512_add_ps(h, _mm512_shuffle_ps(h, h, 0xEE));    // [0+2, 1+3, ..]
  const __m512 t1 = _mm512_add_ps(t2, _mm512_shuffle_ps(t2, t2, 0x11));  // [(0+2)+(1+3), ..]
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  return _mm512_castps512_ps128(_mm512_permutexvar_ps(order, t1));
}

// Bytes of L1 a chunk's weight rows and x rows may take (of 48 KiB on the host measured:
// 24-32 KiB read alike, 40 KiB and the whole of SmolLM2's K = 576 at 16 rows slower).
constexpr int64_t kL1Bytes = 32 * 1024;

// k steps a chunk of a tile of `nr` weight rows takes against m rows of x: all of K when
// it fits in kL1Bytes, else chunks as even as can be, each a multiple of 16 steps.
inline int64_t chunk_k(int64_t k, int64_t m, int64_t nr) {
  const int64_t most = std::max<int64_t>(64, kL1Bytes / ((m + nr) * 4) & ~int64_t{15});
  const int64_t chunks = (k + most - 1) / most;
  return chunks <= 1 ? k : ((k + chunks - 1) / chunks + 15) / 16 * 16;
}

// What a row block asks for while it computes: `rows` weight rows from `pf` (row stride
// `stride` bytes), one line of each a k step, 64 bytes further each step.
struct Ahead {
  const char* pf;
  int64_t stride;
  int rows;
};

// Block b of nb's share of the lines read after chunk k0 .. k1 of the tile of nr weight rows
// at n: rows b, b + nb, ... of this tile from k1, or (the last chunk) of the next tile from 0.
// Every address the block forms (its rows, one line a k step of the chunk) stays inside W:
// where the next lines would run past W's last element (the last tile's last chunk, a short
// last chunk after a longer one on the last row, a next tile of fewer rows than this one)
// the block asks for its own chunk's lines instead, already in L1 (forming a pointer past an
// array's end is undefined behaviour even if a prefetch never faults).
inline Ahead ahead_of(const Call& c, int64_t n, int64_t nr, int64_t k0, int64_t k1, int64_t b,
                      int64_t nb) {
  const int rows = static_cast<int>((nr - b + nb - 1) / nb);
  // the tile's loop takes (full - k0) / 16 whole steps, pf 64 bytes (16 floats) further each
  const int64_t full = k1 == c.k ? k0 + ((k1 - k0) & ~int64_t{15}) : k1;
  const int64_t steps = (full - k0) / 16;
  // this block's first row of the chunk (row n where the block has none: it asks for no
  // line, but its pointer still moves by a line a step)
  int64_t start = (n + (rows > 0 ? b : 0)) * c.w_row + k0;
  if (rows > 0) {
    const int64_t first = (k1 < c.k ? n * c.w_row + k1 : (n + nr) * c.w_row) + b * c.w_row;
    // the furthest address formed: the last row's line after its last step (<= W's end)
    if (first + (rows - 1) * nb * c.w_row + steps * 16 <= (c.n - 1) * c.w_row + c.k)
      start = first;
  }
  return {reinterpret_cast<const char*>(c.w + start), nb * c.w_row * 4, rows};
}

// out rows r .. r + MR - 1, columns n0 .. n0 + NR - 1, over k = k0 .. k1 - 1 (a multiple of
// 16 apart unless k1 = K); accumulators continued from / kept in `part` ([MR][NR] vectors,
// 64-byte aligned) when k0 > 0 / k1 < K; asking for `ahead`'s lines as it goes.
template <int MR, int NR, bool ALL>
SG_AVX512 void tile512(const Call& c, int64_t r, int64_t n0, int64_t k0, int64_t k1,
                       float* part, Ahead ahead) {
  const float* x = c.x + r * c.x_row;
  const float* w = c.w + n0 * c.w_row;
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j)
      acc[i][j] = k0 == 0 ? _mm512_setzero_ps() : _mm512_load_ps(part + (i * NR + j) * 16);
  const int64_t full = k1 == c.k ? k0 + ((k1 - k0) & ~int64_t{15}) : k1;
  const float* wr[NR];
  for (int j = 0; j < NR; ++j) wr[j] = w + j * c.w_row;
  const float* xr[MR];
  for (int i = 0; i < MR; ++i) xr[i] = x + i * c.x_row;
  const char* pf = ahead.pf;
  for (int64_t k = k0; k < full; k += 16, pf += 64) {
    for (int j = 0; j < (ALL ? NR : ahead.rows); ++j)
      _mm_prefetch(pf + j * ahead.stride, _MM_HINT_T1);
    __m512 xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = _mm512_loadu_ps(xr[i] + k);
    for (int j = 0; j < NR; ++j) {
      __m512 wv = _mm512_loadu_ps(wr[j] + k);
      // in a register: the compiler would otherwise fold the load into each row's
      // multiply-add, MR loads of it a step where one does
      if constexpr (MR > 1) asm("" : "+v"(wv));
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_fmadd_ps(wv, xv[i], acc[i][j]);
    }
  }
  if (k1 < c.k) {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) _mm512_store_ps(part + (i * NR + j) * 16, acc[i][j]);
    return;
  }
  if (full < c.k) {
    const __mmask16 mask = __mmask16((1u << (c.k - full)) - 1);
    __m512 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = _mm512_maskz_loadu_ps(mask, w + j * c.w_row + full);
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + i * c.x_row + full);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(wv[j], xv, acc[i][j]);
    }
  }
  if constexpr (NR == 4) {
    for (int i = 0; i < MR; ++i) {
      __m128 s = reduce16x4(acc[i]);
      if (c.bias != nullptr) s = _mm_add_ps(s, _mm_loadu_ps(c.bias + n0));
      _mm_storeu_ps(c.out + (r + i) * c.out_row + n0, s);
    }
  } else {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) {
        const float s = reduce16(acc[i][j]);
        c.out[(r + i) * c.out_row + n0 + j] = c.bias != nullptr ? s + c.bias[n0 + j] : s;
      }
  }
}

// The AVX2 twin: accumulators in halves (lanes 0-7, 8-15), kept in `part` as 16 floats.
template <int MR, int NR, bool ALL>
SG_AVX2 void tile256(const Call& c, int64_t r, int64_t n0, int64_t k0, int64_t k1,
                     float* part, Ahead ahead) {
  const float* x = c.x + r * c.x_row;
  const float* w = c.w + n0 * c.w_row;
  __m256 acc[MR][NR][2];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j)
      for (int h = 0; h < 2; ++h)
        acc[i][j][h] = k0 == 0 ? _mm256_setzero_ps()
                               : _mm256_load_ps(part + (i * NR + j) * 16 + 8 * h);
  const int64_t full = k1 == c.k ? k0 + ((k1 - k0) & ~int64_t{15}) : k1;
  const char* pf = ahead.pf;
  for (int64_t k = k0; k < full; k += 16, pf += 64) {
    for (int j = 0; j < (ALL ? NR : ahead.rows); ++j)
      _mm_prefetch(pf + j * ahead.stride, _MM_HINT_T1);
    for (int h = 0; h < 2; ++h) {
      __m256 wv[NR];
      for (int j = 0; j < NR; ++j) wv[j] = _mm256_loadu_ps(w + j * c.w_row + k + 8 * h);
      for (int i = 0; i < MR; ++i) {
        const __m256 xv = _mm256_loadu_ps(x + i * c.x_row + k + 8 * h);
        for (int j = 0; j < NR; ++j) acc[i][j][h] = _mm256_fmadd_ps(wv[j], xv, acc[i][j][h]);
      }
    }
  }
  if (k1 < c.k) {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j)
        for (int h = 0; h < 2; ++h)
          _mm256_store_ps(part + (i * NR + j) * 16 + 8 * h, acc[i][j][h]);
    return;
  }
  for (int h = 0; h < 2 && full + 8 * h < c.k; ++h) {
    const int64_t left = c.k - full - 8 * h;
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 wv[NR];
    for (int j = 0; j < NR; ++j) wv[j] = _mm256_maskload_ps(w + j * c.w_row + full + 8 * h, mask);
    for (int i = 0; i < MR; ++i) {
      const __m256 xv = _mm256_maskload_ps(x + i * c.x_row + full + 8 * h, mask);
      for (int j = 0; j < NR; ++j) acc[i][j][h] = _mm256_fmadd_ps(wv[j], xv, acc[i][j][h]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const float s = reduce8(_mm256_add_ps(acc[i][j][0], acc[i][j][1]));
      c.out[(r + i) * c.out_row + n0 + j] = c.bias != nullptr ? s + c.bias[n0 + j] : s;
    }
}

// ALL: the block asks for every row of the tile (the only block), the loop unrolled.
template <int NR, bool ALL>
SG_AVX512 void block512(const Call& c, int64_t rows, int64_t r, int64_t n, int64_t k0,
                        int64_t k1, float* part, Ahead ahead) {
  switch (rows) {
    case 1: tile512<1, NR, ALL>(c, r, n, k0, k1, part, ahead); break;
    case 2: tile512<2, NR, ALL>(c, r, n, k0, k1, part, ahead); break;
    case 3: tile512<3, NR, ALL>(c, r, n, k0, k1, part, ahead); break;
    case 4: tile512<4, NR, ALL>(c, r, n, k0, k1, part, ahead); break;
    case 5: tile512<5, NR, ALL>(c, r, n, k0, k1, part, ahead); break;
    default: tile512<6, NR, ALL>(c, r, n, k0, k1, part, ahead); break;
  }
}

// Every row against weight rows n0 .. n1 - 1: tiles of kNr512 (the rest one by one), row
// blocks of up to kMr512 (as even as can be: 16 rows are 6 + 5 + 5); each tile chunk by
// chunk of K (`chunk_k`), every block over a chunk while it is in L1.
SG_AVX512 void cols512(const Call& c, int64_t n0, int64_t n1) {
  const int64_t nb = (c.m + kMr512 - 1) / kMr512;
  const int64_t kc = chunk_k(c.k, c.m, kNr512);
  float* part = partial_sums(c.m * kNr512 * 16);
  for (int64_t n = n0; n < n1;) {
    const int64_t nr = n + kNr512 <= n1 ? kNr512 : 1;
    for (int64_t k0 = 0;; k0 += kc) {
      const int64_t k1 = std::min(c.k, k0 + kc);
      for (int64_t b = 0, r = 0, rows = 0; b < nb; ++b, r += rows) {
        rows = (c.m - r + nb - b - 1) / (nb - b);
        float* p = part + r * kNr512 * 16;
        const Ahead ahead = ahead_of(c, n, nr, k0, k1, b, nb);
        if (nr == kNr512) {
          if (nb == 1) block512<kNr512, true>(c, rows, r, n, k0, k1, p, ahead);
          else block512<kNr512, false>(c, rows, r, n, k0, k1, p, ahead);
        } else {
          block512<1, false>(c, rows, r, n, k0, k1, p, ahead);
        }
      }
      if (k1 == c.k) break;
    }
    n += nr;
  }
}

// Every row against weight rows n0 .. n1 - 1: tiles of kNr256 (the rest one by one), row
// blocks of up to kMr256 (as even as can be), chunk by chunk of K as cols512.
SG_AVX2 void cols256(const Call& c, int64_t n0, int64_t n1) {
  const int64_t nb = (c.m + kMr256 - 1) / kMr256;
  const int64_t kc = chunk_k(c.k, c.m, kNr256);
  float* part = partial_sums(c.m * kNr256 * 16);
  for (int64_t n = n0; n < n1;) {
    const int64_t nr = n + kNr256 <= n1 ? kNr256 : 1;
    for (int64_t k0 = 0;; k0 += kc) {
      const int64_t k1 = std::min(c.k, k0 + kc);
      for (int64_t b = 0, r = 0, rows = 0; b < nb; ++b, r += rows) {
        rows = (c.m - r + nb - b - 1) / (nb - b);
        float* p = part + r * kNr256 * 16;
        const Ahead ahead = ahead_of(c, n, nr, k0, k1, b, nb);
        if (nr == kNr256 && nb == 1) {
          if (rows == 1) tile256<1, kNr256, true>(c, r, n, k0, k1, p, ahead);
          else tile256<2, kNr256, true>(c, r, n, k0, k1, p, ahead);
        } else if (nr == kNr256) {
          if (rows == 1) tile256<1, kNr256, false>(c, r, n, k0, k1, p, ahead);
          else tile256<2, kNr256, false>(c, r, n, k0, k1, p, ahead);
        } else {
          if (rows == 1) tile256<1, 1, false>(c, r, n, k0, k1, p, ahead);
          else tile256<2, 1, false>(c, r, n, k0, k1, p, ahead);
        }
      }
      if (k1 == c.k) break;
    }
    n += nr;
  }
}

}  // namespace tiles

#endif
