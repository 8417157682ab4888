// The decode task of csrc/paged_attn.cpp's AVX-512 row tiles over a whole sequence: every KV
// head of one sequence's query row, span by span of its context. Included by paged_attn.cpp
// inside its anonymous namespace, after the AVX-512 tiles (scores_tile, values_tile) it runs.
//
// Why (bench/RESULTS.md, "Decode attention a sequence at a time"): the tier holds a
// position's K (and V) rows of all KV heads side by side ([block, layer, K/V, position, KV
// head, head_dim]; SmolLM2: 3 heads of 64, 768 bytes a position), and a (sequence, KV head)
// task reads one head's 256 of every 768 bytes across the whole context (1.5 MB of K at
// 2,000 positions) before the next head's task reads the rest: the lines between arrive
// when the CPU's stream prefetch runs ahead of the first head, and are gone from L1 and L2
// by the time the next head reads them. Here one task takes the sequence's heads one after
// the other inside each span of 256 positions (192 KiB of SmolLM2's K, in L2 while the
// heads read it), so a span's lines come from memory once.
//
// Same bits as the per-head tasks: each head's scores are the same 16-position tiles (a
// span holds whole blocks, blocks whole tiles: block_size a multiple of 16, else
// `seq_takes` is false), its softmax the same row through the same copy, softmax_rows_shared,
// and its output sums the same multiply-adds in position order (kept in the output row
// between spans); tests/kernels/test_kernel_seq.py compares both bit for bit.

#pragma once

// Whether sequence tasks run this call's decode rows: the AVX-512 row tiles of head size 64
// or 128 (not where a decode row's heads fill the extend GEMM's lanes, `gemm_takes`), blocks
// of whole 16-position tiles, and enough sequences that the threads still share them evenly
// (a task per sequence instead of one per KV head): one thread, or at least kSeqsPerThread
// decoding sequences a thread.
constexpr int64_t kSeqsPerThread = 4;

inline bool seq_takes(const Args& a, int64_t decoding, int64_t threads) {
  return a.avx512 && (a.head_dim == 64 || a.head_dim == 128) && a.block_size % 16 == 0 &&
         a.num_kv_heads > 1 && !(a.gemm && a.group >= kGemmLanes) &&
         (threads <= 1 || decoding >= kSeqsPerThread * threads);
}

// Positions a span takes: every head reads the span's K (or V) rows in turn, the span's
// 192 KiB (SmolLM2's 768 bytes a position) staying in L2 until the last head has read it.
// One block at a time (24 KiB, in L1) cost more in calls than it saved (a 16-sequence decode
// of 131-913 positions 1.07x the per-head tasks' CPU); 1,024 positions read as 256 did.
constexpr int64_t kSpanPositions = 256;

// GT heads' scores or values over a span's n positions (the walk at its first block).
template <int C, bool Scores>
KV_AVX512 void seq_tile(int64_t gt, const float* q, float* sc, int64_t stride, RowWalk w,
                        int64_t n, float* out, int64_t o_head, bool more) {
#define KV_SEQ_TILE(GT)                                                           \
  case GT:                                                                        \
    if constexpr (GT * C <= 16) {                                                 \
      if constexpr (Scores) return scores_tile<C, GT>(q, w, n, sc, stride);       \
      else return values_tile<C, GT>(sc, w, n, out, o_head, stride, more);        \
    }                                                                             \
    break;
  switch (gt) {
    KV_SEQ_TILE(1)
    KV_SEQ_TILE(2)
    KV_SEQ_TILE(3)
    KV_SEQ_TILE(4)
  }
#undef KV_SEQ_TILE
}

// Query rows task.r0 .. task.r1 - 1 of sequence task.s, every KV head (task.h < 0).
template <int C>
KV_AVX512 void run_seq_avx512(const Args& a, const Task& task, std::vector<float>& buf) {
  const int64_t s = task.s, d = C * 16, g = a.group, heads = a.num_kv_heads * g;
  const int64_t seq_len = a.seq_lens[s], q0 = a.q_start[s], q_len = a.q_start[s + 1] - q0;
  const int64_t bs = a.block_size, most = std::min<int64_t>(4, 16 / C);
  const int64_t span = std::max<int64_t>(1, kSpanPositions / bs);  // blocks a span takes
  const int32_t* table = a.tables + s * a.table_stride;
  buf.resize(static_cast<size_t>(heads * seq_len + heads * d));
  float* sc_all = buf.data();  // [heads, ctx] scores, then probabilities
  float* qloc = sc_all + heads * seq_len;  // [heads, d] the scaled query row
  for (int64_t r = task.r0; r < task.r1; ++r) {
    const float* qrow = a.q + (q0 + r) * a.q_tok;
    for (int64_t j = 0; j < heads; ++j)
      for (int64_t i = 0; i < d; ++i) qloc[j * d + i] = qrow[j * a.q_head + i] * a.scale;
    const int64_t ctx = seq_len - q_len + r + 1, blocks = (ctx + bs - 1) / bs;
    float* orow = a.out + (q0 + r) * a.o_tok;
    for (int pass = 0; pass < 2; ++pass) {
      const bool scores = pass == 0;
      for (int64_t b = 0; b < blocks; b += span) {
        const int64_t n = std::min(span * bs, ctx - b * bs);
        for (int64_t h = 0; h < a.num_kv_heads; ++h)
          for (int64_t j0 = 0; j0 < g; j0 += most) {
            // the walk from block b; the first tile of a head asks for the next block's rows
            RowWalk w{scores ? a.k : a.v, table, a.c_block, a.c_tok, h * a.c_head, bs, d,
                      blocks, r == task.r0 && j0 == 0};
            w.block = b;
            const int64_t j = h * g + j0, gt = std::min(most, g - j0);
            if (scores)
              seq_tile<C, true>(gt, qloc + j * d, sc_all + j * ctx + b * bs, ctx, w, n,
                                nullptr, 0, false);
            else
              seq_tile<C, false>(gt, nullptr, sc_all + j * ctx + b * bs, ctx, w, n,
                                 orow + j * a.o_head, a.o_head, b > 0);
          }
      }
      if (scores) softmax_rows_shared(sc_all, heads, ctx);
    }
  }
}
