// Part of csrc/paged_attn.cpp (kvsaga._paged_attn), included there inside its anonymous
// namespace after the AVX-512 paths, on x86-64 GCC/clang only: it uses that file's Args,
// Task, Item, RowWalk, load_query, softmax_rows, exp_nonpos and the extend GEMM's
// gemm_takes, and is not a unit of its own.
//
// What: the AVX2 + FMA twins of the AVX-512 row tiles (run_item_avx512) and of the extend
// GEMM (run_item_gemm, paged_attn_gemm.h), for head sizes 64 and 128, run where the CPU has
// AVX2 and FMA but no AVX-512. Why: without them such a CPU sent every prefill and extend
// row to torch SDPA and the rest to the generic loops; the host of 2026-12-01 (AVX2 only)
// made kvsaga-serve ~5x slower per task with the same code (bench/RESULTS.md, "Why every arm
// of that run was slower"). Same numerics contract as the AVX-512 paths: fp32 products and
// sums throughout, only the order of the sums differs (the tests hold both to the torch
// reference).
//
// Layout differences from the AVX-512 code: a vector holds 8 floats (C = head_dim / 8
// vectors per row) and there are 16 registers instead of 32, so the tiles are narrower:
// the row tiles take up to 3 heads at once and the values pass 32 output columns at a time;
// the GEMM takes 8 positions per K tile and up to 2 lane vectors (16 query heads) at once.

#pragma once

#define KV_AVX2 __attribute__((target("avx2,fma")))

// ---- Row tiles (one query row at a time, its `group` heads together) ----

// Lane i of the result: the sum of the 8 lanes of v[i]. hadd adds neighbouring pairs within
// each 128-bit half; two levels leave, in each half of b0, the four partial sums of v[0..3]
// over that half (b1: v[4..7]); adding the halves gives the totals.
KV_AVX2 inline __m256 sum8(const __m256* v) {
  const __m256 b0 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
  const __m256 b1 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
  const __m256 lo = _mm256_permute2f128_ps(b0, b1, 0x20);  // [b0 low half, b1 low half]
  const __m256 hi = _mm256_permute2f128_ps(b0, b1, 0x31);  // [b0 high half, b1 high half]
  return _mm256_add_ps(lo, hi);
}

// Pass 1 for GT heads (scaled query rows q, stride C * 8): scores of ctx positions into sc
// (row stride ctx), 8 positions at a time. Each K row is loaded once for the GT heads; each
// head keeps two accumulators (even and odd vectors of the row) so that 2 x GT multiply-add
// chains are in flight; the queries are read from L1 (16 registers do not hold them).
template <int C, int GT>
KV_AVX2 void scores_tile8(const float* q, RowWalk k, int64_t ctx, float* sc) {
  alignas(32) __m256 part[GT][8];
  alignas(32) float total[8];
  for (int64_t p0 = 0; p0 < ctx; p0 += 8) {
    const int n = static_cast<int>(std::min<int64_t>(8, ctx - p0));
    for (int o = 0; o < n; ++o) {
      const float* krow = k.next();
      __m256 even[GT], odd[GT];
      for (int t = 0; t < GT; ++t) even[t] = odd[t] = _mm256_setzero_ps();
      for (int c = 0; c < C; c += 2) {
        const __m256 k0 = _mm256_loadu_ps(krow + c * 8), k1 = _mm256_loadu_ps(krow + c * 8 + 8);
        for (int t = 0; t < GT; ++t) {
          even[t] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (t * C + c) * 8), k0, even[t]);
          odd[t] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (t * C + c + 1) * 8), k1, odd[t]);
        }
      }
      for (int t = 0; t < GT; ++t) part[t][o] = _mm256_add_ps(even[t], odd[t]);
    }
    for (int t = 0; t < GT; ++t) {
      for (int o = n; o < 8; ++o) part[t][o] = _mm256_setzero_ps();
      if (n == 8) {
        _mm256_storeu_ps(sc + t * ctx + p0, sum8(part[t]));
      } else {  // the last, partial group of positions: only n scores are the row's
        _mm256_store_ps(total, sum8(part[t]));
        std::copy(total, total + n, sc + t * ctx + p0);
      }
    }
  }
}

// Pass 2 for GT heads, output columns col .. col + 31: out rows (stride o_head) =
// probabilities (sc, row stride ctx) @ V[:, col .. col + 31]. GT x 4 accumulators and GT
// broadcast weights: at most 15 of the 16 registers.
template <int GT>
KV_AVX2 void values_tile8(const float* sc, RowWalk v, int64_t ctx, int64_t col, float* out,
                          int64_t o_head) {
  __m256 acc[GT][4];
  for (int t = 0; t < GT; ++t)
    for (int c = 0; c < 4; ++c) acc[t][c] = _mm256_setzero_ps();
  for (int64_t p = 0; p < ctx; ++p) {
    const float* vrow = v.next() + col;
    for (int t = 0; t < GT; ++t) {
      const __m256 w = _mm256_set1_ps(sc[t * ctx + p]);
      for (int c = 0; c < 4; ++c)
        acc[t][c] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vrow + c * 8), acc[t][c]);
    }
  }
  for (int t = 0; t < GT; ++t)
    for (int c = 0; c < 4; ++c) _mm256_storeu_ps(out + t * o_head + col + c * 8, acc[t][c]);
}

// Heads j0 .. j0 + GT - 1 of the item's query row (ctx positions): scores, softmax, values.
// `cold`: the row's first walk over its context (RowWalk prefetches one block ahead).
template <int C, int GT>
KV_AVX2 void heads_avx2(const Args& a, const Item& it, int64_t j0, int64_t ctx, float* orow,
                        bool cold) {
  constexpr int64_t D = C * 8;
  float* sc = it.sc_all + j0 * ctx;
  scores_tile8<C, GT>(it.qloc + j0 * D, it.rows(a, a.k, ctx, cold), ctx, sc);
  softmax_rows(sc, GT, ctx);
  for (int64_t col = 0; col < D; col += 32)
    values_tile8<GT>(sc, it.rows(a, a.v, ctx, cold && col == 0), ctx, col,
                     orow + j0 * a.o_head, a.o_head);
}

// The row path on AVX2 (C = head_dim / 8): each query row, its heads three at a time.
template <int C>
KV_AVX2 void run_item_avx2(const Args& a, const Task& task, std::vector<float>& buf) {
  const Item it = make_item(a, task, buf);
  const int64_t g = a.group;
  for (int64_t r = it.r0; r < it.r1; ++r) {
    const int64_t ctx = load_query(a, it, r);
    float* orow = a.out + (it.q0 + r) * a.o_tok + it.h * g * a.o_head;
    for (int64_t j0 = 0; j0 < g; j0 += 3) {
      const bool cold = r == it.r0 && j0 == 0;
      const int64_t gt = std::min<int64_t>(3, g - j0);
      if (gt == 3) heads_avx2<C, 3>(a, it, j0, ctx, orow, cold);
      else if (gt == 2) heads_avx2<C, 2>(a, it, j0, ctx, orow, cold);
      else heads_avx2<C, 1>(a, it, j0, ctx, orow, cold);
    }
  }
}

// ---- The extend GEMM (see paged_attn_gemm.h for why and the math) ----
// Qt [D][mpad] holds the task's M = rows x group scaled query heads across lanes (mpad: M
// rounded up to 8); St [ctx_pad][mpad] the scores, then the unnormalised probabilities.

// exp_nonpos on 8 lanes (the same polynomial; x already clamped to [-87, 0]).
KV_AVX2 inline __m256 exp_nonpos8(__m256 x) {
  const __m256i ni = _mm256_cvttps_epi32(
      _mm256_sub_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _mm256_set1_ps(0.5f)));
  const __m256 n = _mm256_cvtepi32_ps(ni);
  __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
  r = _mm256_add_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(2.12194440e-4f)));
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 e = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r),
                                 _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(e, _mm256_castsi256_ps(bits));
}

// Scores of PT positions (K rows contiguous in `tile`, stride D) for NV x 8 query lanes (Qt
// from the first lane, stride mpad) into St rows (stride mpad): each broadcast K element
// feeds NV lane vectors. NV x PT accumulators: 8 of the 16 registers.
template <int D, int NV, int PT>
KV_AVX2 inline void gemm8_scores(const float* qt, int64_t mpad, const float* tile, float* st) {
  __m256 acc[NV][PT];
  for (int t = 0; t < NV; ++t)
    for (int o = 0; o < PT; ++o) acc[t][o] = _mm256_setzero_ps();
  for (int i = 0; i < D; ++i) {
    __m256 q[NV];
    for (int t = 0; t < NV; ++t) q[t] = _mm256_loadu_ps(qt + i * mpad + t * 8);
    for (int o = 0; o < PT; ++o) {
      const __m256 k = _mm256_set1_ps(tile[o * D + i]);
      for (int t = 0; t < NV; ++t) acc[t][o] = _mm256_fmadd_ps(q[t], k, acc[t][o]);
    }
  }
  for (int t = 0; t < NV; ++t)
    for (int o = 0; o < PT; ++o) _mm256_storeu_ps(st + o * mpad + t * 8, acc[t][o]);
}

// An 8-position K tile's scores for NV lane vectors.
template <int D, int NV>
KV_AVX2 inline void gemm8_scores_tile(const float* qt, int64_t mpad, const float* tile,
                                      float* st) {
  constexpr int PT = NV == 1 ? 8 : 4;
  for (int o = 0; o < 8; o += PT) gemm8_scores<D, NV, PT>(qt, mpad, tile + o * D, st + o * mpad);
}

// Softmax down 8 lanes of St (rows 0 .. ctx - 1, stride mpad), unnormalised: lane l keeps
// rows < lens[l] (the others become 0, by an AND with the compare's all-ones/zero mask);
// returns 1 / each lane's sum. Every lane keeps row 0 at least, so each maximum is finite.
KV_AVX2 inline __m256 gemm8_softmax(float* st, int64_t mpad, int64_t ctx, __m256i lens) {
  __m256 mx = _mm256_set1_ps(-INFINITY);
  for (int64_t p = 0; p < ctx; ++p) {
    const __m256 in = _mm256_castsi256_ps(
        _mm256_cmpgt_epi32(lens, _mm256_set1_epi32(static_cast<int>(p))));
    mx = _mm256_blendv_ps(mx, _mm256_max_ps(mx, _mm256_loadu_ps(st + p * mpad)), in);
  }
  __m256 sum = _mm256_setzero_ps();
  const __m256 lo = _mm256_set1_ps(-87.0f);
  for (int64_t p = 0; p < ctx; ++p) {
    const __m256 in = _mm256_castsi256_ps(
        _mm256_cmpgt_epi32(lens, _mm256_set1_epi32(static_cast<int>(p))));
    const __m256 x = _mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(st + p * mpad), mx), lo);
    const __m256 e = _mm256_and_ps(exp_nonpos8(x), in);
    _mm256_storeu_ps(st + p * mpad, e);
    sum = _mm256_add_ps(sum, e);
  }
  return _mm256_div_ps(_mm256_set1_ps(1.0f), sum);
}

// Output elements i0 .. i0 + DT - 1 of NV x 8 query lanes: sum over positions of
// St[p][lane] * V[p][i] (V rows read in place), times each lane's 1 / sum, transposed
// through `otile` ([DT][8]) into the lanes' output rows; `lanes`: the real lanes left.
template <int NV, int DT>
KV_AVX2 inline void gemm8_values(const float* st, int64_t mpad, const float* const* vrows,
                                 int64_t ctx, int64_t i0, const __m256* inv, float* otile,
                                 float* const* orows, int64_t lanes) {
  __m256 acc[NV][DT];
  for (int t = 0; t < NV; ++t)
    for (int o = 0; o < DT; ++o) acc[t][o] = _mm256_setzero_ps();
  for (int64_t p = 0; p < ctx; ++p) {
    __m256 w[NV];
    for (int t = 0; t < NV; ++t) w[t] = _mm256_loadu_ps(st + p * mpad + t * 8);
    const float* v = vrows[p] + i0;
    for (int o = 0; o < DT; ++o) {
      const __m256 b = _mm256_set1_ps(v[o]);
      for (int t = 0; t < NV; ++t) acc[t][o] = _mm256_fmadd_ps(b, w[t], acc[t][o]);
    }
  }
  for (int t = 0; t < NV; ++t) {
    for (int o = 0; o < DT; ++o) _mm256_storeu_ps(otile + o * 8, _mm256_mul_ps(acc[t][o], inv[t]));
    for (int64_t l = 0; l < 8 && t * 8 + l < lanes; ++l)
      for (int o = 0; o < DT; ++o) orows[t * 8 + l][i0 + o] = otile[o * 8 + l];
  }
}

template <int D>
KV_AVX2 void run_item_gemm8(const Args& a, const Task& task, std::vector<float>& buf) {
  // The layout and the K tiles are the AVX-512 GEMM's, at 8 lanes (paged_attn_gemm.h).
  const GemmLayout L = gemm_layout<8, D>(a, task, buf);
  const int64_t m = L.m, nv = L.nv, mpad = L.mpad, ctx = L.ctx;
  float *const qt = L.qt, *const st = L.st, *const tile = L.tile, *const otile = L.otile;
  const std::vector<int32_t>& lens = *L.lens;
  const std::vector<const float*>& vrows = *L.vrows;
  const std::vector<float*>& orows = *L.orows;
  for (int64_t p0 = 0; p0 < L.ctx_pad; p0 += 8) {
    gemm_k_tile<8, D>(a, L, p0);
    for (int64_t mv = 0, n; mv < nv; mv += n) {  // lane vectors two at a time
      n = std::min<int64_t>(2, nv - mv);
      float* out = st + p0 * mpad + mv * 8;
      if (n == 2) gemm8_scores_tile<D, 2>(qt + mv * 8, mpad, tile, out);
      else gemm8_scores_tile<D, 1>(qt + mv * 8, mpad, tile, out);
    }
  }
  for (int64_t mv = 0, n; mv < nv; mv += n) {
    n = std::min<int64_t>(2, nv - mv);
    __m256 inv[2];
    for (int64_t t = 0; t < n; ++t)
      inv[t] = gemm8_softmax(st + (mv + t) * 8, mpad, ctx,
                             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                                 lens.data() + (mv + t) * 8)));
    const float* sv = st + mv * 8;
    float* const* ov = orows.data() + mv * 8;
    const int64_t lanes = m - mv * 8;
    if (n == 2) {
      for (int64_t i0 = 0; i0 < D; i0 += 4)
        gemm8_values<2, 4>(sv, mpad, vrows.data(), ctx, i0, inv, otile, ov, lanes);
    } else {
      for (int64_t i0 = 0; i0 < D; i0 += 8)
        gemm8_values<1, 8>(sv, mpad, vrows.data(), ctx, i0, inv, otile, ov, lanes);
    }
  }
}

bool cpu_has_avx2_fma() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
