// Chain verification on CUDA. Bytes that must move per request: the K drafted tokens, two scalars
// per position up to the first rejection, and ONE full row (the residual max(0, p - q) of the
// rejected position, or the bonus row of p). The row is split across blocks (grid = chunks x B):
// each block recomputes the short acceptance prefix from those scalars (they are L2 hits after the
// first block), races its chunk, and writes one (key, index) partial; a one-block-per-row kernel
// combines the partials. No host synchronisation, no [B, K+1, V] temporaries.
//
// Tried and measured on an H100 (benchmarks/results/nvidia-h100-2026-11-22-quick-check.log): a
// single-launch variant whose chunks form a thread-block cluster combining through distributed
// shared memory was no faster than this two-kernel form (8.4 vs 7.4 us at B=16, K=5, V=32000;
// 20.7 vs 13.3 us at B=16, K=8, V=128256), so it was removed. At small B the time is a latency
// chain (draft ids -> p(x), q(x) -> the row -> the partials), not bandwidth.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/philox.h"
#include "../common/sampling_math.h"
#include "cuda_common.cuh"

namespace specdec {
namespace cuda {
namespace {

constexpr int kThreads = 256;

struct RaceBetter {
  __device__ bool operator()(float k, int i, float bk, int bi) const { return race_better(k, i, bk, bi); }
};

// Argmax with ties to the smaller index; NaN never wins.
struct MaxBetter {
  __device__ bool operator()(float v, int i, float bv, int bi) const {
    return v > bv || (v == bv && i < bi);
  }
};

struct RowRng {
  int64_t seed, offset, stream;
};

template <typename T>
struct ChainArgs {
  const int64_t* drafts;
  int64_t dB;
  const T* P;
  int64_t pB, pK;
  const T* Q;  // nullptr: deterministic drafts
  int64_t qB, qK;
  const int64_t* num_draft;  // nullptr: K for every row
  int64_t ndS;
  const int64_t* seed;
  int64_t seedS;
  const int64_t* offset;
  int64_t offS;
  bool row_streams;
  int K;
  int V;
};

template <typename T>
__device__ __forceinline__ int row_num_draft(const ChainArgs<T>& A, int b) {
  if (A.num_draft == nullptr) return A.K;
  const int64_t n = A.num_draft[b * A.ndS];
  return n < 0 ? 0 : (n > A.K ? A.K : static_cast<int>(n));
}

template <typename T>
__device__ __forceinline__ RowRng row_rng(const ChainArgs<T>& A, int b) {
  return {A.seed[b * A.seedS], A.offset[b * A.offS], A.row_streams ? b : 0};
}

// Number of accepted drafts of row b, computed by one warp: lane i tests position i.
template <typename T>
__device__ int accepted_prefix(const ChainArgs<T>& A, int b, int n, const RowRng& rng) {
  const int lane = threadIdx.x & 31;
  const DrawKey key = make_draw_key(rng.seed, rng.offset, 0, rng.stream);
  for (int base = 0; base < n; base += 32) {
    const int i = base + lane;
    bool ok = false;
    if (i < n) {
      const int64_t x = A.drafts[b * A.dB + i];
      if (x >= 0 && x < A.V) {  // an unchecked out-of-range draft is rejected without a read
        const float p = load1(A.P + b * A.pB + i * A.pK + x);
        const float q = A.Q ? load1(A.Q + b * A.qB + i * A.qK + x) : 1.f;
        ok = accept_draft(draw_uniform(key, static_cast<uint32_t>(i)), p, q);
      }
    }
    const unsigned acc = __ballot_sync(kFullMask, ok);
    const int left = n - base;
    const unsigned valid = left >= 32 ? kFullMask : ((1u << left) - 1u);
    const unsigned rej = ~acc & valid;
    if (rej) return base + __ffs(rej) - 1;
  }
  return n;
}

template <typename T>
__device__ __forceinline__ void load_group(const T* prow, const T* qrow, bool vec, int e0, int hi,
                                          float r[4], float q[4]) {
  if (vec && e0 + 4 <= hi) {
    load4(prow + e0, r);
    if (qrow) load4(qrow + e0, q);
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      r[j] = e0 + j < hi ? load1(prow + e0 + j) : 0.f;
      q[j] = (qrow && e0 + j < hi) ? load1(qrow + e0 + j) : 0.f;
    }
  }
}

__device__ __forceinline__ void race_group(bool has_q, int skip, int e0, const DrawKey& key, float r[4],
                                           const float q[4], float& best, int& best_idx) {
  bool any = false;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (has_q) r[j] = fmaxf(0.f, r[j] - q[j]);
    if (e0 + j == skip) r[j] = 0.f;
    any |= r[j] > 0.f;
  }
  if (!any) return;  // 40 multiplies of Philox saved for groups that cannot win
  const Philox4 w = draw_block(key, static_cast<uint32_t>(e0 >> 2));
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float k = race_key(r[j], word_to_uniform(pick_word(w, j)));
    if (k > best) {  // ascending per thread: ties keep the smaller index
      best = k;
      best_idx = e0 + j;
    }
  }
}

// Race over elements [lo, hi) of one row (lo a multiple of 4); r = max(0, p - q) (q != nullptr),
// p with `skip` removed (skip >= 0) or p. Two groups of 4 per thread and iteration, both loads
// issued before either is used, so each thread keeps 32-64 bytes in flight. Leaves the thread's
// best (key, index); index INT_MAX when nothing was positive.
template <typename T>
__device__ __forceinline__ void race_chunk(const T* prow, const T* qrow, int skip, int lo, int hi,
                                           const DrawKey& key, float& best, int& best_idx) {
  const bool vec = aligned4(prow) && (qrow == nullptr || aligned4(qrow));
  const int stride = 4 * blockDim.x;
  for (int e0 = lo + 4 * threadIdx.x; e0 < hi; e0 += 2 * stride) {
    const int e1 = e0 + stride;
    float r0[4], q0[4], r1[4], q1[4];
    load_group(prow, qrow, vec, e0, hi, r0, q0);
    if (e1 < hi) load_group(prow, qrow, vec, e1, hi, r1, q1);
    race_group(qrow != nullptr, skip, e0, key, r0, q0, best, best_idx);
    if (e1 < hi) race_group(qrow != nullptr, skip, e1, key, r1, q1, best, best_idx);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    chain_race_partial(ChainArgs<T> A, int b0, int chunk, int nchunks, float* part_key, int* part_idx,
                       int64_t* tokens, int64_t* num_accepted) {
  const int b = b0 + static_cast<int>(blockIdx.y), c = blockIdx.x;
  const int n = row_num_draft(A, b);
  const RowRng rng = row_rng(A, b);
  __shared__ int s_a;
  if (threadIdx.x < 32) {
    const int a = accepted_prefix(A, b, n, rng);
    if (threadIdx.x == 0) s_a = a;
  }
  __syncthreads();
  const int a = s_a;
  if (c == 0) {
    // tokens[b, a] is written by chain_finalize once the row's winner is known.
    for (int i = threadIdx.x; i <= A.K; i += blockDim.x)
      tokens[static_cast<int64_t>(b) * (A.K + 1) + i] = i < a ? A.drafts[b * A.dB + i] : -1;
    if (threadIdx.x == 0) num_accepted[b] = a;
  }
  const bool bonus = a == n;
  const T* prow = A.P + b * A.pB + a * A.pK;
  const T* qrow = (!bonus && A.Q) ? A.Q + b * A.qB + a * A.qK : nullptr;
  int skip = -1;
  if (!bonus && !A.Q) {
    const int64_t x = A.drafts[b * A.dB + a];
    skip = (x >= 0 && x < A.V) ? static_cast<int>(x) : -1;
  }
  const DrawKey key = make_draw_key(rng.seed, rng.offset, 1, rng.stream);
  const int lo = c * chunk;
  const int hi = min(A.V, lo + chunk);
  float best = 0.f;
  int best_idx = INT_MAX;
  race_chunk(prow, qrow, skip, lo, hi, key, best, best_idx);
  block_reduce_pair(best, best_idx, RaceBetter{});
  if (threadIdx.x == 0) {
    part_key[static_cast<int64_t>(b) * nchunks + c] = best;
    part_idx[static_cast<int64_t>(b) * nchunks + c] = best_idx;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    chain_finalize(ChainArgs<T> A, int nchunks, const float* part_key, const int* part_idx,
                   int64_t* tokens, const int64_t* num_accepted) {
  const int b = blockIdx.x;
  float best = 0.f;
  int best_idx = INT_MAX;
  for (int c = threadIdx.x; c < nchunks; c += blockDim.x) {
    const float k = part_key[static_cast<int64_t>(b) * nchunks + c];
    const int i = part_idx[static_cast<int64_t>(b) * nchunks + c];
    if (k > 0.f && race_better(k, i, best, best_idx)) {
      best = k;
      best_idx = i;
    }
  }
  block_reduce_pair(best, best_idx, RaceBetter{});
  __shared__ int s_idx;
  if (threadIdx.x == 0) s_idx = best > 0.f ? best_idx : -1;
  __syncthreads();
  const int a = static_cast<int>(num_accepted[b]);
  int y = s_idx;
  if (y < 0) {
    // Residual of zero mass (p == q, or p one-hot at the rejected draft): measure-zero for valid
    // inputs, so this one-block pass over p is off the fast path.
    const RowRng rng = row_rng(A, b);
    const DrawKey key = make_draw_key(rng.seed, rng.offset, 1, rng.stream);
    best = 0.f;
    best_idx = INT_MAX;
    race_chunk<T>(A.P + b * A.pB + a * A.pK, nullptr, -1, 0, A.V, key, best, best_idx);
    block_reduce_pair(best, best_idx, RaceBetter{});
    y = best > 0.f ? best_idx : 0;
  }
  if (threadIdx.x == 0) tokens[static_cast<int64_t>(b) * (A.K + 1) + a] = y;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    greedy_partial(const T* L, int64_t sB, int64_t sK, const int64_t* num_draft, int64_t ndS, int K,
                   int V, int b0, int chunk, int nchunks, float* part_val, int* part_idx) {
  const int c = blockIdx.x, i = blockIdx.y, b = b0 + static_cast<int>(blockIdx.z);
  int n = K;
  if (num_draft) {
    const int64_t v = num_draft[b * ndS];
    n = v < 0 ? 0 : (v > K ? K : static_cast<int>(v));
  }
  // All positions <= n are scanned in parallel: each accepted position needs its full argmax
  // anyway, and a sequential early exit would serialise K+1 grid-wide steps. Rows past n are
  // never read.
  if (i > n) return;
  const T* row = L + b * sB + i * sK;
  const int lo = c * chunk, hi = min(V, lo + chunk);
  float best = -INFINITY;
  int best_idx = INT_MAX;
  const bool vec = aligned4(row);
  for (int e0 = lo + 4 * threadIdx.x; e0 < hi; e0 += 4 * blockDim.x) {
    float v[4];
    if (vec && e0 + 4 <= hi) {
      load4(row + e0, v);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = e0 + j < hi ? load1(row + e0 + j) : NAN;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (MaxBetter{}(v[j], e0 + j, best, best_idx)) {
        best = v[j];
        best_idx = e0 + j;
      }
  }
  block_reduce_pair(best, best_idx, MaxBetter{});
  if (threadIdx.x == 0) {
    const int64_t at = (static_cast<int64_t>(b) * (K + 1) + i) * nchunks + c;
    part_val[at] = best;
    part_idx[at] = best_idx;
  }
}

__global__ void greedy_finalize(const int64_t* drafts, int64_t dB, const int64_t* num_draft, int64_t ndS,
                                int K, int nchunks, const float* part_val, const int* part_idx,
                                int64_t* tokens, int64_t* num_accepted) {
  // One warp per row walks the positions in order until the first mismatch.
  const int b = blockIdx.x, lane = threadIdx.x;
  int n = K;
  if (num_draft) {
    const int64_t v = num_draft[b * ndS];
    n = v < 0 ? 0 : (v > K ? K : static_cast<int>(v));
  }
  int a = 0;
  for (;; ++a) {
    float best = -INFINITY;
    int best_idx = INT_MAX;
    const int64_t base = (static_cast<int64_t>(b) * (K + 1) + a) * nchunks;
    for (int c = lane; c < nchunks; c += 32)
      if (MaxBetter{}(part_val[base + c], part_idx[base + c], best, best_idx)) {
        best = part_val[base + c];
        best_idx = part_idx[base + c];
      }
    warp_reduce_pair(best, best_idx, MaxBetter{});
    best_idx = __shfl_sync(kFullMask, best_idx, 0);
    const int arg = best_idx == INT_MAX ? 0 : best_idx;  // all-NaN row: 0, as on the CPU
    if (lane == 0) tokens[static_cast<int64_t>(b) * (K + 1) + a] = arg;
    if (a == n || drafts[b * dB + a] != arg) break;
  }
  for (int i = a + 1 + lane; i <= K; i += 32) tokens[static_cast<int64_t>(b) * (K + 1) + i] = -1;
  if (lane == 0) num_accepted[b] = a;
}

std::tuple<at::Tensor, at::Tensor> verify_chain_cuda(const at::Tensor& draft_tokens_in,
                                                     const at::Tensor& target_probs_in,
                                                     const std::optional<at::Tensor>& draft_probs_in,
                                                     const std::optional<at::Tensor>& num_draft,
                                                     const at::Tensor& seed, const at::Tensor& offset,
                                                     bool row_streams, bool /*check: the wrapper checked*/) {
  const ChainDims d = check_chain_args(draft_tokens_in, target_probs_in, draft_probs_in, num_draft,
                                       "target_probs");
  check_chain_rng(seed, offset, d.B, target_probs_in);
  const c10::cuda::CUDAGuard guard(target_probs_in.device());
  const at::Tensor draft_tokens = draft_tokens_in.contiguous();
  const at::Tensor P = unit_last_stride(target_probs_in);
  std::optional<at::Tensor> Q;
  if (draft_probs_in.has_value()) Q = unit_last_stride(*draft_probs_in);
  auto opts = draft_tokens.options();
  at::Tensor tokens = at::empty({d.B, d.K + 1}, opts);
  at::Tensor num_accepted = at::empty({d.B}, opts);
  if (d.B == 0) return {tokens, num_accepted};
  const auto stream = at::cuda::getCurrentCUDAStream();
  SPECDEC_DISPATCH_PROBS(P.scalar_type(), "verify_chain_cuda", [&] {
    ChainArgs<scalar_t> A{draft_tokens.data_ptr<int64_t>(),
                          draft_tokens.stride(0),
                          P.data_ptr<scalar_t>(),
                          P.stride(0),
                          P.stride(1),
                          Q ? Q->data_ptr<scalar_t>() : nullptr,
                          Q ? Q->stride(0) : 0,
                          Q ? Q->stride(1) : 0,
                          num_draft ? num_draft->data_ptr<int64_t>() : nullptr,
                          num_draft ? num_draft->stride(0) : 0,
                          seed.data_ptr<int64_t>(),
                          seed.stride(0),
                          offset.data_ptr<int64_t>(),
                          offset.stride(0),
                          row_streams,
                          static_cast<int>(d.K),
                          static_cast<int>(d.V)};
    const int64_t chunk = chunk_size(d.B, d.V, 4 * kThreads, 4 * kThreads);
    const int nchunks = static_cast<int>((d.V + chunk - 1) / chunk);
    at::Tensor part_key = at::empty({d.B, nchunks}, P.options().dtype(at::kFloat));
    at::Tensor part_idx = at::empty({d.B, nchunks}, P.options().dtype(at::kInt));
    // Rows ride on grid.y (at most 65535): larger batches take one launch per slice of rows.
    for (int64_t b0 = 0; b0 < d.B; b0 += kMaxGridYZ) {
      const auto rows = static_cast<unsigned>(std::min<int64_t>(kMaxGridYZ, d.B - b0));
      chain_race_partial<scalar_t><<<dim3(nchunks, rows), kThreads, 0, stream>>>(
          A, static_cast<int>(b0), static_cast<int>(chunk), nchunks, part_key.data_ptr<float>(),
          part_idx.data_ptr<int>(), tokens.data_ptr<int64_t>(), num_accepted.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    chain_finalize<scalar_t><<<d.B, kThreads, 0, stream>>>(A, nchunks, part_key.data_ptr<float>(),
                                                           part_idx.data_ptr<int>(), tokens.data_ptr<int64_t>(),
                                                           num_accepted.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {tokens, num_accepted};
}

std::tuple<at::Tensor, at::Tensor> verify_chain_greedy_cuda(const at::Tensor& draft_tokens_in,
                                                            const at::Tensor& target_logits_in,
                                                            const std::optional<at::Tensor>& num_draft, bool /*check: the wrapper checked*/) {
  const ChainDims d = check_chain_args(draft_tokens_in, target_logits_in, std::nullopt, num_draft,
                                       "target_logits");
  const c10::cuda::CUDAGuard guard(target_logits_in.device());
  const at::Tensor L = unit_last_stride(target_logits_in);
  const at::Tensor draft_tokens = draft_tokens_in.contiguous();
  check_grid_limit(d.K + 1, kMaxGridYZ + 1, "K+1", "verify_chain_greedy");
  auto opts = draft_tokens.options();
  at::Tensor tokens = at::empty({d.B, d.K + 1}, opts);
  at::Tensor num_accepted = at::empty({d.B}, opts);
  if (d.B == 0) return {tokens, num_accepted};
  const int64_t chunk = chunk_size(d.B * (d.K + 1), d.V, 4 * kThreads, 4 * kThreads);
  const int nchunks = static_cast<int>((d.V + chunk - 1) / chunk);
  at::Tensor part_val = at::empty({d.B, d.K + 1, nchunks}, L.options().dtype(at::kFloat));
  at::Tensor part_idx = at::empty({d.B, d.K + 1, nchunks}, L.options().dtype(at::kInt));
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t* nd = num_draft ? num_draft->data_ptr<int64_t>() : nullptr;
  const int64_t ndS = num_draft ? num_draft->stride(0) : 0;
  SPECDEC_DISPATCH_PROBS(L.scalar_type(), "verify_chain_greedy_cuda", [&] {
    for (int64_t b0 = 0; b0 < d.B; b0 += kMaxGridYZ) {
      const auto rows = static_cast<unsigned>(std::min<int64_t>(kMaxGridYZ, d.B - b0));
      greedy_partial<scalar_t><<<dim3(nchunks, d.K + 1, rows), kThreads, 0, stream>>>(
          L.data_ptr<scalar_t>(), L.stride(0), L.stride(1), nd, ndS, static_cast<int>(d.K),
          static_cast<int>(d.V), static_cast<int>(b0), static_cast<int>(chunk), nchunks,
          part_val.data_ptr<float>(), part_idx.data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  greedy_finalize<<<d.B, 32, 0, stream>>>(draft_tokens.data_ptr<int64_t>(), draft_tokens.stride(0), nd, ndS,
                                          static_cast<int>(d.K), nchunks, part_val.data_ptr<float>(),
                                          part_idx.data_ptr<int>(), tokens.data_ptr<int64_t>(),
                                          num_accepted.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {tokens, num_accepted};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("verify_chain", &cuda::verify_chain_cuda);
  m.impl("verify_chain_greedy", &cuda::verify_chain_greedy_cuda);
}

}  // namespace specdec
