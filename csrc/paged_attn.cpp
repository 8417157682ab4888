// kvsaga._paged_attn: paged attention for CPU that reads the KV cache in place.
//
// Why (docs/engine_profiles.md): the torch path gathers each
// sequence's K/V through its block table (`index_select`) in every layer at every step,
// copying the whole context per decoded token; in a 16-sequence decode step of SmolLM2
// that copy and one SDPA call per sequence were ~70% of the step. Here each (sequence,
// KV head) pair walks its block table and reads K/V rows where they lie, computing the
// scores of the `group` query heads that share the KV head together, so each K/V row is
// read once per step; a decoding sequence's KV heads go in one task where the AVX-512 row
// tiles run it (paged_attn_seq.h), so that the heads read a span of positions in turn.
//
// fp32 only (the CPU engine's dtype); the Python side (kvsaga/kernels/inplace.py) checks
// every argument and passes raw pointers plus strides in elements. Causal: query row j of
// a sequence sits at position seq_len - q_len + j and attends to positions 0..itself.
// The GIL is released; work items are split over `num_threads` threads: torch's own OpenMP
// team where kvsaga/kernels/inplace.py hands over its runtime's GOMP_parallel (`team`), else the
// caller and workers of a pool started once per process (`kvattn::Pool`, csrc/worker_pool.h).

#include <nanobind/nanobind.h>

#include "prefetch.h"
#include "worker_pool.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace nb = nanobind;
using namespace nb::literals;

namespace {

struct Args {
  float* out;
  const float* q;
  const float* k;
  const float* v;
  const int32_t* tables;
  const int32_t* seq_lens;
  const int32_t* q_start;
  const int32_t* seq_ids;  // the sequences to run; null: sequences 0 .. num_seqs - 1
  int64_t num_seqs;
  int64_t num_kv_heads, group, head_dim, block_size, table_stride;
  int64_t q_tok, q_head;                   // query strides
  int64_t o_tok, o_head;                   // out strides
  int64_t c_block, c_tok, c_head;          // k/v cache strides (shared layout)
  float scale;
  bool avx512;  // run the AVX-512 tiles (run_item_avx512) where the head size has them
  bool avx2;    // without AVX-512: the AVX2 + FMA twins of both (paged_attn_avx2.h)
  bool gemm;    // and the extend path (run_item_gemm, paged_attn_gemm.h) where gemm_takes
};

inline int64_t seq_of(const Args& a, int64_t i) {
  return a.seq_ids != nullptr ? a.seq_ids[i] : i;
}

// A unit of work: query rows r0 .. r1 - 1 of sequence s, the query heads of KV head h
// (h < 0: of every KV head, run_seq_avx512 in paged_attn_seq.h).
struct Task {
  int64_t s, h, r0, r1;
};

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define KV_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KV_CLONES
#endif

#include "paged_attn_math.h"  // dot, row_sum, row_max, axpy, exp_nonpos

// Walks one (sequence, KV head)'s rows of a cache position by position through its block
// table (no division per position; a table entry is read only once the walk reaches the
// block before it, and only entries of the `blocks` the walk covers are read). A `cold` walk
// asks the CPU to prefetch each row of the next block as it reads the same row of this one:
// blocks lie anywhere in the tier, so the hardware's stream prefetch stops at each block's
// end, and a decode step reads every layer's K/V from memory (the tier is far larger than
// the caches): one block ahead keeps that read going. The later rows of a prefill task find
// the rows in cache, where the prefetches only cost instructions (10% of a prefill call).
struct RowWalk {
  const float* cache;
  const int32_t* table;
  int64_t c_block, c_tok, head_off, bs, row_len, blocks;
  bool cold;
  int64_t block = 0, off = 0;
  const float* base = nullptr;
  const float* ahead = nullptr;  // the next block's rows for this head; null at the last

  const float* next() {
    if (off == 0) {
      base = cache + static_cast<int64_t>(table[block]) * c_block + head_off;
      ahead = cold && block + 1 < blocks
                  ? cache + static_cast<int64_t>(table[block + 1]) * c_block + head_off
                  : nullptr;
    }
    const float* row = base + off * c_tok;
    if (ahead != nullptr)
      for (int64_t i = 0; i < row_len; i += 16) KV_PREFETCH(ahead + off * c_tok + i);
    if (++off == bs) {
      off = 0;
      ++block;
    }
    return row;
  }
};

// What one task needs: where its rows are and its scratch buffers.
struct Item {
  int64_t h, seq_len, q0, q_len, r0, r1;
  const int32_t* table;
  float* sc_all;  // [group, seq_len] scores, then probabilities
  float* qloc;    // [group, head_dim] the scaled query row
  float* acc;     // [group, head_dim] output accumulators (generic path)

  // The walk over the first ctx positions; `cold`: the task's first over them (prefetch).
  RowWalk rows(const Args& a, const float* cache, int64_t ctx, bool cold) const {
    return RowWalk{cache, table, a.c_block, a.c_tok, h * a.c_head, a.block_size,
                   a.head_dim, (ctx + a.block_size - 1) / a.block_size, cold};
  }
};

Item make_item(const Args& a, const Task& task, std::vector<float>& buf) {
  const int64_t s = task.s;
  Item it{task.h, a.seq_lens[s], a.q_start[s], a.q_start[s + 1] - a.q_start[s], task.r0,
          task.r1, a.tables + s * a.table_stride, nullptr, nullptr, nullptr};
  const int64_t g = a.group, d = a.head_dim;
  buf.resize(static_cast<size_t>(g * it.seq_len + 2 * g * d));
  it.sc_all = buf.data();
  it.qloc = it.sc_all + g * it.seq_len;
  it.acc = it.qloc + g * d;
  return it;
}

// Query row r of the item, its `group` heads scaled into qloc; returns the positions the
// row attends to (causal: seq_len - q_len + r + 1).
inline int64_t load_query(const Args& a, const Item& it, int64_t r) {
  const float* qrow = a.q + (it.q0 + r) * a.q_tok + it.h * a.group * a.q_head;
  for (int64_t j = 0; j < a.group; ++j)
    for (int64_t i = 0; i < a.head_dim; ++i)
      it.qloc[j * a.head_dim + i] = qrow[j * a.q_head + i] * a.scale;
  return it.seq_len - it.q_len + r + 1;
}

// Scores of `rows` heads over ctx positions (row stride ctx) turned into probabilities.
// Inlined where a caller's ISA allows (the AVX2 tiles and the generic path's clones keep
// their vector copies); the AVX-512 paths call softmax_rows_shared below instead.
inline void softmax_rows(float* sc_all, int64_t rows, int64_t ctx) {
  for (int64_t j = 0; j < rows; ++j) {
    float* __restrict sc = sc_all + j * ctx;
    const float m = row_max(sc, ctx);
    for (int64_t p = 0; p < ctx; ++p) sc[p] = std::max(sc[p] - m, -87.0f);
    for (int64_t p = 0; p < ctx; ++p) sc[p] = exp_nonpos(sc[p]);
    const float inv = 1.0f / row_sum(sc, ctx);
    for (int64_t p = 0; p < ctx; ++p) sc[p] *= inv;
  }
}

// The one out-of-line (baseline ISA) copy that both AVX-512 decode paths, per head
// (run_item_avx512) and per sequence (paged_attn_seq.h), call, so they give the same bits:
// inlined into an AVX-512 caller the compiler contracted its multiply-adds there and not
// in the other.
#if defined(__GNUC__)
__attribute__((noinline))
#endif
void softmax_rows_shared(float* sc_all, int64_t rows, int64_t ctx) {
  softmax_rows(sc_all, rows, ctx);
}

// One (sequence, KV head), any head size, plain C++ the compiler vectorises: every query
// row of the sequence, its `group` heads together: pass 1 scores every position (each K
// row read once), then a softmax per head, then pass 2 accumulates V rows (each read once).
template <int D>
KV_CLONES void run_item(const Args& a, const Task& task, std::vector<float>& buf) {
  const Item it = make_item(a, task, buf);
  const int64_t g = a.group, d = D > 0 ? D : a.head_dim;
  float* __restrict sc_all = it.sc_all;
  float* __restrict acc = it.acc;
  for (int64_t r = it.r0; r < it.r1; ++r) {
    const int64_t ctx = load_query(a, it, r);
    RowWalk k = it.rows(a, a.k, ctx, r == it.r0);
    for (int64_t p = 0; p < ctx; ++p) {
      const float* krow = k.next();
      for (int64_t j = 0; j < g; ++j) sc_all[j * ctx + p] = dot<D>(it.qloc + j * d, krow, d);
    }
    softmax_rows(sc_all, g, ctx);
    std::fill(acc, acc + g * d, 0.0f);
    RowWalk v = it.rows(a, a.v, ctx, r == it.r0);
    for (int64_t p = 0; p < ctx; ++p) {
      const float* vrow = v.next();
      for (int64_t j = 0; j < g; ++j) axpy<D>(acc + j * d, sc_all[j * ctx + p], vrow, d);
    }
    float* orow = a.out + (it.q0 + r) * a.o_tok + it.h * g * a.o_head;
    for (int64_t j = 0; j < g; ++j) std::copy(acc + j * d, acc + (j + 1) * d, orow + j * a.o_head);
  }
}

#if defined(__GNUC__) && defined(__x86_64__)
#define KV_HAS_AVX512_PATH 1
#define KV_AVX512 __attribute__((target("avx512f")))

// The AVX-512 path for head sizes 64 and 128 (C = head_dim / 16 vectors per row). The
// generic loop above reduces each (position, head) dot product across its 16 lanes on its
// own, which costs more than its multiply-adds; here each 16 positions' partial vectors
// are reduced together (sum16), and pass 2 keeps a tile of heads' accumulators in
// registers. Heads go in tiles of GT (the query or accumulators of a tile stay in registers).

// Lane i of the result: the sum of the 16 lanes of v[i]. Two unpack levels gather four
// vectors' partial sums into each 128-bit lane, two shuffle levels add across the lanes.
KV_AVX512 inline __m512 sum16(const __m512* v) {
  __m512 b[4];
  for (int i = 0; i < 4; ++i) {
    const __m512 x = v[4 * i], y = v[4 * i + 1], z = v[4 * i + 2], w = v[4 * i + 3];
    // per 128-bit lane: [x, y, x, y] and [z, w, z, w] partials
    const __m512 xy = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
    const __m512 zw = _mm512_add_ps(_mm512_unpacklo_ps(z, w), _mm512_unpackhi_ps(z, w));
    // per 128-bit lane: [x, y, z, w]
    const __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(xy), _mm512_castps_pd(zw));
    const __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(xy), _mm512_castps_pd(zw));
    b[i] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
  }
  // Fold the four 128-bit lanes: b[i]'s total ends up in lane i.
  const __m512 c0 = _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(b[0], b[1], _MM_SHUFFLE(3, 1, 3, 1)));
  const __m512 c1 = _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(b[2], b[3], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(c0, c1, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(c0, c1, _MM_SHUFFLE(3, 1, 3, 1)));
}

// Pass 1 for GT heads (query rows q, stride C * 16): scores of ctx positions into sc (row
// stride `stride`, ctx by default), 16 positions at a time.
template <int C, int GT>
KV_AVX512 void scores_tile(const float* q, RowWalk k, int64_t ctx, float* sc,
                           int64_t stride = -1) {
  if (stride < 0) stride = ctx;
  __m512 qv[GT][C];
  for (int t = 0; t < GT; ++t)
    for (int c = 0; c < C; ++c) qv[t][c] = _mm512_loadu_ps(q + (t * C + c) * 16);
  alignas(64) __m512 part[GT][16];
  for (int64_t p0 = 0; p0 < ctx; p0 += 16) {
    const int n = static_cast<int>(std::min<int64_t>(16, ctx - p0));
    for (int o = 0; o < n; ++o) {
      const float* krow = k.next();
      __m512 kv[C];
      for (int c = 0; c < C; ++c) kv[c] = _mm512_loadu_ps(krow + c * 16);
      for (int t = 0; t < GT; ++t) {
        __m512 s = _mm512_mul_ps(qv[t][0], kv[0]);
        for (int c = 1; c < C; ++c) s = _mm512_fmadd_ps(qv[t][c], kv[c], s);
        part[t][o] = s;
      }
    }
    for (int t = 0; t < GT; ++t) {
      for (int o = n; o < 16; ++o) part[t][o] = _mm512_setzero_ps();
      _mm512_mask_storeu_ps(sc + t * stride + p0, static_cast<__mmask16>((1u << n) - 1),
                            sum16(part[t]));
    }
  }
}

// Pass 2 for GT heads: out rows (stride o_head) = probabilities (sc, row stride `stride`,
// ctx by default) @ V; `more`: out already holds the sums over earlier positions, continued.
template <int C, int GT>
KV_AVX512 void values_tile(const float* sc, RowWalk v, int64_t ctx, float* out, int64_t o_head,
                           int64_t stride = -1, bool more = false) {
  if (stride < 0) stride = ctx;
  __m512 acc[GT][C];
  for (int t = 0; t < GT; ++t)
    for (int c = 0; c < C; ++c)
      acc[t][c] = more ? _mm512_loadu_ps(out + t * o_head + c * 16) : _mm512_setzero_ps();
  for (int64_t p = 0; p < ctx; ++p) {
    const float* vrow = v.next();
    __m512 vv[C];
    for (int c = 0; c < C; ++c) vv[c] = _mm512_loadu_ps(vrow + c * 16);
    for (int t = 0; t < GT; ++t) {
      const __m512 w = _mm512_set1_ps(sc[t * stride + p]);
      for (int c = 0; c < C; ++c) acc[t][c] = _mm512_fmadd_ps(w, vv[c], acc[t][c]);
    }
  }
  for (int t = 0; t < GT; ++t)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + t * o_head + c * 16, acc[t][c]);
}

// Heads j0 .. j0 + gt of the group (gt <= 16 / C) through one pass, GT fixed at compile time.
template <int C, bool Scores>
KV_AVX512 void tile(const Args& a, const Item& it, int64_t j0, int64_t gt, int64_t ctx,
                    float* orow, bool cold) {
  const int64_t d = C * 16;
  const float* q = it.qloc + j0 * d;
  float* sc = it.sc_all + j0 * ctx;
  const float* cache = Scores ? a.k : a.v;
  float* out = orow + j0 * a.o_head;
#define KV_TILE(GT)                                                        \
  case GT:                                                                 \
    if constexpr (GT * C <= 16) {                                          \
      if constexpr (Scores) return scores_tile<C, GT>(q, it.rows(a, cache, ctx, cold), ctx, sc); \
      else return values_tile<C, GT>(sc, it.rows(a, cache, ctx, cold), ctx, out, a.o_head); \
    }                                                                      \
    break;
  switch (gt) {
    KV_TILE(1)
    KV_TILE(2)
    KV_TILE(3)
    KV_TILE(4)
  }
#undef KV_TILE
}

template <int C>
KV_AVX512 void run_item_avx512(const Args& a, const Task& task, std::vector<float>& buf) {
  const Item it = make_item(a, task, buf);
  const int64_t g = a.group, most = std::min<int64_t>(4, 16 / C);
  for (int64_t r = it.r0; r < it.r1; ++r) {
    const int64_t ctx = load_query(a, it, r);
    float* orow = a.out + (it.q0 + r) * a.o_tok + it.h * g * a.o_head;
    for (int64_t j0 = 0; j0 < g; j0 += most)
      tile<C, true>(a, it, j0, std::min(most, g - j0), ctx, orow, r == it.r0 && j0 == 0);
    softmax_rows_shared(it.sc_all, g, ctx);
    for (int64_t j0 = 0; j0 < g; j0 += most)
      tile<C, false>(a, it, j0, std::min(most, g - j0), ctx, orow, r == it.r0 && j0 == 0);
  }
}

#include "paged_attn_gemm.h"  // the extend path, run_item_gemm
#include "paged_attn_seq.h"   // decode tasks a sequence at a time, run_seq_avx512
#include "paged_attn_avx2.h"  // run_item_avx2 and run_item_gemm8 for AVX2-only CPUs

bool cpu_has_avx512() { return __builtin_cpu_supports("avx512f"); }
#else
bool cpu_has_avx512() { return false; }
bool cpu_has_avx2_fma() { return false; }
#endif

// Which tiles paged_attention runs for head sizes 64 and 128 on this CPU ("" : none).
const char* tile_isa() {
  return cpu_has_avx512() ? "avx512" : cpu_has_avx2_fma() ? "avx2" : "";
}

void run_one(const Args& a, const Task& item, std::vector<float>& buf) {
#ifdef KV_HAS_AVX512_PATH
  if (item.h < 0) return a.head_dim == 64 ? run_seq_avx512<4>(a, item, buf)
                                          : run_seq_avx512<8>(a, item, buf);
  if (a.gemm && gemm_takes(a, item, false)) {  // past the AVX-512 GEMM's cap: AVX2's
    const bool wide = a.avx512 && gemm_takes(a, item, true);
    if (wide && a.head_dim == 64) return run_item_gemm<4>(a, item, buf);
    if (wide && a.head_dim == 128) return run_item_gemm<8>(a, item, buf);
    if (a.head_dim == 64) return run_item_gemm8<64>(a, item, buf);
    if (a.head_dim == 128) return run_item_gemm8<128>(a, item, buf);
  }
  if (a.avx512 && a.head_dim == 64) return run_item_avx512<4>(a, item, buf);
  if (a.avx512 && a.head_dim == 128) return run_item_avx512<8>(a, item, buf);
  if (a.avx2 && a.head_dim == 64) return run_item_avx2<8>(a, item, buf);
  if (a.avx2 && a.head_dim == 128) return run_item_avx2<16>(a, item, buf);
#endif
  switch (a.head_dim) {
    case 64: return run_item<64>(a, item, buf);
    case 128: return run_item<128>(a, item, buf);
    default: return run_item<0>(a, item, buf);
  }
}

// Waking a parked worker costs microseconds, but a decode call over a few short contexts
// is worth about that: a call gets one thread per kWorkPerThread multiply-adds (QK and
// PV, every query row of every item) and runs inline below that.
constexpr int64_t kWorkPerThread = int64_t{1} << 20;
// Query rows per task: a prefill chunk's sequence splits into many tasks, so that two
// threads share a batch of one long and one short prompt evenly.
constexpr int64_t kRowsPerTask = 16;

// `path` of a call: every tiled path (AVX-512, else AVX2) where it applies, the row tiles
// only (no extend GEMM), or the generic loops only (the tests hold each to the reference).
// kPathAvx2 or'ed into auto or rows takes the AVX2 tiles even where AVX-512 is there, so
// the tests run them on any AVX2 host, not only on the AVX2-only CPUs that pick them.
constexpr int64_t kPathAuto = 0, kPathRows = 1, kPathGeneric = 2, kPathAvx2 = 4;

#ifndef KV_HAS_AVX512_PATH
inline bool seq_takes(const Args&, int64_t, int64_t) { return false; }
#endif

// How many of the last call's tasks were whole decoding sequences (`seq_takes`): the
// tests read it to see which tasks a call ran, since both kinds give the same bits.
std::atomic<int64_t> last_sequence_tasks{0};

// The tasks of a call, each sequence's row ranges for every KV head (a decoding sequence's
// row for all its heads at once where `seq_takes`), and its work in multiply-adds.
std::vector<Task> make_tasks(const Args& a, int64_t threads, int64_t& work) {
  std::vector<Task> tasks;
  work = 0;
  int64_t decoding = 0;
  for (int64_t i = 0; i < a.num_seqs; ++i) {
    const int64_t s = seq_of(a, i);
    decoding += a.q_start[s + 1] - a.q_start[s] == 1;
  }
  const bool whole = seq_takes(a, decoding, threads);
  for (int64_t i = 0; i < a.num_seqs; ++i) {
    const int64_t s = seq_of(a, i);
    const int64_t q_len = a.q_start[s + 1] - a.q_start[s];
    work += q_len * a.seq_lens[s];
    if (whole && q_len == 1) {
      tasks.push_back({s, -1, 0, 1});
      continue;
    }
    for (int64_t h = 0; h < a.num_kv_heads; ++h)
      for (int64_t r0 = 0; r0 < q_len; r0 += kRowsPerTask)
        tasks.push_back({s, h, r0, std::min(q_len, r0 + kRowsPerTask)});
  }
  work *= 2 * a.num_kv_heads * a.group * a.head_dim;
  return tasks;
}

// libgomp's entry for a parallel region: fn(data) on num_threads threads of the calling
// thread's team (what `#pragma omp parallel` compiles to).
using OmpParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);

int64_t paged_attention(uintptr_t out, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t tables,
                     uintptr_t seq_lens, uintptr_t q_start, uintptr_t seq_ids,
                     int64_t num_seqs, int64_t num_kv_heads, int64_t group, int64_t head_dim,
                     int64_t block_size, int64_t table_stride, int64_t q_tok, int64_t q_head,
                     int64_t o_tok, int64_t o_head, int64_t c_block, int64_t c_tok,
                     int64_t c_head, float scale, int64_t num_threads, int64_t path,
                     uintptr_t team) {
  const bool avx2_only = (path & kPathAvx2) != 0;
  if (avx2_only && !cpu_has_avx2_fma())
    throw std::invalid_argument("paged_attention: this CPU has no AVX2 + FMA tiles to force");
  path &= ~kPathAvx2;
  Args a{reinterpret_cast<float*>(out),
         reinterpret_cast<const float*>(q),
         reinterpret_cast<const float*>(k),
         reinterpret_cast<const float*>(v),
         reinterpret_cast<const int32_t*>(tables),
         reinterpret_cast<const int32_t*>(seq_lens),
         reinterpret_cast<const int32_t*>(q_start),
         reinterpret_cast<const int32_t*>(seq_ids),
         num_seqs,
         num_kv_heads, group, head_dim, block_size, table_stride,
         q_tok, q_head, o_tok, o_head, c_block, c_tok, c_head, scale,
         path != kPathGeneric && !avx2_only && cpu_has_avx512(),
         path != kPathGeneric && (avx2_only || !cpu_has_avx512()) && cpu_has_avx2_fma(),
         path == kPathAuto && tile_isa()[0] != '\0'};
  int64_t work = 0;
  const std::vector<Task> tasks = make_tasks(a, num_threads, work);
  last_sequence_tasks.store(std::count_if(tasks.begin(), tasks.end(),
                                          [](const Task& task) { return task.h < 0; }));
  const auto n = static_cast<int64_t>(tasks.size());
  const int64_t t = std::max<int64_t>(1, std::min({num_threads, n, 1 + work / kWorkPerThread}));
  // Tasks are taken one at a time from a shared counter: they differ in cost (context
  // length, causal rows), so a fixed deal would leave one thread idle at the end.
  std::atomic<int64_t> next{0};
  // A task that throws (std::bad_alloc from its buffer) must not leave a worker: on
  // libgomp's threads that would be std::terminate, and in the pool the caller could
  // return while the others still read `tasks`. The first error is kept, the counter run
  // to its end so every thread stops, and the error raised on the caller once all are back.
  std::mutex m;
  std::exception_ptr error;
  std::vector<std::thread::id> ran;  // the threads that ran a task (the tests read it)
  const std::function<void()> worker = [&a, &tasks, &next, n, &m, &error, &ran]() {
    bool took = false;
    try {
      std::vector<float> buf;
      for (int64_t i = next++; i < n; i = next++) {
        took = true;
        run_one(a, tasks[static_cast<size_t>(i)], buf);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(m);
      if (!error) error = std::current_exception();
      next = n;
    }
    if (!took) return;
    std::lock_guard<std::mutex> lock(m);
    if (std::find(ran.begin(), ran.end(), std::this_thread::get_id()) == ran.end())
      ran.push_back(std::this_thread::get_id());
  };
  if (t > 1 && team != 0) {
    // In torch's team: the threads that run its matmuls run the tasks, so no thread of
    // ours waits beside them for a core (docs/engine_profiles.md, "One team of threads").
    reinterpret_cast<OmpParallel>(team)(
        [](void* fn) { (*static_cast<const std::function<void()>*>(fn))(); },
        const_cast<std::function<void()>*>(&worker), static_cast<unsigned>(t), 0);
  } else {
    kvattn::Pool::get().run(t, worker);
  }
  if (error) std::rethrow_exception(error);
  return static_cast<int64_t>(ran.size());
}

// Copies each new token's K and V rows into its cache slot (slot = block * block_size +
// offset; -1 skips the token). Any dtype: sizes and strides are in bytes, and each (token,
// KV head) row is one memcpy of row_bytes. Every slot is checked before the first write, so
// a bad one changes nothing.
void cache_write(uintptr_t key, uintptr_t value, uintptr_t k_cache, uintptr_t v_cache,
                 uintptr_t slots, int64_t num_tokens, int64_t num_kv_heads, int64_t row_bytes,
                 int64_t k_tok, int64_t k_head, int64_t v_tok, int64_t v_head, int64_t c_block,
                 int64_t c_tok, int64_t c_head, int64_t block_size, int64_t num_blocks) {
  const auto* slot = reinterpret_cast<const int64_t*>(slots);
  for (int64_t i = 0; i < num_tokens; ++i)
    if (slot[i] < -1 || slot[i] >= num_blocks * block_size)
      throw std::invalid_argument("slot_mapping[" + std::to_string(i) + "] = " +
                                  std::to_string(slot[i]) + " is out of range: the cache has " +
                                  std::to_string(num_blocks * block_size) + " slots");
  const auto* kin = reinterpret_cast<const char*>(key);
  const auto* vin = reinterpret_cast<const char*>(value);
  auto* kc = reinterpret_cast<char*>(k_cache);
  auto* vc = reinterpret_cast<char*>(v_cache);
  for (int64_t i = 0; i < num_tokens; ++i) {
    if (slot[i] < 0) continue;
    const int64_t at = slot[i] / block_size * c_block + slot[i] % block_size * c_tok;
    for (int64_t h = 0; h < num_kv_heads; ++h) {
      std::memcpy(kc + at + h * c_head, kin + i * k_tok + h * k_head, row_bytes);
      std::memcpy(vc + at + h * c_head, vin + i * v_tok + h * v_head, row_bytes);
    }
  }
}

// Rotary embedding in place, "rotate half" layout: in each head row of x [T, heads,
// head_dim] (strides in elements, last dim contiguous), the pairs (i, i + half) turn by
// token t's angle i: (a, b) -> (a cos - b sin, b cos + a sin). cos and sin: [T, half],
// contiguous. The same products and sums as torch's apply_rope (kvsaga/engine/rope.py),
// each rounded on its own (no fused multiply-add), so the same bits.
#if defined(__GNUC__) && !defined(__clang__)
#define KV_NO_FMA __attribute__((optimize("fp-contract=off")))
#else
#define KV_NO_FMA
#endif
KV_CLONES KV_NO_FMA void rope(uintptr_t x, uintptr_t cos, uintptr_t sin, int64_t num_tokens,
                    int64_t heads, int64_t half, int64_t x_tok, int64_t x_head) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  auto* xs = reinterpret_cast<float*>(x);
  const auto* cs = reinterpret_cast<const float*>(cos);
  const auto* sn = reinterpret_cast<const float*>(sin);
  for (int64_t t = 0; t < num_tokens; ++t) {
    const float* __restrict c = cs + t * half;
    const float* __restrict s = sn + t * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* __restrict a = xs + t * x_tok + h * x_head;
      float* __restrict b = a + half;
      for (int64_t i = 0; i < half; ++i) {
        const float ai = a[i], bi = b[i];
        a[i] = ai * c[i] - bi * s[i];
        b[i] = bi * c[i] + ai * s[i];
      }
    }
  }
}

}  // namespace

NB_MODULE(_paged_attn, m) {
  m.doc() = "In-place paged attention for CPU (fp32); see kvsaga/kernels/inplace.py.";
  m.def("paged_attention", &paged_attention, "out"_a, "q"_a, "k"_a, "v"_a, "tables"_a,
        "seq_lens"_a, "q_start"_a, "seq_ids"_a, "num_seqs"_a, "num_kv_heads"_a, "group"_a,
        "head_dim"_a, "block_size"_a, "table_stride"_a, "q_tok"_a, "q_head"_a, "o_tok"_a,
        "o_head"_a, "c_block"_a, "c_tok"_a, "c_head"_a, "scale"_a, "num_threads"_a,
        "path"_a, "team"_a, nb::call_guard<nb::gil_scoped_release>());
  m.def("cache_write", &cache_write, "key"_a, "value"_a, "k_cache"_a, "v_cache"_a, "slots"_a,
        "num_tokens"_a, "num_kv_heads"_a, "row_bytes"_a, "k_tok"_a, "k_head"_a, "v_tok"_a,
        "v_head"_a, "c_block"_a, "c_tok"_a, "c_head"_a, "block_size"_a, "num_blocks"_a,
        nb::call_guard<nb::gil_scoped_release>());
  m.def("rope", &rope, "x"_a, "cos"_a, "sin"_a, "num_tokens"_a, "heads"_a, "half"_a,
        "x_tok"_a, "x_head"_a, nb::call_guard<nb::gil_scoped_release>());
  m.def("last_sequence_tasks", []() { return last_sequence_tasks.load(); },
        "How many tasks of the last paged_attention call ran a whole decoding sequence.");
  m.def("has_avx512", &cpu_has_avx512, "Whether paged_attention can take its AVX-512 path.");
  m.def("tile_isa", &tile_isa, "The tiles paged_attention runs here: avx512, avx2 or ''.");
#ifdef KV_HAS_AVX512_PATH
  m.attr("gemm_max_context") = kGemmMaxContext;  // the extend GEMM's cap (paged_attn_gemm.h)
#endif
}
