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
// the GEMM takes 8 positions per K tile and up to 3 lane vectors (24 query heads) at once,
// and walks the context in chunks with an online softmax (run_item_gemm8: no context cap).

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

// An 8-position K tile's scores for NV lane vectors: NV x PT accumulators, 8 to 12 of the
// 16 registers (with NV = 3, PT = 4: 7 loads per 12 multiply-adds).
template <int D, int NV>
KV_AVX2 inline void gemm8_scores_tile(const float* qt, int64_t mpad, const float* tile,
                                      float* st) {
  constexpr int PT = NV == 1 ? 8 : 4;
  for (int o = 0; o < 8; o += PT) gemm8_scores<D, NV, PT>(qt, mpad, tile + o * D, st + o * mpad);
}

// Positions per chunk of the AVX2 extend GEMM: St holds one chunk's scores ([kChunk8][mpad],
// 12 KiB for 48 query heads), so Qt, St and the output accumulators stay in L1/L2 whatever
// the context, and the GEMM needs no context cap.
constexpr int64_t kChunk8 = 64;

// All-ones in the lanes whose context holds position p (lens > p), zero in the others.
KV_AVX2 inline __m256 lanes_see8(__m256i lens, int64_t p) {
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(lens, _mm256_set1_epi32(static_cast<int>(p))));
}

// Asks the CPU for row p (D floats) of the task's head in `cache` (K or V), if p is in the
// context: the rows of a chunk lie in blocks anywhere in the tier, where the hardware's
// stream prefetch stops at each block's end.
template <int64_t D>
inline void prefetch_row8(const Args& a, const GemmLayout& L, const float* cache, int64_t p) {
  if (p >= L.ctx) return;
  const float* row = cache + static_cast<int64_t>(L.table[p / a.block_size]) * a.c_block +
                     p % a.block_size * a.c_tok + L.h * a.c_head;
  for (int64_t i = 0; i < D; i += 16) KV_PREFETCH(row + i);
}

// One chunk's online softmax down 8 lanes (St rows 0 .. kc - 1 are positions c0 ..):
// lane l keeps positions < lens[l] (`masked`: some lane ends inside the chunk; else no
// compare at all). The running maximum `m` and sum `l` (8 floats each) move to the chunk's;
// St becomes exp(score - new max), and the return value is exp(old max - new max), by which
// the output accumulators must be scaled. Chunk 0 holds position 0, which every lane sees,
// so each maximum is finite from then on (a lane with no position in a later chunk keeps
// its maximum: factor 1, probabilities 0).
KV_AVX2 inline __m256 flash8_softmax(float* st, int64_t mpad, int64_t kc, int64_t c0,
                                     __m256i lens, bool masked, float* m, float* l) {
  const __m256 old = _mm256_loadu_ps(m);
  __m256 mx = old;
  if (masked) {
    for (int64_t p = 0; p < kc; ++p)
      mx = _mm256_blendv_ps(mx, _mm256_max_ps(mx, _mm256_loadu_ps(st + p * mpad)),
                            lanes_see8(lens, c0 + p));
  } else {
    for (int64_t p = 0; p < kc; ++p) mx = _mm256_max_ps(mx, _mm256_loadu_ps(st + p * mpad));
  }
  const __m256 lo = _mm256_set1_ps(-87.0f);
  // old - mx: -inf in chunk 0 (old = -inf), clamped to -87: a factor of ~1e-38 on zeros.
  const __m256 alpha = exp_nonpos8(_mm256_max_ps(_mm256_sub_ps(old, mx), lo));
  __m256 sum = _mm256_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    const __m256 x = _mm256_max_ps(_mm256_sub_ps(_mm256_loadu_ps(st + p * mpad), mx), lo);
    __m256 e = exp_nonpos8(x);
    if (masked) e = _mm256_and_ps(e, lanes_see8(lens, c0 + p));
    _mm256_storeu_ps(st + p * mpad, e);
    sum = _mm256_add_ps(sum, e);
  }
  _mm256_storeu_ps(m, mx);
  _mm256_storeu_ps(l, _mm256_fmadd_ps(_mm256_loadu_ps(l), alpha, sum));
  return alpha;
}

// Output elements i0 .. i0 + DT - 1 of NV x 8 query lanes, accumulated in Ot ([D][mpad],
// from the first lane): Ot = Ot * alpha + sum over the chunk's kc positions of St[p][lane] *
// V[p][i] (V rows read in place, `vrows`); `first`: Ot is not yet written (taken as 0).
// NV x DT accumulators: 12 of the 16 registers at NV = 3, DT = 4.
template <int NV, int DT>
KV_AVX2 inline void flash8_values(const float* st, int64_t mpad, const float* const* vrows,
                                  int64_t kc, int64_t i0, const __m256* alpha, float* ot,
                                  bool first) {
  __m256 acc[NV][DT];
  for (int t = 0; t < NV; ++t)
    for (int o = 0; o < DT; ++o)
      acc[t][o] = first ? _mm256_setzero_ps()
                        : _mm256_mul_ps(_mm256_loadu_ps(ot + (i0 + o) * mpad + t * 8), alpha[t]);
  for (int64_t p = 0; p < kc; ++p) {
    __m256 w[NV];
    for (int t = 0; t < NV; ++t) w[t] = _mm256_loadu_ps(st + p * mpad + t * 8);
    const float* v = vrows[p] + i0;
    for (int o = 0; o < DT; ++o) {
      const __m256 b = _mm256_set1_ps(v[o]);
      for (int t = 0; t < NV; ++t) acc[t][o] = _mm256_fmadd_ps(b, w[t], acc[t][o]);
    }
  }
  for (int t = 0; t < NV; ++t)
    for (int o = 0; o < DT; ++o) _mm256_storeu_ps(ot + (i0 + o) * mpad + t * 8, acc[t][o]);
}

// Lane vectors mv .. mv + NV - 1 through one chunk's values pass, every output element.
template <int D, int NV>
KV_AVX2 inline void flash8_values_all(const float* st, int64_t mpad, const float* const* vrows,
                                      int64_t kc, const __m256* alpha, float* ot, bool first) {
  constexpr int DT = NV == 1 ? 8 : 4;
  for (int64_t i0 = 0; i0 < D; i0 += DT)
    flash8_values<NV, DT>(st, mpad, vrows, kc, i0, alpha, ot, first);
}

// The extend GEMM on AVX2 (see paged_attn_gemm.h for why and the math), one chunk of
// kChunk8 positions at a time with an online softmax (as flash attention does): the scores
// of a chunk (its K rows copied 8 at a time into a tile), each lane's running maximum and
// sum brought up to date, the values pass over the chunk's V rows into the accumulators
// Ot [D][mpad] (rescaled where a maximum moved), and at the end Ot / sum transposed into the
// lanes' output rows. Lane vectors go three at a time (the register budget). Why chunks:
// the first AVX2 version kept every position's scores (St [ctx_pad][mpad], 270 KiB at a
// context of 1,408 with 48 query heads) and ran its values pass over all of them once per
// 4 output elements, rereading St and V from L2/L3 16 times; it was level with SDPA at best
// on the agent step (bench/RESULTS.md). A chunk's St and V rows stay in L1.
template <int D>
KV_AVX2 void run_item_gemm8(const Args& a, const Task& task, std::vector<float>& buf) {
  const int64_t mpad = ((task.r1 - task.r0) * a.group + 7) / 8 * 8;  // as gemm_layout's
  // After the layout's scratch: Ot, then the lanes' running maxima and sums.
  const GemmLayout L = gemm_layout<8, D>(a, task, buf, kChunk8, D * mpad + 2 * mpad);
  const int64_t m = L.m, nv = L.nv, ctx = L.ctx;
  float *const st = L.st, *const ot = L.extra, *const mrun = ot + D * mpad;
  float *const lrun = mrun + mpad;
  std::fill(mrun, mrun + mpad, -INFINITY);
  std::fill(lrun, lrun + mpad, 0.0f);
  const std::vector<int32_t>& lens = *L.lens;
  const std::vector<const float*>& vrows = *L.vrows;
  const std::vector<float*>& orows = *L.orows;
  int32_t shortest = lens[0];  // lanes are in row order: lane 0 has the fewest positions
  for (int64_t c0 = 0; c0 < ctx; c0 += kChunk8) {
    const int64_t kc = std::min(kChunk8, ctx - c0);
    for (int64_t p0 = c0; p0 < c0 + kc; p0 += 8) {
      gemm_k_tile<8, D>(a, L, p0);
      for (int64_t o = 0; o < 8; ++o) {  // this chunk's V rows, the next chunk's K rows
        prefetch_row8<D>(a, L, a.v, p0 + o);
        prefetch_row8<D>(a, L, a.k, p0 + kChunk8 + o);
      }
      for (int64_t mv = 0, n; mv < nv; mv += n) {
        n = std::min<int64_t>(3, nv - mv);
        float* out = st + (p0 - c0) * mpad + mv * 8;
        if (n == 3) gemm8_scores_tile<D, 3>(L.qt + mv * 8, mpad, L.tile, out);
        else if (n == 2) gemm8_scores_tile<D, 2>(L.qt + mv * 8, mpad, L.tile, out);
        else gemm8_scores_tile<D, 1>(L.qt + mv * 8, mpad, L.tile, out);
      }
    }
    const bool masked = c0 + kc > shortest;
    const float* const* vr = vrows.data() + c0;
    for (int64_t mv = 0, n; mv < nv; mv += n) {
      n = std::min<int64_t>(3, nv - mv);
      __m256 alpha[3];
      for (int64_t t = 0; t < n; ++t) {
        const int64_t lane = (mv + t) * 8;
        alpha[t] = flash8_softmax(st + lane, mpad, kc, c0,
                                  _mm256_loadu_si256(
                                      reinterpret_cast<const __m256i*>(lens.data() + lane)),
                                  masked, mrun + lane, lrun + lane);
      }
      const float* sv = st + mv * 8;
      float* o = ot + mv * 8;
      if (n == 3) flash8_values_all<D, 3>(sv, mpad, vr, kc, alpha, o, c0 == 0);
      else if (n == 2) flash8_values_all<D, 2>(sv, mpad, vr, kc, alpha, o, c0 == 0);
      else flash8_values_all<D, 1>(sv, mpad, vr, kc, alpha, o, c0 == 0);
    }
  }
  alignas(32) float row[8];
  for (int64_t mv = 0; mv < nv; ++mv) {
    const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_loadu_ps(lrun + mv * 8));
    const int64_t lanes = std::min<int64_t>(8, m - mv * 8);
    for (int64_t i = 0; i < D; ++i) {
      _mm256_store_ps(row, _mm256_mul_ps(_mm256_loadu_ps(ot + i * mpad + mv * 8), inv));
      for (int64_t l = 0; l < lanes; ++l) orows[static_cast<size_t>(mv * 8 + l)][i] = row[l];
    }
  }
}

bool cpu_has_avx2_fma() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
