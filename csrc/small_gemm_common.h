// What both small-rows GEMM kernels share (csrc/small_gemm.cpp's plain-layout tiles and
// csrc/small_gemm_groups.h's column-group copy): included by both.

#pragma once

#include <cstdint>

namespace small_gemm {

// K <= 0: no products, so every output is its bias (or 0), the kernels' loops storing none.
// out[r][j] (row stride out_row) = bias[j] (0 where bias is null) for r < rows, j < n.
inline void fill_bias(float* out, int64_t out_row, int64_t rows, int64_t n,
                      const float* bias) {
  for (int64_t r = 0; r < rows; ++r) {
    float* o = out + r * out_row;
    for (int64_t j = 0; j < n; ++j) o[j] = bias != nullptr ? bias[j] : 0.0f;
  }
}

}  // namespace small_gemm
