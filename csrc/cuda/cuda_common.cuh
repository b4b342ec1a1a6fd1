// Device helpers shared by the CUDA kernels: vector loads, warp/block reductions, launch sizing.
#pragma once

#include <algorithm>
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstdint>

namespace specdec {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;
// gridDim.y and gridDim.z are limited to 65535; kernels that put rows there launch per slice.
constexpr int64_t kMaxGridYZ = 65535;

// Four consecutive elements in one load: 16 bytes for float32, 8 bytes for 16-bit types. Four is
// also the width of one Philox block, so one load feeds exactly one random-number call.
template <typename T>
__device__ __forceinline__ void load4(const T* p, float out[4]);

template <>
__device__ __forceinline__ void load4<float>(const float* p, float out[4]) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(p));
  out[0] = v.x;
  out[1] = v.y;
  out[2] = v.z;
  out[3] = v.w;
}

template <>
__device__ __forceinline__ void load4<at::Half>(const at::Half* p, float out[4]) {
  const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&v.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&v.y));
  out[0] = a.x;
  out[1] = a.y;
  out[2] = b.x;
  out[3] = b.y;
}

template <>
__device__ __forceinline__ void load4<at::BFloat16>(const at::BFloat16* p, float out[4]) {
  const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v.y));
  out[0] = a.x;
  out[1] = a.y;
  out[2] = b.x;
  out[3] = b.y;
}

template <typename T>
__device__ __forceinline__ float load1(const T* p) {
  return static_cast<float>(p[0]);
}

template <typename T>
__device__ __forceinline__ bool aligned4(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) % (4 * sizeof(T))) == 0;
}

// (key, index) pairs reduced with a caller-supplied "better" rule (larger key, then smaller index).
template <typename Better>
__device__ __forceinline__ void warp_reduce_pair(float& key, int& idx, Better better) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float k2 = __shfl_down_sync(kFullMask, key, off);
    const int i2 = __shfl_down_sync(kFullMask, idx, off);
    if (better(k2, i2, key, idx)) {
      key = k2;
      idx = i2;
    }
  }
}

// Block-wide pair reduction; the result is valid in thread 0. blockDim.x must be a multiple of 32.
template <typename Better>
__device__ __forceinline__ void block_reduce_pair(float& key, int& idx, Better better) {
  __shared__ float s_key[32];
  __shared__ int s_idx[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  warp_reduce_pair(key, idx, better);
  __syncthreads();  // s_key may still be read by a previous call
  if (lane == 0) {
    s_key[warp] = key;
    s_idx[warp] = idx;
  }
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    key = lane < nw ? s_key[lane] : key;
    idx = lane < nw ? s_idx[lane] : idx;
    if (lane >= nw) {  // neutral element: a copy of lane 0's value never wins a strict comparison
      key = s_key[0];
      idx = s_idx[0];
    }
    warp_reduce_pair(key, idx, better);
  }
}

// Sum over the block of two int64 words (fixed-point masses, tree_math.h); every thread gets the
// total. Integer addition is exact, so the result does not depend on the reduction order.
__device__ __forceinline__ void block_allreduce_sum2(int64_t& a, int64_t& b) {
  __shared__ long long s_a[32], s_b[32];
  long long x = a, y = b;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    x += __shfl_down_sync(kFullMask, x, off);
    y += __shfl_down_sync(kFullMask, y, off);
  }
  __syncthreads();  // s_a may still be read by a previous call
  if ((threadIdx.x & 31) == 0) {
    s_a[threadIdx.x >> 5] = x;
    s_b[threadIdx.x >> 5] = y;
  }
  __syncthreads();
  x = 0;
  y = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) {
    x += s_a[w];
    y += s_b[w];
  }
  a = x;
  b = y;
}

// Chunks per row so that rows * chunks fills the GPU about twice; each chunk a multiple of
// `align` elements and at least `min_chunk`.
inline int64_t chunk_size(int64_t rows, int64_t V, int64_t min_chunk, int64_t align) {
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  int64_t want = (2 * sms + rows - 1) / (rows > 0 ? rows : 1);
  int64_t chunk = (V + want - 1) / (want > 0 ? want : 1);
  chunk = chunk < min_chunk ? min_chunk : chunk;
  chunk = (chunk + align - 1) / align * align;
  return chunk;
}

}  // namespace cuda
}  // namespace specdec
