// Fused multiresolution hash-grid encoding (instant-ngp): forward and backward, each ONE kernel
// launch over all levels. The math is nerf/encoding.py's reference, operation for operation:
//
//   pos   = clamp(x, 0, 1) * scale_l + 0.5       (rounded multiply, rounded add: no FMA contraction,
//                                                  so floor(pos) picks the reference's vertex)
//   w_c   = (w_2 * w_1) * w_0                      (the reference's product order)
//   index = dense v0 + v1 res + v2 res^2, or the spatial hash (primes 1, 2654435761, 805459861) mod 2^32,
//           then mod P_l
//
// Layouts: x [N, 3] float32; tables [L, T, F] (float32 or float16); the forward writes its output
// feature-major, out[l F + f, n] (consecutive threads of a warp are consecutive points: coalesced
// stores), which torch sees as the [N, L F] tensor out.t(). The backward reads the output gradient
// through two strides, so either layout comes in without a copy. Table gradients are float32 (the
// master tables are float32 even when the forward gathers from a float16 copy) and are accumulated
// with atomics: one vector atomic per corner for F = 2 on sm_90 (float2 atomicAdd), scalar elsewhere.
//
// This file includes no torch header, so it builds in seconds with nvcc alone (tests compile it on
// machines without a GPU); hashgrid_bind.cpp is the torch side.

#include <cstdint>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "hashgrid.h"

namespace {

constexpr uint32_t kPrime1 = 2654435761u;
constexpr uint32_t kPrime2 = 805459861u;
constexpr int kThreads = 256;

template <typename T, int F>
struct Row;  // F features of one table row, loaded as one vector where the width allows

template <>
struct Row<float, 1> {
  static __device__ __forceinline__ void load(const float* p, float* v) { v[0] = __ldg(p); }
};
template <>
struct Row<float, 2> {
  static __device__ __forceinline__ void load(const float* p, float* v) {
    const float2 a = __ldg(reinterpret_cast<const float2*>(p));
    v[0] = a.x; v[1] = a.y;
  }
};
template <>
struct Row<float, 4> {
  static __device__ __forceinline__ void load(const float* p, float* v) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
  }
};
template <>
struct Row<__half, 1> {
  static __device__ __forceinline__ void load(const __half* p, float* v) { v[0] = __half2float(p[0]); }
};
template <>
struct Row<__half, 2> {
  static __device__ __forceinline__ void load(const __half* p, float* v) {
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(p));
    v[0] = a.x; v[1] = a.y;
  }
};
template <>
struct Row<__half, 4> {
  static __device__ __forceinline__ void load(const __half* p, float* v) {
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(p));
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
    v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
  }
};

template <int F>
__device__ __forceinline__ void add_row(float* p, const float* g) {
#pragma unroll
  for (int f = 0; f < F; ++f) atomicAdd(p + f, g[f]);
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
template <>
__device__ __forceinline__ void add_row<2>(float* p, const float* g) {
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(g[0], g[1]));  // one 8-byte atomic (sm_90+)
}
template <>
__device__ __forceinline__ void add_row<4>(float* p, const float* g) {
  atomicAdd(reinterpret_cast<float4*>(p), make_float4(g[0], g[1], g[2], g[3]));
}
#endif

// The lower corner, fraction and in-domain flag of x at level l (shared by forward and backward).
struct Cell {
  uint32_t g[3];
  float f[3];
  bool inside[3];
};

__device__ __forceinline__ Cell locate(const float* __restrict__ x, uint32_t n, float scale) {
  Cell c;
#pragma unroll
  for (int d = 0; d < 3; ++d) {
    const float raw = x[3 * (size_t)n + d];
    c.inside[d] = raw >= 0.f && raw <= 1.f;  // torch's clamp passes the gradient on the closed interval
    const float xd = fminf(fmaxf(raw, 0.f), 1.f);
    const float pos = __fadd_rn(__fmul_rn(xd, scale), 0.5f);
    const float lower = floorf(pos);
    c.f[d] = pos - lower;
    c.g[d] = (uint32_t)(int)lower;
  }
  return c;
}

__device__ __forceinline__ uint32_t corner_row(const Cell& c, int corner, uint32_t res, uint32_t size, bool hashed) {
  const uint32_t v0 = c.g[0] + (corner & 1), v1 = c.g[1] + ((corner >> 1) & 1), v2 = c.g[2] + ((corner >> 2) & 1);
  if (hashed) return (v0 ^ (v1 * kPrime1) ^ (v2 * kPrime2)) & (size - 1);  // hashed levels use all T rows: a power of 2
  return (v0 + v1 * res + v2 * res * res) % size;
}

__device__ __forceinline__ float corner_weight(const Cell& c, int corner) {
  const float w0 = (corner & 1) ? c.f[0] : 1.f - c.f[0];
  const float w1 = (corner & 2) ? c.f[1] : 1.f - c.f[1];
  const float w2 = (corner & 4) ? c.f[2] : 1.f - c.f[2];
  return (w2 * w1) * w0;
}

template <typename T, int F>
__global__ void __launch_bounds__(kThreads) forward_kernel(const float* __restrict__ x, uint32_t N,
                                                            const T* __restrict__ tables, GridParams p,
                                                            float* __restrict__ out) {
  const uint32_t n = blockIdx.x * kThreads + threadIdx.x;
  const int l = blockIdx.y;
  if (n >= N) return;
  const Cell c = locate(x, n, p.scale[l]);
  const T* table = tables + (size_t)l * p.table_size * F;
  const uint32_t res = p.res[l], size = p.size[l];
  const bool hashed = p.hashed[l];
  // All 8 rows first, then all 8 gathers in flight, then the sums.
  uint32_t rows[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) rows[k] = corner_row(c, k, res, size, hashed);
  float vals[8][F];
#pragma unroll
  for (int k = 0; k < 8; ++k) Row<T, F>::load(table + (size_t)rows[k] * F, vals[k]);
  float acc[F];
#pragma unroll
  for (int f = 0; f < F; ++f) acc[f] = 0.f;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const float w = corner_weight(c, k);
#pragma unroll
    for (int f = 0; f < F; ++f) acc[f] += w * vals[k][f];
  }
#pragma unroll
  for (int f = 0; f < F; ++f) out[(size_t)(l * F + f) * N + n] = acc[f];
}

template <typename T, int F, bool GradX>
__global__ void __launch_bounds__(kThreads) backward_kernel(const float* __restrict__ x, uint32_t N,
                                                             const T* __restrict__ tables, GridParams p,
                                                             const float* __restrict__ grad_out, int64_t go_stride_n,
                                                             int64_t go_stride_c, float* __restrict__ grad_tables,
                                                             float* __restrict__ grad_x) {
  const uint32_t n = blockIdx.x * kThreads + threadIdx.x;
  const int l = blockIdx.y;
  if (n >= N) return;
  float g[F];
  bool any = false;
#pragma unroll
  for (int f = 0; f < F; ++f) {
    g[f] = grad_out[(int64_t)n * go_stride_n + (int64_t)(l * F + f) * go_stride_c];
    any |= g[f] != 0.f;
  }
  if (!any) return;  // nothing to add (masked samples): skip the 8 atomics
  const float scale = p.scale[l];
  const Cell c = locate(x, n, scale);
  const uint32_t res = p.res[l], size = p.size[l];
  const bool hashed = p.hashed[l];
  float* gtab = grad_tables + (size_t)l * p.table_size * F;
  float dx[3] = {0.f, 0.f, 0.f};
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const uint32_t row = corner_row(c, k, res, size, hashed);
    const float w = corner_weight(c, k);
    float wg[F];
#pragma unroll
    for (int f = 0; f < F; ++f) wg[f] = w * g[f];
    add_row<F>(gtab + (size_t)row * F, wg);
    if constexpr (GradX) {
      float v[F];
      Row<T, F>::load(tables + ((size_t)l * p.table_size + row) * F, v);
      float dw = 0.f;  // dL/dw_k = sum_f g_f table[row, f]
#pragma unroll
      for (int f = 0; f < F; ++f) dw += g[f] * v[f];
#pragma unroll
      for (int d = 0; d < 3; ++d) {
        // dw_k/df_d: +-1 times the other two axes' weights
        float other = 1.f;
#pragma unroll
        for (int e = 0; e < 3; ++e)
          if (e != d) other *= ((k >> e) & 1) ? c.f[e] : 1.f - c.f[e];
        dx[d] += dw * (((k >> d) & 1) ? other : -other);
      }
    }
  }
  if constexpr (GradX) {
#pragma unroll
    for (int d = 0; d < 3; ++d)
      if (c.inside[d]) atomicAdd(grad_x + 3 * (size_t)n + d, dx[d] * scale);
  }
}

template <typename T, int F>
cudaError_t forward_t(const float* x, uint32_t N, const void* tables, const GridParams& p, float* out, cudaStream_t s) {
  const dim3 grid((N + kThreads - 1) / kThreads, p.n_levels);
  forward_kernel<T, F><<<grid, kThreads, 0, s>>>(x, N, static_cast<const T*>(tables), p, out);
  return cudaGetLastError();
}

template <typename T, int F>
cudaError_t backward_t(const float* x, uint32_t N, const void* tables, const GridParams& p, const float* grad_out,
                       int64_t sn, int64_t sc, float* grad_tables, float* grad_x, cudaStream_t s) {
  const dim3 grid((N + kThreads - 1) / kThreads, p.n_levels);
  const T* t = static_cast<const T*>(tables);
  if (grad_x)
    backward_kernel<T, F, true><<<grid, kThreads, 0, s>>>(x, N, t, p, grad_out, sn, sc, grad_tables, grad_x);
  else
    backward_kernel<T, F, false><<<grid, kThreads, 0, s>>>(x, N, t, p, grad_out, sn, sc, grad_tables, grad_x);
  return cudaGetLastError();
}

template <typename T>
cudaError_t forward_f(const float* x, uint32_t N, const void* tables, const GridParams& p, float* out, cudaStream_t s) {
  switch (p.n_features) {
    case 1: return forward_t<T, 1>(x, N, tables, p, out, s);
    case 2: return forward_t<T, 2>(x, N, tables, p, out, s);
    case 4: return forward_t<T, 4>(x, N, tables, p, out, s);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t backward_f(const float* x, uint32_t N, const void* tables, const GridParams& p, const float* grad_out,
                       int64_t sn, int64_t sc, float* grad_tables, float* grad_x, cudaStream_t s) {
  switch (p.n_features) {
    case 1: return backward_t<T, 1>(x, N, tables, p, grad_out, sn, sc, grad_tables, grad_x, s);
    case 2: return backward_t<T, 2>(x, N, tables, p, grad_out, sn, sc, grad_tables, grad_x, s);
    case 4: return backward_t<T, 4>(x, N, tables, p, grad_out, sn, sc, grad_tables, grad_x, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t hashgrid_forward(const float* x, uint32_t N, const void* tables, bool half, const GridParams& p,
                             float* out, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  return half ? forward_f<__half>(x, N, tables, p, out, stream) : forward_f<float>(x, N, tables, p, out, stream);
}

cudaError_t hashgrid_backward(const float* x, uint32_t N, const void* tables, bool half, const GridParams& p,
                              const float* grad_out, int64_t go_stride_n, int64_t go_stride_c, float* grad_tables,
                              float* grad_x, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  return half ? backward_f<__half>(x, N, tables, p, grad_out, go_stride_n, go_stride_c, grad_tables, grad_x, stream)
              : backward_f<float>(x, N, tables, p, grad_out, go_stride_n, go_stride_c, grad_tables, grad_x, stream);
}
