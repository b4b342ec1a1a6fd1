// sampling_probs on CUDA: one block per row; the row is re-read from L2 by each pass.
// Passes: [top-k: 4 radix passes for the k-th largest scaled logit] -> online max/sum of exp over
// the kept tokens -> [top-p: 4 radix passes over the probabilities, with mass histograms, for the
// smallest kept probability, then its renormaliser] -> write. Thresholds are found exactly on the
// float bit patterns (8 bits a pass), so no sort and no V-sized scratch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "cuda_common.cuh"

namespace specdec {
namespace cuda {
namespace {

constexpr int kThreads = 1024;

// Visit every element of a row: four coalesced loads per thread issued before any is used, so a
// block keeps 16 KB in flight instead of serialising load -> exp -> load.
template <typename T, typename F>
__device__ __forceinline__ void for_each_in_row(const T* row, int V, F f) {
  const int bs = blockDim.x;
  for (int v0 = threadIdx.x; v0 < V; v0 += 4 * bs) {
    float x[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int v = v0 + j * bs;
      x[j] = v < V ? static_cast<float>(row[v]) : 0.f;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int v = v0 + j * bs;
      if (v < V) f(v, x[j]);
    }
  }
}

// Monotone map float -> uint32 (larger float, larger key).
__device__ __forceinline__ uint32_t ordered(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float unordered(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}


__device__ __forceinline__ float block_sum(float v) {
  __shared__ float s[32];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) s[threadIdx.x >> 5] = v;
  __syncthreads();
  float t = 0.f;
  for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += s[w];  // fixed order: deterministic
  return t;
}

// Radix step shared by both selections: warp 0 picks the digit of the next 8 bits.
// Top-k (mass == nullptr): the digit holding the `remaining`-th largest key.
// Top-p: the lowest non-empty digit whose strictly-larger mass keeps `above` under `limit`.
__device__ void pick_digit(const int* cnt, const float* mass, int& remaining, float& above, float limit,
                           int& digit) {
  const int lane = threadIdx.x & 31;
  // lane l owns digits 255 - 8l ... 248 - 8l (top first)
  int c = 0;
  float m = 0.f;
  for (int j = 0; j < 8; ++j) {
    const int d = 255 - 8 * lane - j;
    c += cnt[d];
    if (mass) m += mass[d];
  }
  int c_before = c;
  float m_before = m;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int c2 = __shfl_up_sync(kFullMask, c_before, off);
    const float m2 = __shfl_up_sync(kFullMask, m_before, off);
    if (lane >= off) {
      c_before += c2;
      m_before += m2;
    }
  }
  c_before -= c;  // exclusive
  m_before -= m;
  int found = -1;
  float found_above = 0.f;
  int found_rem = 0;
  if (mass == nullptr) {
    int cum = c_before;
    for (int j = 0; j < 8 && found < 0; ++j) {
      const int d = 255 - 8 * lane - j;
      if (cum < remaining && cum + cnt[d] >= remaining) {
        found = d;
        found_rem = remaining - cum;
      }
      cum += cnt[d];
    }
    const unsigned ok = __ballot_sync(kFullMask, found >= 0);
    const int src = __ffs(ok) - 1;
    digit = __shfl_sync(kFullMask, found, src);
    remaining = __shfl_sync(kFullMask, found_rem, src);
  } else {
    float cum = m_before;
    for (int j = 0; j < 8; ++j) {
      const int d = 255 - 8 * lane - j;
      if (cnt[d] > 0 && above + cum < limit) {
        found = d;  // keep going: the lowest qualifying digit wins
        found_above = cum;
      }
      cum += mass[d];
    }
    const unsigned ok = __ballot_sync(kFullMask, found >= 0);
    const int src = 31 - __clz(ok);
    digit = __shfl_sync(kFullMask, found, src);
    above += __shfl_sync(kFullMask, found_above, src);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    sampling_probs_kernel(const T* logits, int V, const float* temps, const int64_t* top_ks,
                          const float* top_ps, float* out) {
  const int64_t r = blockIdx.x;
  const T* row = logits + r * V;
  float* orow = out + r * V;
  const float temp = temps[r];
  const int64_t k = top_ks[r];
  const float top_p = top_ps[r];
  __shared__ int s_cnt[256];
  __shared__ float s_mass[256];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining;
  __shared__ float s_above;
  __shared__ float s_m[32], s_s[32];

  // ---- top-k: exact k-th largest scaled logit by 4 radix passes on its bit pattern
  float kth = -INFINITY;
  if (k > 0 && k < V) {
    uint32_t prefix = 0, mask = 0;
    if (threadIdx.x == 0) s_remaining = static_cast<int>(k);
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int i = threadIdx.x; i < 256; i += blockDim.x) s_cnt[i] = 0;
      __syncthreads();
      for_each_in_row(row, V, [&](int, float l) {
        const uint32_t u = ordered(l / temp);  // a division, as the reference computes it
        if ((u & mask) == prefix) atomicAdd(&s_cnt[(u >> shift) & 255u], 1);
      });
      __syncthreads();
      if (threadIdx.x < 32) {
        int rem = s_remaining, digit;
        float unused = 0.f;
        pick_digit(s_cnt, nullptr, rem, unused, 0.f, digit);
        if (threadIdx.x == 0) {
          s_remaining = rem;
          s_prefix = prefix | (static_cast<uint32_t>(digit) << shift);
        }
      }
      __syncthreads();
      prefix = s_prefix;
      mask |= 255u << shift;
    }
    kth = unordered(prefix);
  }

  // ---- softmax statistics over the kept tokens (one pass, online max)
  float m = -INFINITY, s = 0.f;
  for_each_in_row(row, V, [&](int, float l) {
    const float x = l / temp;
    if (x == -INFINITY || x < kth) return;  // masked tokens add nothing (and -inf - -inf is NaN)
    if (x > m) {
      s = (m == -INFINITY ? 0.f : s * expf(m - x)) + 1.f;
      m = x;
    } else {
      s += expf(x - m);
    }
  });
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(kFullMask, m, off);
    const float s2 = __shfl_xor_sync(kFullMask, s, off);
    const float mx = fmaxf(m, m2);
    s = (m == -INFINITY ? 0.f : s * expf(m - mx)) + (m2 == -INFINITY ? 0.f : s2 * expf(m2 - mx));
    m = mx;
  }
  if ((threadIdx.x & 31) == 0) {
    s_m[threadIdx.x >> 5] = m;
    s_s[threadIdx.x >> 5] = s;
  }
  __syncthreads();
  float mx = -INFINITY;
  for (int w = 0; w < (int)(blockDim.x >> 5); ++w) mx = fmaxf(mx, s_m[w]);
  float Z = 0.f;
  for (int w = 0; w < (int)(blockDim.x >> 5); ++w)
    if (s_m[w] != -INFINITY) Z += s_s[w] * expf(s_m[w] - mx);
  const float invZ = 1.f / Z;
  auto prob = [&](float l) -> float {
    const float x = l / temp;
    return x >= kth ? expf(x - mx) * invZ : 0.f;
  };

  // ---- top-p: smallest kept probability, 4 radix passes with mass histograms
  float tau = 0.f, scale = 1.f;
  if (top_p < 1.f) {
    uint32_t prefix = 0, mask = 0;
    if (threadIdx.x == 0) s_above = 0.f;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int i = threadIdx.x; i < 256; i += blockDim.x) {
        s_cnt[i] = 0;
        s_mass[i] = 0.f;
      }
      __syncthreads();
      for_each_in_row(row, V, [&](int, float l) {
        const float p = prob(l);
        const uint32_t u = __float_as_uint(p);  // p >= 0: bit patterns order like the values
        if (p > 0.f && (u & mask) == prefix) {
          atomicAdd(&s_cnt[(u >> shift) & 255u], 1);
          atomicAdd(&s_mass[(u >> shift) & 255u], p);
        }
      });
      __syncthreads();
      if (threadIdx.x < 32) {
        float above = s_above;
        int unused = 0, digit;
        pick_digit(s_cnt, s_mass, unused, above, top_p, digit);
        if (threadIdx.x == 0) {
          s_above = above;
          s_prefix = prefix | (static_cast<uint32_t>(digit) << shift);
        }
      }
      __syncthreads();
      prefix = s_prefix;
      mask |= 255u << shift;
    }
    tau = __uint_as_float(prefix);
    float kept = 0.f;
    for_each_in_row(row, V, [&](int, float l) {
      const float p = prob(l);
      kept += p >= tau ? p : 0.f;
    });
    scale = 1.f / block_sum(kept);
  }
  for_each_in_row(row, V, [&](int v, float l) {
    const float p = prob(l);
    orow[v] = p >= tau && p > 0.f ? p * scale : 0.f;
  });
}

at::Tensor sampling_probs_cuda(const at::Tensor& logits_in, const at::Tensor& temperature,
                               const at::Tensor& top_k, const at::Tensor& top_p, bool /*check: the wrapper checked*/) {
  const int64_t R = check_sampling_args(logits_in, temperature, top_k, top_p), V = logits_in.size(1);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor t = temperature.contiguous(), k = top_k.contiguous(), p = top_p.contiguous();
  at::Tensor out = at::empty({R, V}, logits.options().dtype(at::kFloat));
  if (R == 0 || V == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  SPECDEC_DISPATCH_PROBS(logits.scalar_type(), "sampling_probs_cuda", [&] {
    sampling_probs_kernel<scalar_t><<<static_cast<unsigned>(R), kThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), static_cast<int>(V), t.data_ptr<float>(), k.data_ptr<int64_t>(),
        p.data_ptr<float>(), out.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(specdec, CUDA, m) { m.impl("sampling_probs", &cuda::sampling_probs_cuda); }

}  // namespace specdec
