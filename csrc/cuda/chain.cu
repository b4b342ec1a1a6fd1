// Chain verification on CUDA. Bytes that must move per request: the K drafted tokens, two scalars
// per position up to the first rejection, and ONE full row (the residual max(0, p - q) of the
// rejected position, or the bonus row of p). The row is split across blocks (grid = chunks x B):
// each block recomputes the short acceptance prefix from those scalars (they are L2 hits after the
// first block), races its chunk, and writes one (key, index) partial; a one-block-per-row kernel
// combines the partials. No host synchronisation, no [B, K+1, V] temporaries. Block verification
// (verify_chain_block) decides first, then races on the same grid: see its section below.
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
#include "../common/tree_math.h"
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
__device__ __forceinline__ RowStream row_stream(const ChainArgs<T>& A) {
  return {A.seed, A.seedS, A.offset, A.offS, A.row_streams};
}

// Number of accepted drafts of row b, computed by one warp: lane i tests position i.
template <typename T>
__device__ int accepted_prefix(const ChainArgs<T>& A, int b, int n, const RowStream& rng) {
  const int lane = threadIdx.x & 31;
  const DrawKey key = row_draw_key(rng, b, 0);
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

// kWeighted (block verification, 0 < tau < n): r = block_residual(p, q, weight), not max(0, p - q).
template <bool kWeighted = false>
__device__ __forceinline__ void race_group(bool has_q, int skip, int e0, const DrawKey& key, float r[4],
                                           const float q[4], float& best, int& best_idx,
                                           float weight = 1.f) {
  bool any = false;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    if (has_q) r[j] = kWeighted ? block_residual(r[j], q[j], weight) : fmaxf(0.f, r[j] - q[j]);
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
// best (key, index); index INT_MAX when nothing was positive. kWeighted: r = block_residual(p, q,
// weight) instead of max(0, p - q).
template <typename T, bool kWeighted = false>
__device__ __forceinline__ void race_chunk(const T* prow, const T* qrow, int skip, int lo, int hi,
                                           const DrawKey& key, float& best, int& best_idx,
                                           float weight = 1.f) {
  const bool vec = aligned4(prow) && (qrow == nullptr || aligned4(qrow));
  const int stride = 4 * blockDim.x;
  for (int e0 = lo + 4 * threadIdx.x; e0 < hi; e0 += 2 * stride) {
    const int e1 = e0 + stride;
    float r0[4], q0[4], r1[4], q1[4];
    load_group(prow, qrow, vec, e0, hi, r0, q0);
    if (e1 < hi) load_group(prow, qrow, vec, e1, hi, r1, q1);
    race_group<kWeighted>(qrow != nullptr, skip, e0, key, r0, q0, best, best_idx, weight);
    if (e1 < hi) race_group<kWeighted>(qrow != nullptr, skip, e1, key, r1, q1, best, best_idx, weight);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    chain_race_partial(ChainArgs<T> A, int b0, int chunk, int nchunks, float* part_key, int* part_idx,
                       int64_t* tokens, int64_t* num_accepted) {
  const int b = b0 + static_cast<int>(blockIdx.y), c = blockIdx.x;
  const int n = row_num_draft(A, b);
  const RowStream rng = row_stream(A);
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
  const DrawKey key = row_draw_key(rng, b, 1);
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
    const RowStream rng = row_stream(A);
    const DrawKey key = row_draw_key(rng, b, 1);
    best = 0.f;
    best_idx = INT_MAX;
    race_chunk<T>(A.P + b * A.pB + a * A.pK, nullptr, -1, 0, A.V, key, best, best_idx);
    block_reduce_pair(best, best_idx, RaceBetter{});
    y = best > 0.f ? best_idx : 0;
  }
  if (threadIdx.x == 0) tokens[static_cast<int64_t>(b) * (A.K + 1) + a] = y;
}

// ----------------------------------------------------------------------------------------------
// Block verification (verify_chain_block, docs/algorithms.md §9). Every rounding is fixed by the
// docstring of specdec_kernels/reference/chain.py and computed here by the shared helpers of
// common/sampling_math.h and common/tree_math.h, so the decision is the CPU's bit for bit.
//
// Three launches: block_decide (one thread block per request) finds tau; the race then runs on
// verify_chain's grid of vocabulary chunks (block_race_partial) and verify_chain's chain_finalize
// combines the chunks and falls back to p_tau on a residual of zero mass. Why this shape:
// - The running weights are a rounded float recurrence (not associative), so one thread walks it,
//   but from shared memory: the block first fetches every draft's p(x_i), q(x_i) and eta_i in
//   parallel, so the walk waits on one round of dependent loads, not K. tau = n needs nothing
//   more, and deterministic drafts never do (m_i = w_i (1 - p_i(x_{i+1})) is a scalar).
// - A row pair is read only where the downward scan must weigh a position (eta_i < w_i, since
//   h_i <= w_i) and the scan stops at its first acceptance: about n - tau row pairs, none when the
//   whole block is accepted. Each m_i decides whether the scan goes on, so a mass cannot be spread
//   over blocks without a grid-wide reduction per step; one block sums it in int64 2^-64 fixed
//   point, which is exact, so the block's reduction order cannot change a bit of m_i.
// - The raced row is the one full pass every request pays, so it keeps verify_chain's split grid
//   (at small B a single block racing V = 128k elements would be the latency of the whole op) and
//   with it the identical race: keys from race_key, ties to the smaller index. After a partial
//   acceptance the raced pair is the one block_decide weighed last, so it is mostly an L2 hit.
// - Nothing of size V is stored: each pass recomputes the residual from p and q. The only scratch
//   is two floats per (request, position), w_i and eta_i of the positions to weigh, so that neither
//   the scan nor the race chunks redo the recurrence.

// Per request b, position i = 1..n stored at b * Kp + i - 1 (Kp = max(K, 1)).
struct BlockScratch {
  float* w;    // w_i
  float* eta;  // eta_i where the scan must weigh position i (stochastic drafts, i < n), else 0
  int64_t Kp;
};

// Maximum over the block; every thread gets it.
__device__ __forceinline__ int block_allreduce_max(int v) {
  __shared__ int s_m[32];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, off));
  __syncthreads();  // s_m may still be read by a previous call
  if ((threadIdx.x & 31) == 0) s_m[threadIdx.x >> 5] = v;
  __syncthreads();
  v = s_m[0];
  for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) v = max(v, s_m[w]);
  return v;
}

// m_i: the exact fixed-point sum of r(v) = block_residual(p_i(v), q_i(v), w_i) over the row pair,
// two groups of 4 per thread and iteration in flight as in race_chunk. Returned to every thread.
template <typename T>
__device__ double block_weighted_mass(const T* prow, const T* qrow, float w, int V) {
  int64_t hi = 0, lo = 0;
  const bool vec = aligned4(prow) && aligned4(qrow);
  const int stride = 4 * blockDim.x;
  for (int e0 = 4 * threadIdx.x; e0 < V; e0 += 2 * stride) {
    const int e1 = e0 + stride;
    float p0[4], q0[4], p1[4], q1[4];
    load_group(prow, qrow, vec, e0, V, p0, q0);
    if (e1 < V) load_group(prow, qrow, vec, e1, V, p1, q1);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float r = block_residual(p0[j], q0[j], w);  // 0 past V (p = q = 0 there)
      if (r > 0.f) fixed_point_add(r, hi, lo);
    }
    if (e1 < V) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float r = block_residual(p1[j], q1[j], w);
        if (r > 0.f) fixed_point_add(r, hi, lo);
      }
    }
  }
  block_allreduce_sum2(hi, lo);
  return fixed_point_value(hi, lo);
}

// The largest position in [1, top] marked for weighing (eta > 0 there), 0 if none. Block-uniform.
__device__ __forceinline__ int next_weighed(const float* eta, int top) {
  for (int hi = top; hi >= 1; hi -= static_cast<int>(blockDim.x)) {
    const int pos = hi - static_cast<int>(threadIdx.x);
    const int i = block_allreduce_max(pos >= 1 && eta[pos - 1] > 0.f ? pos : 0);
    if (i > 0) return i;
  }
  return 0;
}

// tau of request blockIdx.x: writes num_accepted, the accepted drafts and -1 after them in tokens
// (chain_finalize writes tokens[b, tau]), and w_i to the scratch for the race.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    block_decide(ChainArgs<T> A, BlockScratch S, int64_t* tokens, int64_t* num_accepted) {
  const int b = blockIdx.x;
  const int n = row_num_draft(A, b);
  const RowStream rng = row_stream(A);
  const DrawKey key = row_draw_key(rng, b, 0);
  // Written by thread 0 and read back by the block in this kernel: plain (coherent) loads only.
  float* const wb = S.w + b * S.Kp;
  float* const eb = S.eta + b * S.Kp;
  __shared__ float s_p[kThreads], s_q[kThreads], s_eta[kThreads];
  __shared__ bool s_ok[kThreads];
  __shared__ int s_tau;
  // Thread 0's walk, carried across chunks of blockDim drafts (j is the 0-based draft index).
  float w = 1.f;        // w_j
  bool dead = false;    // an out-of-range draft was met at or before j: w = 0 from there on
  float eta_n = 0.f;    // the uniform of the tau = n test (element n - 1)
  int tau = n == 0 ? 0 : -1;
  int last = 0;         // deterministic drafts: the largest accepted position
  for (int base = 0; base < n; base += static_cast<int>(blockDim.x)) {
    const int j = base + static_cast<int>(threadIdx.x);
    if (j < n) {
      const int64_t x = A.drafts[b * A.dB + j];
      const bool ok = x >= 0 && x < A.V;  // an unchecked out-of-range draft is never read
      s_ok[threadIdx.x] = ok;
      s_p[threadIdx.x] = ok ? load1(A.P + b * A.pB + j * A.pK + x) : 0.f;
      s_q[threadIdx.x] = (ok && A.Q) ? load1(A.Q + b * A.qB + j * A.qK + x) : 1.f;
      // Position j's eta_j is element j - 1; draft 0 has no position and fetches eta_n instead.
      s_eta[threadIdx.x] = draw_uniform(key, static_cast<uint32_t>(j > 0 ? j - 1 : n - 1));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      const int cnt = min(static_cast<int>(blockDim.x), n - base);
      for (int t = 0; t < cnt; ++t) {
        const int jj = base + t;
        dead = dead || !s_ok[t];
        const float p = dead ? 0.f : s_p[t];  // p_jj(x_{jj+1}), 0 from the first invalid draft on
        const float q = dead ? 1.f : s_q[t];
        if (jj == 0) {
          eta_n = s_eta[0];
        } else {  // position jj < n: h_jj <= w_jj, so eta_jj >= w_jj rejects it unread
          const float eta = s_eta[t];
          const bool weigh = eta < w;
          if (A.Q) {
            eb[jj - 1] = weigh ? eta : 0.f;
          } else if (weigh && block_accept(eta, block_onehot_mass(w, p), w)) {
            last = jj;
          }
        }
        if (jj == n - 1 && !dead && block_accept_all(eta_n, q, w, p)) tau = n;
        w = dead ? 0.f : block_weight(w, p, q);
        wb[jj] = w;
      }
    }
    __syncthreads();  // the next chunk refills s_*
  }
  if (threadIdx.x == 0) s_tau = tau >= 0 ? tau : (A.Q ? -1 : last);
  __syncthreads();
  tau = s_tau;
  if (tau < 0) {  // stochastic drafts, not all accepted: scan down from n - 1
    tau = 0;
    for (int top = n - 1; top >= 1;) {
      const int i = next_weighed(eb, top);
      if (i == 0) break;
      const float wi = wb[i - 1], eta = eb[i - 1];
      const double m = block_weighted_mass(A.P + b * A.pB + i * A.pK, A.Q + b * A.qB + i * A.qK, wi, A.V);
      if (block_accept(eta, m, wi)) {
        tau = i;
        break;
      }
      top = i - 1;
    }
  }
  for (int i = threadIdx.x; i <= A.K; i += blockDim.x)
    tokens[static_cast<int64_t>(b) * (A.K + 1) + i] = i < tau ? A.drafts[b * A.dB + i] : -1;
  if (threadIdx.x == 0) num_accepted[b] = tau;
}

// One chunk of the race of request b after block_decide: p_n (tau = n), rule "token"'s residual
// (tau = 0), the weighted residual r_tau (stochastic, 0 < tau < n) or p_tau without x_{tau+1}
// (deterministic). chain_finalize combines the partials.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    block_race_partial(ChainArgs<T> A, const float* w_scr, int64_t Kp, int b0, int chunk, int nchunks,
                       float* part_key, int* part_idx, const int64_t* num_accepted) {
  const int b = b0 + static_cast<int>(blockIdx.y), c = blockIdx.x;
  const int n = row_num_draft(A, b);
  const int tau = static_cast<int>(num_accepted[b]);
  const bool bonus = tau == n;
  const T* prow = A.P + b * A.pB + tau * A.pK;
  const T* qrow = (!bonus && A.Q) ? A.Q + b * A.qB + tau * A.qK : nullptr;
  int skip = -1;
  if (!bonus && !A.Q) {
    const int64_t x = A.drafts[b * A.dB + tau];
    skip = (x >= 0 && x < A.V) ? static_cast<int>(x) : -1;
  }
  const RowStream rng = row_stream(A);
  const DrawKey key = row_draw_key(rng, b, 1);
  const int lo = c * chunk;
  const int hi = min(A.V, lo + chunk);
  float best = 0.f;
  int best_idx = INT_MAX;
  if (qrow != nullptr && tau > 0) {
    race_chunk<T, true>(prow, qrow, -1, lo, hi, key, best, best_idx, w_scr[b * Kp + tau - 1]);
  } else {
    race_chunk(prow, qrow, skip, lo, hi, key, best, best_idx);
  }
  block_reduce_pair(best, best_idx, RaceBetter{});
  if (threadIdx.x == 0) {
    part_key[static_cast<int64_t>(b) * nchunks + c] = best;
    part_idx[static_cast<int64_t>(b) * nchunks + c] = best_idx;
  }
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

template <typename T>
ChainArgs<T> make_chain_args(const ChainDims& d, const at::Tensor& draft_tokens, const at::Tensor& P,
                             const std::optional<at::Tensor>& Q, const std::optional<at::Tensor>& num_draft,
                             const at::Tensor& seed, const at::Tensor& offset, bool row_streams) {
  return ChainArgs<T>{draft_tokens.data_ptr<int64_t>(),
                      draft_tokens.stride(0),
                      P.data_ptr<T>(),
                      P.stride(0),
                      P.stride(1),
                      Q ? Q->data_ptr<T>() : nullptr,
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
    const auto A = make_chain_args<scalar_t>(d, draft_tokens, P, Q, num_draft, seed, offset, row_streams);
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

std::tuple<at::Tensor, at::Tensor> verify_chain_block_cuda(const at::Tensor& draft_tokens_in,
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
  const int64_t Kp = std::max<int64_t>(d.K, 1);
  at::Tensor scratch = at::empty({2, d.B, Kp}, P.options().dtype(at::kFloat));
  const BlockScratch S{scratch.data_ptr<float>(), scratch.data_ptr<float>() + d.B * Kp, Kp};
  SPECDEC_DISPATCH_PROBS(P.scalar_type(), "verify_chain_block_cuda", [&] {
    const auto A = make_chain_args<scalar_t>(d, draft_tokens, P, Q, num_draft, seed, offset, row_streams);
    block_decide<scalar_t><<<static_cast<unsigned>(d.B), kThreads, 0, stream>>>(
        A, S, tokens.data_ptr<int64_t>(), num_accepted.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t chunk = chunk_size(d.B, d.V, 4 * kThreads, 4 * kThreads);
    const int nchunks = static_cast<int>((d.V + chunk - 1) / chunk);
    at::Tensor part_key = at::empty({d.B, nchunks}, P.options().dtype(at::kFloat));
    at::Tensor part_idx = at::empty({d.B, nchunks}, P.options().dtype(at::kInt));
    // Rows ride on grid.y (at most 65535): larger batches take one launch per slice of rows.
    for (int64_t b0 = 0; b0 < d.B; b0 += kMaxGridYZ) {
      const auto rows = static_cast<unsigned>(std::min<int64_t>(kMaxGridYZ, d.B - b0));
      block_race_partial<scalar_t><<<dim3(nchunks, rows), kThreads, 0, stream>>>(
          A, S.w, Kp, static_cast<int>(b0), static_cast<int>(chunk), nchunks, part_key.data_ptr<float>(),
          part_idx.data_ptr<int>(), num_accepted.data_ptr<int64_t>());
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
  m.impl("verify_chain_block", &cuda::verify_chain_block_cuda);
  m.impl("verify_chain_greedy", &cuda::verify_chain_greedy_cuda);
}

}  // namespace specdec
