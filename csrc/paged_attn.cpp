// kvsaga._paged_attn: paged attention for CPU that reads the KV cache in place.
//
// Why (docs/architecture.md, "Where a CPU step's time goes"): the torch path gathers each
// sequence's K/V through its block table (`index_select`) in every layer at every step,
// copying the whole context per decoded token; in a 16-sequence decode step of SmolLM2
// that copy and one SDPA call per sequence were ~70% of the step. Here each (sequence,
// KV head) pair walks its block table and reads K/V rows where they lie, computing the
// scores of the `group` query heads that share the KV head together, so each K/V row is
// read once per step.
//
// fp32 only (the CPU engine's dtype); the Python side (kvsaga/kernels/inplace.py) checks
// every argument and passes raw pointers plus strides in elements. Causal: query row j of
// a sequence sits at position seq_len - q_len + j and attends to positions 0..itself.
// The GIL is released; work items are split over `num_threads` std::threads.

#include <nanobind/nanobind.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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
  const int32_t* seq_ids;  // the sequences to run
  int64_t num_items;       // len(seq_ids) * num_kv_heads
  int64_t num_kv_heads, group, head_dim, block_size, table_stride;
  int64_t q_tok, q_head;                   // query strides
  int64_t o_tok, o_head;                   // out strides
  int64_t c_block, c_tok, c_head;          // k/v cache strides (shared layout)
  float scale;
};

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define KV_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KV_CLONES
#endif

// Dot product with 16 partial sums (so the compiler vectorises without reassociating
// floats), summed as a tree. D > 0: the head size known at compile time (unrolled).
template <int D>
inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  if constexpr (D > 0) n = D;
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j] * b[i + j];
  for (int w = 8; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  float s = acc[0];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Sum and maximum of a score row, 16 partials each, for the same reason as `dot`.
inline float row_sum(const float* __restrict a, int64_t n) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += a[i + j];
  for (int w = 8; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  float s = acc[0];
  for (; i < n; ++i) s += a[i];
  return s;
}

inline float row_max(const float* __restrict a, int64_t n) {
  float acc[16];
  std::fill(acc, acc + 16, -INFINITY);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] = acc[j] > a[i + j] ? acc[j] : a[i + j];
  for (int w = 8; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] = acc[j] > acc[j + w] ? acc[j] : acc[j + w];
  float m = acc[0];
  for (; i < n; ++i) m = m > a[i] ? m : a[i];
  return m;
}

template <int D>
inline void axpy(float* __restrict y, float w, const float* __restrict x, int64_t n) {
  if constexpr (D > 0) n = D;
  for (int64_t i = 0; i < n; ++i) y[i] += w * x[i];
}

// exp(x) for x in [-87, 0] (a score minus its row's maximum), written so that the compiler
// vectorises the softmax loop (std::exp is a scalar libm call per score). Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two
// for an exact r), exp(r) by a degree-7 polynomial, 2^n put in the exponent bits; relative
// error about 2e-7, i.e. fp32 rounding.
// The caller clamps x to [-87, 0] in a loop of its own (exp(-87) ~ 1.6e-38, fp32's normal
// range ends there): a float clamp in this loop would keep the compiler from vectorising it.
inline float exp_nonpos(float x) {
  const float n = static_cast<float>(static_cast<int32_t>(x * 1.44269504f - 0.5f));
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return e * scale;
}

// One (sequence, KV head): every query row of the sequence, its `group` heads together:
// pass 1 scores every position (each K row read once), then a softmax per head, then
// pass 2 accumulates V rows (each read once) into the group's outputs.
template <int D>
KV_CLONES void run_item(const Args& a, int64_t item, std::vector<float>& buf) {
  const int64_t s = a.seq_ids[item / a.num_kv_heads];
  const int64_t h = item % a.num_kv_heads;
  const int64_t seq_len = a.seq_lens[s];
  const int64_t q0 = a.q_start[s], q_len = a.q_start[s + 1] - q0;
  const int32_t* table = a.tables + s * a.table_stride;
  const int64_t g = a.group, d = D > 0 ? D : a.head_dim, bs = a.block_size;
  buf.resize(static_cast<size_t>(g * seq_len + 2 * g * d));
  float* __restrict sc_all = buf.data();
  float* __restrict qloc = sc_all + g * seq_len;
  float* __restrict acc = qloc + g * d;
  for (int64_t r = 0; r < q_len; ++r) {
    const int64_t ctx = seq_len - q_len + r + 1;  // positions this row attends to
    const float* qrow = a.q + (q0 + r) * a.q_tok + h * g * a.q_head;
    for (int64_t j = 0; j < g; ++j)
      for (int64_t i = 0; i < d; ++i) qloc[j * d + i] = qrow[j * a.q_head + i] * a.scale;
    // Block by block (no division per position): p0 is the block's first position.
    for (int64_t p0 = 0; p0 < ctx; p0 += bs) {
      const float* kblk = a.k + table[p0 / bs] * a.c_block + h * a.c_head;
      const int64_t n = std::min(bs, ctx - p0);
      for (int64_t o = 0; o < n; ++o)
        for (int64_t j = 0; j < g; ++j)
          sc_all[j * ctx + p0 + o] = dot<D>(qloc + j * d, kblk + o * a.c_tok, d);
    }
    for (int64_t j = 0; j < g; ++j) {
      float* __restrict sc = sc_all + j * ctx;
      const float m = row_max(sc, ctx);
      for (int64_t p = 0; p < ctx; ++p) sc[p] = std::max(sc[p] - m, -87.0f);
      for (int64_t p = 0; p < ctx; ++p) sc[p] = exp_nonpos(sc[p]);
      const float inv = 1.0f / row_sum(sc, ctx);
      for (int64_t p = 0; p < ctx; ++p) sc[p] *= inv;
    }
    std::fill(acc, acc + g * d, 0.0f);
    for (int64_t p0 = 0; p0 < ctx; p0 += bs) {
      const float* vblk = a.v + table[p0 / bs] * a.c_block + h * a.c_head;
      const int64_t n = std::min(bs, ctx - p0);
      for (int64_t o = 0; o < n; ++o)
        for (int64_t j = 0; j < g; ++j)
          axpy<D>(acc + j * d, sc_all[j * ctx + p0 + o], vblk + o * a.c_tok, d);
    }
    float* orow = a.out + (q0 + r) * a.o_tok + h * g * a.o_head;
    for (int64_t j = 0; j < g; ++j) std::copy(acc + j * d, acc + (j + 1) * d, orow + j * a.o_head);
  }
}

void run_one(const Args& a, int64_t item, std::vector<float>& buf) {
  switch (a.head_dim) {
    case 64: return run_item<64>(a, item, buf);
    case 128: return run_item<128>(a, item, buf);
    default: return run_item<0>(a, item, buf);
  }
}

// Starting a std::thread costs tens of microseconds, about what one sequence's decode
// attention over a few hundred positions costs: a call gets one thread per kWorkPerThread
// multiply-adds (QK and PV, every query row of every item) and runs inline below that.
constexpr int64_t kWorkPerThread = int64_t{1} << 20;

int64_t work_threads(const Args& a) {
  int64_t work = 0;
  for (int64_t i = 0; i < a.num_items; i += a.num_kv_heads) {
    const int64_t s = a.seq_ids[i / a.num_kv_heads];
    const int64_t q_len = a.q_start[s + 1] - a.q_start[s];
    work += q_len * a.seq_lens[s];
  }
  work *= 2 * a.num_kv_heads * a.group * a.head_dim;
  return 1 + work / kWorkPerThread;
}

void paged_attention(uintptr_t out, uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t tables,
                     uintptr_t seq_lens, uintptr_t q_start, uintptr_t seq_ids,
                     int64_t num_seqs, int64_t num_kv_heads, int64_t group, int64_t head_dim,
                     int64_t block_size, int64_t table_stride, int64_t q_tok, int64_t q_head,
                     int64_t o_tok, int64_t o_head, int64_t c_block, int64_t c_tok,
                     int64_t c_head, float scale, int64_t num_threads) {
  Args a{reinterpret_cast<float*>(out),
         reinterpret_cast<const float*>(q),
         reinterpret_cast<const float*>(k),
         reinterpret_cast<const float*>(v),
         reinterpret_cast<const int32_t*>(tables),
         reinterpret_cast<const int32_t*>(seq_lens),
         reinterpret_cast<const int32_t*>(q_start),
         reinterpret_cast<const int32_t*>(seq_ids),
         num_seqs * num_kv_heads,
         num_kv_heads, group, head_dim, block_size, table_stride,
         q_tok, q_head, o_tok, o_head, c_block, c_tok, c_head, scale};
  const int64_t n = a.num_items;
  const int64_t t = std::max<int64_t>(1, std::min({num_threads, n, work_threads(a)}));
  // Items are dealt round-robin: sequences of a batch differ in length (an item's cost).
  auto worker = [&a, n, t](int64_t w) {
    std::vector<float> buf;
    for (int64_t i = w; i < n; i += t) run_one(a, i, buf);
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(t - 1));
  for (int64_t w = 1; w < t; ++w) pool.emplace_back(worker, w);
  worker(0);
  for (auto& th : pool) th.join();
}

}  // namespace

NB_MODULE(_paged_attn, m) {
  m.doc() = "In-place paged attention for CPU (fp32); see kvsaga/kernels/inplace.py.";
  m.def("paged_attention", &paged_attention, "out"_a, "q"_a, "k"_a, "v"_a, "tables"_a,
        "seq_lens"_a, "q_start"_a, "seq_ids"_a, "num_seqs"_a, "num_kv_heads"_a, "group"_a,
        "head_dim"_a, "block_size"_a, "table_stride"_a, "q_tok"_a, "q_head"_a, "o_tok"_a,
        "o_head"_a, "c_block"_a, "c_tok"_a, "c_head"_a, "scale"_a, "num_threads"_a,
        nb::call_guard<nb::gil_scoped_release>());
}
