// The interface between the fused hash-grid kernels (hashgrid_kernels.cu, no torch headers) and
// their torch binding (hashgrid_bind.cpp). See hashgrid_kernels.cu for the math and the layouts.
#pragma once

#include <cstdint>
#include <cuda_runtime_api.h>

constexpr int kMaxLevels = 32;

// Per-level constants, passed by value as a kernel parameter (under 1 KB).
struct GridParams {
  int n_levels;
  int n_features;        // F: 1, 2 or 4
  uint32_t table_size;   // T = 2^log2_hashmap_size rows per level
  float scale[kMaxLevels];     // scale_l = base * b^l - 1 (float32, computed once in Python)
  uint32_t res[kMaxLevels];    // vertices per axis, ceil(scale_l) + 1
  uint32_t size[kMaxLevels];   // rows used, P_l
  uint32_t hashed[kMaxLevels]; // 1 where res_l^3 > T
};

// out: [L F, N] float32. tables: [L, T, F] float32, or float16 when half.
cudaError_t hashgrid_forward(const float* x, uint32_t N, const void* tables, bool half, const GridParams& p,
                             float* out, cudaStream_t stream);

// grad_out element (n, c) at grad_out[n * go_stride_n + c * go_stride_c]; grad_tables [L, T, F] float32,
// zeroed by the caller; grad_x [N, 3] float32 zeroed by the caller, or null when x needs no gradient.
cudaError_t hashgrid_backward(const float* x, uint32_t N, const void* tables, bool half, const GridParams& p,
                              const float* grad_out, int64_t go_stride_n, int64_t go_stride_c, float* grad_tables,
                              float* grad_x, cudaStream_t stream);
