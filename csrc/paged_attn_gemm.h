// Part of csrc/paged_attn.cpp (kvsaga._paged_attn), included there inside its anonymous
// namespace after the AVX-512 row tiles, on x86-64 GCC/clang only: it uses that file's
// Args, Task, KV_AVX512 and the scalar exp_nonpos it mirrors, and is not a unit of its own.
//
// What: the CPU extend attention as two small GEMMs (run_item_gemm), the path `auto` takes
// for a task of kGemmLanes or more query heads (rows x group) with head size 64 or 128.
// Why a path of its own: an agent step prefills a few hundred new tokens over a cached
// prefix of a thousand or more, and the row tiles read the whole context once per query
// row; docs/engine_profiles.md, "The agent step's extend attention", has the profile that
// found it and the measured gain. Kept apart from the row kernels so that paged_attn.cpp
// holds the decode/prefill row paths and this file the extend GEMM.

#pragma once

// The extend path (AVX-512, head sizes 64 and 128): a task whose rows hold at least
// kGemmLanes query heads (rows x group) runs as two small GEMMs instead of one query row at
// a time. Why: the row loop (run_item_avx512) streams every K and V row of the context once per query
// row and reduces each score across its 16 lanes (`sum16`); an agent step's prefill of a
// few hundred new tokens over a cached prefix of a thousand or more spent a third of its
// time there (`python bench/extend_step.py --profile 25`). Here the task's M = rows x group
// query heads lie across vector lanes (Qt: [head_dim][M], scaled), so
//   scores St[p][m] = sum_i Qt[i][m] * K[p][i]   (16 positions' K rows copied to a tile,
//                                                each element broadcast: no reductions),
//   a softmax down each lane (causal: lane m sees positions < its row's context),
//   out[m][i] = sum_p St[p][m] * V[p][i] / sum_p St[p][m]  (V read in place, broadcast),
// each K and V element read once per 16 query heads instead of once per query row.
constexpr int64_t kGemmLanes = 8;
// The longest context (positions up to the task's last query row) that `auto` runs on this
// file's AVX-512 GEMM (the AVX2 one keeps one chunk of scores and has no cap); a
// longer task takes the AVX2 GEMM (run_one; session 20: a 256-token extend over 6,144
// positions took 195-234 ms a layer on the row tiles, 49.5 on it, SDPA 37.8: `python
// bench/cpu_attention.py`, "long extend", one thread, AVX-512 host). Why a cap: St
// holds the scores of every position for all of a task's query heads at once, ctx_pad x mpad
// floats per thread with mpad up to kRowsPerTask (16) rows x group, so without one it grows
// with the context (128k positions with a group of 8: 64 MiB per thread). At 4,096 positions
// St is at most 256 KiB x group per thread: 768 KiB for SmolLM2's group of 3, 2 MiB for a
// group of 8, within a few MB as the softmax and values passes reread it. The GEMM's gain was
// measured at contexts of 1,041-1,408 (bench/cpu_attention.py's agent step), inside the cap;
// longer contexts were not measured on this path.
constexpr int64_t kGemmMaxContext = 4096;

// Whether `auto` runs a task on an extend GEMM: enough query heads to fill the lanes and,
// for this file's AVX-512 GEMM (`capped`), a context within kGemmMaxContext (the AVX2 one
// keeps one chunk of scores at a time and has no cap).
inline bool gemm_takes(const Args& a, const Task& task, bool capped) {
  const int64_t q_len = a.q_start[task.s + 1] - a.q_start[task.s];
  return (task.r1 - task.r0) * a.group >= kGemmLanes &&
         (!capped || a.seq_lens[task.s] - q_len + task.r1 <= kGemmMaxContext);
}

// exp_nonpos on 16 lanes (the same polynomial; x already clamped to [-87, 0]).
KV_AVX512 inline __m512 exp_nonpos16(__m512 x) {
  const __m512i ni = _mm512_cvttps_epi32(
      _mm512_sub_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _mm512_set1_ps(0.5f)));
  const __m512 n = _mm512_cvtepi32_ps(ni);
  __m512 r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f)));
  r = _mm512_add_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(2.12194440e-4f)));
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 e = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r),
                                 _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(ni, _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(e, _mm512_castsi512_ps(bits));
}

// The two passes' register tiles: NV x N accumulators cleared, and a row's NV lane
// vectors (16 query heads each, consecutive in Qt or St) loaded.
template <int NV, int N>
KV_AVX512 inline void zero_tile(__m512 (&acc)[NV][N]) {
  for (int t = 0; t < NV; ++t)
    for (int o = 0; o < N; ++o) acc[t][o] = _mm512_setzero_ps();
}

template <int NV>
KV_AVX512 inline void load_lanes(const float* row, __m512 (&v)[NV]) {
  for (int t = 0; t < NV; ++t) v[t] = _mm512_loadu_ps(row + t * 16);
}

// Scores of PT positions (their K rows contiguous in `tile`, row stride D) for NV x 16
// query lanes (Qt from lane 0 of the group, row stride mpad), into St rows (stride mpad).
// Each broadcast K element feeds NV lanes' vectors: with NV = 3 and PT = 8, 11 loads per
// 24 multiply-adds (a single vector of lanes took 17 per 16).
template <int D, int NV, int PT>
KV_AVX512 inline void gemm_scores(const float* qt, int64_t mpad, const float* tile, float* st) {
  __m512 acc[NV][PT];
  zero_tile(acc);
  for (int i = 0; i < D; ++i) {
    __m512 q[NV];
    load_lanes(qt + i * mpad, q);
    for (int o = 0; o < PT; ++o) {
      const __m512 k = _mm512_set1_ps(tile[o * D + i]);
      for (int t = 0; t < NV; ++t) acc[t][o] = _mm512_fmadd_ps(q[t], k, acc[t][o]);
    }
  }
  for (int t = 0; t < NV; ++t)
    for (int o = 0; o < PT; ++o) _mm512_storeu_ps(st + o * mpad + t * 16, acc[t][o]);
}

// A 16-position K tile's scores for lane vectors mv .. mv + NV - 1.
template <int D, int NV>
KV_AVX512 inline void gemm_scores_tile(const float* qt, int64_t mpad, const float* tile,
                                       float* st) {
  constexpr int PT = NV == 1 ? 16 : 8;  // NV x PT accumulators: 16 or 24 of 32 registers
  for (int o = 0; o < 16; o += PT) gemm_scores<D, NV, PT>(qt, mpad, tile + o * D, st + o * mpad);
}

// Softmax down 16 lanes of St (rows 0 .. ctx - 1, stride mpad), unnormalised: lane l keeps
// rows < lens[l] (the others become 0); returns 1 / each lane's sum.
KV_AVX512 inline __m512 gemm_softmax(float* st, int64_t mpad, int64_t ctx, __m512i lens) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t p = 0; p < ctx; ++p) {
    const __mmask16 in = _mm512_cmpgt_epi32_mask(lens, _mm512_set1_epi32(static_cast<int>(p)));
    mx = _mm512_mask_max_ps(mx, in, mx, _mm512_loadu_ps(st + p * mpad));
  }
  __m512 sum = _mm512_setzero_ps();
  const __m512 lo = _mm512_set1_ps(-87.0f);
  for (int64_t p = 0; p < ctx; ++p) {
    const __mmask16 in = _mm512_cmpgt_epi32_mask(lens, _mm512_set1_epi32(static_cast<int>(p)));
    const __m512 x = _mm512_max_ps(_mm512_sub_ps(_mm512_loadu_ps(st + p * mpad), mx), lo);
    const __m512 e = _mm512_maskz_mov_ps(in, exp_nonpos16(x));
    _mm512_storeu_ps(st + p * mpad, e);
    sum = _mm512_add_ps(sum, e);
  }
  return _mm512_div_ps(_mm512_set1_ps(1.0f), sum);
}

// Output elements i0 .. i0 + DT - 1 of NV x 16 query lanes: the sum over positions of
// St[p][lane] * V[p][i], V rows read in place (`vrows`), scaled by each lane's 1 / sum
// (`inv`), then written to the lanes' output rows (`orows`, stride o_head per head).
template <int NV, int DT>
KV_AVX512 inline void gemm_values(const float* st, int64_t mpad, const float* const* vrows,
                                  int64_t ctx, int64_t i0, const __m512* inv, float* otile,
                                  float* const* orows, int64_t lanes) {
  __m512 acc[NV][DT];
  zero_tile(acc);
  for (int64_t p = 0; p < ctx; ++p) {
    __m512 w[NV];
    load_lanes(st + p * mpad, w);
    const float* v = vrows[p] + i0;
    for (int o = 0; o < DT; ++o) {
      const __m512 b = _mm512_set1_ps(v[o]);
      for (int t = 0; t < NV; ++t) acc[t][o] = _mm512_fmadd_ps(b, w[t], acc[t][o]);
    }
  }
  for (int t = 0; t < NV; ++t) {
    for (int o = 0; o < DT; ++o) _mm512_storeu_ps(otile + o * 16, _mm512_mul_ps(acc[t][o], inv[t]));
    for (int64_t l = 0; l < 16 && t * 16 + l < lanes; ++l)
      for (int o = 0; o < DT; ++o) orows[t * 16 + l][i0 + o] = otile[o * 16 + l];
  }
}

// Lane vectors mv .. mv + NV - 1 through the values pass, DT output elements at a time.
template <int D, int NV>
KV_AVX512 inline void gemm_values_group(const float* st, int64_t mpad, const float* const* vrows,
                                        int64_t ctx, const __m512* inv, float* otile,
                                        float* const* orows, int64_t lanes) {
  constexpr int DT = NV == 1 ? 16 : 8;
  for (int64_t i0 = 0; i0 < D; i0 += DT)
    gemm_values<NV, DT>(st, mpad, vrows, ctx, i0, inv, otile, orows, lanes);
}

// What both extend GEMMs (this file's, 16 lanes; paged_attn_avx2.h's, 8) lay out before
// their vector passes, for W lanes and head size D: the scratch in `buf` (Qt [D][mpad], St
// [ctx_pad][mpad], a K tile [W][D], an output tile [W][W]), Qt filled (queries scaled;
// padding lanes zero: a finite softmax, never written out), and each lane's context length
// and output row. Scalar code, one copy for both ISAs.
struct GemmLayout {
  int64_t h, m, nv, mpad, ctx, ctx_pad;
  float *qt, *st, *tile, *otile, *extra;
  const int32_t* table;
  std::vector<int32_t>* lens;        // each lane's context length
  std::vector<const float*>* vrows;  // each position's V row (set by gemm_k_tile)
  std::vector<float*>* orows;        // each lane's output row
};

// `st_rows`: St's rows (0: ctx_pad, every position's scores at once; the AVX2 GEMM keeps
// one chunk of positions); `extra`: floats after the output tile, at L.extra.
template <int64_t W, int64_t D>
inline GemmLayout gemm_layout(const Args& a, const Task& task, std::vector<float>& buf,
                              int64_t st_rows = 0, int64_t extra = 0) {
  thread_local std::vector<int32_t> lens;
  thread_local std::vector<const float*> vrows;
  thread_local std::vector<float*> orows;
  GemmLayout L;
  const int64_t s = task.s, g = a.group;
  const int64_t q0 = a.q_start[s], q_len = a.q_start[s + 1] - q0;
  const int64_t first = a.seq_lens[s] - q_len;  // position of the sequence's query row 0
  L.h = task.h;
  L.m = (task.r1 - task.r0) * g;
  L.nv = (L.m + W - 1) / W;
  L.mpad = L.nv * W;
  L.ctx = first + task.r1;
  L.ctx_pad = (L.ctx + W - 1) / W * W;
  const int64_t rows = st_rows > 0 ? st_rows : L.ctx_pad;
  buf.resize(static_cast<size_t>(D * L.mpad + rows * L.mpad + W * D + W * W + extra));
  L.qt = buf.data();
  L.st = L.qt + D * L.mpad;
  L.tile = L.st + rows * L.mpad;
  L.otile = L.tile + W * D;
  L.extra = L.otile + W * W;
  L.table = a.tables + s * a.table_stride;
  lens.resize(static_cast<size_t>(L.mpad));
  vrows.resize(static_cast<size_t>(L.ctx));
  orows.resize(static_cast<size_t>(L.mpad));
  for (int64_t l = 0; l < L.mpad; ++l) {
    const int64_t r = task.r0 + l / g, j = l % g;
    lens[static_cast<size_t>(l)] = static_cast<int32_t>(l < L.m ? first + r + 1 : L.ctx);
    if (l >= L.m) {
      for (int64_t i = 0; i < D; ++i) L.qt[i * L.mpad + l] = 0.0f;
      continue;
    }
    const float* qrow = a.q + (q0 + r) * a.q_tok + (L.h * g + j) * a.q_head;
    for (int64_t i = 0; i < D; ++i) L.qt[i * L.mpad + l] = qrow[i] * a.scale;
    orows[static_cast<size_t>(l)] = a.out + (q0 + r) * a.o_tok + (L.h * g + j) * a.o_head;
  }
  L.lens = &lens;
  L.vrows = &vrows;
  L.orows = &orows;
  return L;
}

// Positions p0 .. p0 + W - 1's K rows copied into the tile (rows past the context zero:
// their scores are masked), their V rows noted for the values pass (read in place).
template <int64_t W, int64_t D>
inline void gemm_k_tile(const Args& a, const GemmLayout& L, int64_t p0) {
  for (int64_t o = 0; o < W; ++o) {
    const int64_t p = p0 + o;
    if (p >= L.ctx) {
      std::fill(L.tile + o * D, L.tile + (o + 1) * D, 0.0f);
      continue;
    }
    const int64_t at = static_cast<int64_t>(L.table[p / a.block_size]) * a.c_block +
                       p % a.block_size * a.c_tok + L.h * a.c_head;
    std::memcpy(L.tile + o * D, a.k + at, D * sizeof(float));
    (*L.vrows)[static_cast<size_t>(p)] = a.v + at;
  }
}

template <int C>
KV_AVX512 void run_item_gemm(const Args& a, const Task& task, std::vector<float>& buf) {
  constexpr int64_t D = C * 16;
  const GemmLayout L = gemm_layout<16, D>(a, task, buf);
  const int64_t m = L.m, nv = L.nv, mpad = L.mpad, ctx = L.ctx;
  float *const qt = L.qt, *const st = L.st, *const tile = L.tile, *const otile = L.otile;
  const std::vector<int32_t>& lens = *L.lens;
  const std::vector<const float*>& vrows = *L.vrows;
  const std::vector<float*>& orows = *L.orows;
  for (int64_t p0 = 0; p0 < L.ctx_pad; p0 += 16) {
    gemm_k_tile<16, D>(a, L, p0);
    // Lane vectors in groups of up to 3 (the register budget).
    for (int64_t mv = 0, n; mv < nv; mv += n) {
      n = std::min<int64_t>(3, nv - mv);
      float* out = st + p0 * mpad + mv * 16;
      if (n == 3) gemm_scores_tile<D, 3>(qt + mv * 16, mpad, tile, out);
      else if (n == 2) gemm_scores_tile<D, 2>(qt + mv * 16, mpad, tile, out);
      else gemm_scores_tile<D, 1>(qt + mv * 16, mpad, tile, out);
    }
  }
  for (int64_t mv = 0, n; mv < nv; mv += n) {
    n = std::min<int64_t>(3, nv - mv);
    __m512 inv[3];
    for (int64_t t = 0; t < n; ++t)
      inv[t] = gemm_softmax(st + (mv + t) * 16, mpad, ctx,
                            _mm512_loadu_si512(lens.data() + (mv + t) * 16));
    const float* sv = st + mv * 16;
    float* const* ov = orows.data() + mv * 16;
    const int64_t lanes = m - mv * 16;
    if (n == 3) gemm_values_group<D, 3>(sv, mpad, vrows.data(), ctx, inv, otile, ov, lanes);
    else if (n == 2) gemm_values_group<D, 2>(sv, mpad, vrows.data(), ctx, inv, otile, ov, lanes);
    else gemm_values_group<D, 1>(sv, mpad, vrows.data(), ctx, inv, otile, ov, lanes);
  }
}
