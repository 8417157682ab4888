// The scalar helpers of csrc/paged_attn.cpp's generic loops and softmax (dot products,
// row sums and maxima, axpy, exp on [-87, 0]), written so that the compiler vectorises them
// without reassociating floats. Included by paged_attn.cpp inside its anonymous namespace.

#pragma once

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
  for (; D == 0 && i < n; ++i) s += a[i] * b[i];  // D > 0: a multiple of 16
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
