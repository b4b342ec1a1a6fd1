// draft_entropy on CUDA: one block per row, ONE pass over the row. Each thread keeps an online
// softmax state (m, Z = sum exp(s - m), A = sum exp(s - m) (s - m)) over its strided elements;
// the states are merged across the block (rescaling by exp(m_i - m)), then H = log Z - A / Z.
// Bytes: the row read once, 4 bytes written; no scratch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cfloat>

#include "../common/checks.h"
#include "cuda_common.cuh"

namespace specdec {
namespace cuda {
namespace {

constexpr int kThreads = 512;

struct Online {
  float m, z, a;
};

__device__ __forceinline__ void add(Online& st, float s) {
  if (s == -INFINITY) return;  // a masked token: p = 0
  if (s > st.m) {
    // rescale to the new maximum: A' = (A + Z (m - s)) e^{m - s}, Z' = Z e^{m - s}
    const float f = st.m == -INFINITY ? 0.f : __expf(st.m - s);
    st.a = (st.a + st.z * (st.m - s)) * f;
    st.z = st.z * f + 1.f;
    st.m = s;
  } else {
    const float d = s - st.m;
    const float e = __expf(d);
    st.z += e;
    st.a += e * d;
  }
}

__device__ __forceinline__ Online merge(Online x, Online y) {
  if (y.m == -INFINITY) return x;
  if (x.m == -INFINITY) return y;
  const float m = fmaxf(x.m, y.m);
  const float fx = __expf(x.m - m), fy = __expf(y.m - m);
  return {m, x.z * fx + y.z * fy, (x.a + x.z * (x.m - m)) * fx + (y.a + y.z * (y.m - m)) * fy};
}

template <typename T>
__global__ void __launch_bounds__(kThreads) draft_entropy_kernel(const T* __restrict__ logits, int64_t stride,
                                                                  const float* __restrict__ temp, int64_t ts,
                                                                  int V, float* __restrict__ out) {
  const int64_t r = blockIdx.x;
  const T* row = logits + r * stride;
  const float t = temp[r * ts];
  Online st{-INFINITY, 0.f, 0.f};
  for (int v = threadIdx.x; v < V; v += blockDim.x) add(st, __fdiv_rn(static_cast<float>(row[v]), t));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Online other{__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.z, o),
                 __shfl_xor_sync(0xffffffffu, st.a, o)};
    st = merge(st, other);
  }
  __shared__ Online warps[kThreads / 32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  if (lane == 0) warps[w] = st;
  __syncthreads();
  if (threadIdx.x == 0) {
    Online acc = warps[0];
    for (int i = 1; i < static_cast<int>(blockDim.x >> 5); ++i) acc = merge(acc, warps[i]);
    // An all -inf row (rejected by check=True) gives z = 0: NaN, as the reference does.
    const float h = logf(acc.z) - acc.a / acc.z;
    out[r] = h > 0.f ? h : (h == h ? 0.f : h);
  }
}

at::Tensor draft_entropy_cuda(const at::Tensor& logits_in, const at::Tensor& temperature, bool /*check: the wrapper checked*/) {
  const int64_t R = check_entropy_args(logits_in, temperature);
  const at::Tensor logits = unit_last_stride(logits_in);
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor out = at::empty({R}, logits.options().dtype(at::kFloat));
  if (R == 0) return out;
  const int V = static_cast<int>(logits.size(1));
  const int threads = V >= kThreads ? kThreads : ((V + 31) / 32) * 32;
  auto stream = at::cuda::getCurrentCUDAStream();
  SPECDEC_DISPATCH_PROBS(logits.scalar_type(), "draft_entropy_cuda", [&] {
    draft_entropy_kernel<scalar_t><<<static_cast<unsigned>(R), threads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), logits.stride(0), temperature.data_ptr<float>(), temperature.stride(0), V,
        out.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(specdec, CUDA, m) { m.impl("draft_entropy", &cuda::draft_entropy_cuda); }

}  // namespace specdec
