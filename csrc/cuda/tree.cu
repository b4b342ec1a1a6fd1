// Tree verification, attention masks and position ids on CUDA.
//
// verify_tree / verify_tree_greedy: one thread block per request. The walk from the root is
// inherently sequential (which child is tested next depends on every earlier decision), so the
// block walks it as a unit: every thread holds the same walk state in registers and takes the
// same branches, and the block only spreads out for the parts that are parallel -- finding the
// children of a node (a chunk of blockDim candidate indices at a time), prefetching their tokens,
// p(x), q(x) and acceptance uniforms, and the passes over the vocabulary.
//
// Bytes per request: an accepted node costs only the scalars p(x), q(x) of its children; a full
// row pass happens only after a stochastic rejection that is followed by another sibling (the new
// residual mass) and once at the end (the race for the correction or bonus token). The residual is
// never stored: each pass recomputes fl32(max(0, p - C q)) from p and q, so there is no [V]
// temporary, no global scratch and one launch per op.
//
// Bit-identity with the sequential CPU loop (specdec_kernels/reference/tree.py is the spec): the
// per-element arithmetic is the shared code of common/tree_math.h; the mass is a sum of 2^-64
// fixed-point words in int64, which is exact and so independent of the block's reduction order;
// the race winner depends only on per-element keys (ties to the smaller index). The set S of
// rejected sibling tokens is kept as a list in shared memory (at most one entry per rejected
// child) behind a bitmap prefilter, never as a [V] mask.
//
// tree_attention_mask / tree_position_ids: one thread per (request, node) walking up its
// ancestors; trees are shallow and the outputs are written once.
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
constexpr int kWarps = kThreads / 32;
// Rejected sibling tokens kept in shared memory (4 KiB). A node with more rejected children than
// this (only possible for very wide trees) keeps working: membership of the rest is decided by
// rescanning those siblings in global memory.
constexpr int kListCap = 1024;
// 8192-bit prefilter of S: most vocabulary entries are decided by one shared-memory bit test.
constexpr int kBitWords = 256;

struct RaceBetter {
  __device__ bool operator()(float k, int i, float bk, int bi) const { return race_better(k, i, bk, bi); }
};

// Argmax with ties to the smaller index (values are NaN-free by the time they are compared).
struct MaxBetter {
  __device__ bool operator()(float v, int i, float bv, int bi) const {
    return v > bv || (v == bv && i < bi);
  }
};

// The tokens rejected so far at the current node (only when they are excluded: one-hot drafts, or
// stochastic drafts without replacement). Every thread holds an identical copy of the scalars.
struct RemovedSet {
  const int* list;        // shared, min(n, kListCap) entries, distinct
  const unsigned* bits;   // shared prefilter: bit (v mod 8192) set for every member
  int n;                  // members, including those that did not fit in the list
  int64_t ovf_from;       // first child whose token did not fit (-1: none)
  int64_t upto;           // children below this index have been processed
  const int64_t* par;     // parents / tokens row of the request, for the overflow rescan
  int64_t parS;
  const int64_t* tok;
  int64_t tokS;
  int64_t node;

  __device__ bool contains(int v) const {
    if (n == 0) return false;
    if (((bits[(v >> 5) & (kBitWords - 1)] >> (v & 31)) & 1u) == 0u) return false;
    const int m = n < kListCap ? n : kListCap;
    for (int k = 0; k < m; ++k)
      if (list[k] == v) return true;
    // Excluded siblings are exactly the in-range tokens of the earlier children (an accepted child
    // ends the node, a duplicate is already a member), so the overflow is a rescan of them.
    if (ovf_from >= 0)
      for (int64_t j = ovf_from; j < upto; ++j)
        if (par[j * parS] == node && tok[j * tokS] == v) return true;
    return false;
  }
};

// Called by every thread with identical arguments (block-uniform control flow).
__device__ __forceinline__ void add_removed(RemovedSet& S, int x, int64_t child, int* list, unsigned* bits) {
  if (threadIdx.x == 0) {
    if (S.n < kListCap) list[S.n] = x;
    bits[(x >> 5) & (kBitWords - 1)] |= 1u << (x & 31);
  }
  if (S.n >= kListCap && S.ovf_from < 0) S.ovf_from = child;
  ++S.n;
  __syncthreads();  // the next membership test may run on any thread
}

template <typename T>
__device__ __forceinline__ void load_group(const T* prow, const T* qrow, bool vec, int64_t e0, int V,
                                          float p[4], float q[4]) {
  if (vec && e0 + 4 <= V) {
    load4(prow + e0, p);
    if (qrow) {
      load4(qrow + e0, q);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) q[j] = 0.f;
    }
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      p[j] = e0 + j < V ? load1(prow + e0 + j) : 0.f;
      q[j] = (qrow && e0 + j < V) ? load1(qrow + e0 + j) : 0.f;
    }
  }
}

// Block-stride visit of one row in groups of 4 (one Philox block each; elements past V read as 0),
// two groups per thread and iteration with both loads issued before either is used. Each thread
// sees its groups in increasing index order.
template <typename T, typename F>
__device__ __forceinline__ void for_each_group(const T* prow, const T* qrow, int V, F&& f) {
  const bool vec = aligned4(prow) && aligned4(qrow);
  const int64_t stride = 4 * static_cast<int64_t>(blockDim.x);
  for (int64_t e0 = 4 * static_cast<int64_t>(threadIdx.x); e0 < V; e0 += 2 * stride) {
    const int64_t e1 = e0 + stride;
    float p0[4], q0[4], p1[4], q1[4];
    load_group(prow, qrow, vec, e0, V, p0, q0);
    if (e1 < V) load_group(prow, qrow, vec, e1, V, p1, q1);
    f(static_cast<int>(e0), p0, q0);
    if (e1 < V) f(static_cast<int>(e1), p1, q1);
  }
}

// Mass of the residual fl32(max(0, p - scale q)) without S, in 2^-64 fixed point (stochastic
// drafts only: one-hot masses are updated by subtraction).
template <typename T>
__device__ double residual_mass(const T* prow, const T* qrow, float scale, int V, const RemovedSet& S) {
  int64_t hi = 0, lo = 0;
  for_each_group(prow, qrow, V, [&](int e0, const float* p, const float* q) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float r = tree_residual(p[j], q[j], scale);  // 0 past V (p = q = 0 there)
      if (r > 0.f && !S.contains(e0 + j)) fixed_point_add(r, hi, lo);
    }
  });
  block_allreduce_sum2(hi, lo);
  return fixed_point_value(hi, lo);
}

// Exponential race over r = fl32(max(0, p - scale q)) (qrow != nullptr) or r = p, zeroed on S
// (S != nullptr). Returns the winner to every thread, -1 when no key is positive.
template <typename T>
__device__ int race_row(const T* prow, const T* qrow, float scale, int V, const DrawKey& key,
                        const RemovedSet* S) {
  __shared__ int s_win;
  float best = 0.f;
  int best_idx = INT_MAX;
  const bool has_q = qrow != nullptr;
  for_each_group(prow, qrow, V, [&](int e0, const float* p, const float* q) {
    float r[4];
    bool any = false;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      r[j] = has_q ? tree_residual(p[j], q[j], scale) : p[j];
      if (S != nullptr && r[j] > 0.f && S->contains(e0 + j)) r[j] = 0.f;
      any |= r[j] > 0.f;
    }
    if (!any) return;  // 40 multiplies of Philox saved for groups that cannot win
    const Philox4 w = draw_block(key, static_cast<uint32_t>(e0) >> 2);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float k = race_key(r[j], word_to_uniform(pick_word(w, static_cast<uint32_t>(j))));
      if (k > best) {  // ascending per thread: ties keep the smaller index
        best = k;
        best_idx = e0 + j;
      }
    }
  });
  block_reduce_pair(best, best_idx, RaceBetter{});
  if (threadIdx.x == 0) s_win = best > 0.f ? best_idx : -1;
  __syncthreads();
  return s_win;
}

// torch.argmax of the row with NaN read as -inf (the reference's rule): first maximum, and an
// all -inf / NaN row gives 0. Returned to every thread.
template <typename T>
__device__ int row_argmax(const T* row, int V) {
  __shared__ int s_arg;
  float best = -INFINITY;
  int best_idx = INT_MAX;
  for_each_group(row, static_cast<const T*>(nullptr), V, [&](int e0, const float* v, const float*) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (e0 + j >= V) break;
      const float x = isnan(v[j]) ? -INFINITY : v[j];
      if (MaxBetter{}(x, e0 + j, best, best_idx)) {
        best = x;
        best_idx = e0 + j;
      }
    }
  });
  block_reduce_pair(best, best_idx, MaxBetter{});
  if (threadIdx.x == 0) s_arg = best_idx == INT_MAX ? 0 : best_idx;
  __syncthreads();
  return s_arg;
}

__device__ __forceinline__ int64_t valid_count(const int64_t* num_nodes, int64_t nnS, int64_t b, int64_t N) {
  if (num_nodes == nullptr) return N;
  const int64_t n = num_nodes[b * nnS];
  return n < 1 ? 1 : (n > N ? N : n);
}

// Tokens [a+1, N) and nodes [a, N) of the row are -1.
__device__ __forceinline__ void fill_tail(int64_t* row_tok, int64_t* row_nodes, int64_t a, int64_t N) {
  for (int64_t j = a + 1 + threadIdx.x; j < N; j += blockDim.x) row_tok[j] = -1;
  for (int64_t j = a + threadIdx.x; j < N; j += blockDim.x) row_nodes[j] = -1;
}

template <typename T>
struct TreeArgs {
  const int64_t* tokens;
  int64_t tB, tN;
  const int64_t* parents;
  int64_t pB, pN;
  const T* P;
  int64_t PB, PN;
  const T* Q;  // nullptr: deterministic (one-hot) drafts; for greedy: unused
  int64_t QB, QN;
  const int64_t* num_nodes;  // nullptr: N for every row
  int64_t nnS;
  const int64_t* seed;
  int64_t seedS;
  const int64_t* offset;
  int64_t offS;
  bool row_streams;
  bool replacement;
  int64_t N;
  int V;
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    verify_tree_kernel(TreeArgs<T> A, int64_t* out_tok, int64_t* out_acc, int64_t* out_nodes) {
  const int64_t b = blockIdx.x;
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  // Per chunk of candidate children: token, p(x), q(x), acceptance uniform, found-child ballots.
  __shared__ int64_t s_tok[kThreads];
  __shared__ float s_p[kThreads], s_q[kThreads], s_u[kThreads];
  __shared__ unsigned s_mask[kWarps];
  __shared__ int s_list[kListCap];
  __shared__ unsigned s_bits[kBitWords];

  const int64_t N = A.N;
  const int V = A.V;
  const int64_t n_valid = valid_count(A.num_nodes, A.nnS, b, N);
  const int64_t* par = A.parents + b * A.pB;
  const int64_t* tok = A.tokens + b * A.tB;
  const RowStream rng{A.seed, A.seedS, A.offset, A.offS, A.row_streams};
  const DrawKey key_accept = row_draw_key(rng, b, 0);
  const DrawKey key_sample = row_draw_key(rng, b, 1);
  const bool has_q = A.Q != nullptr;
  const bool exclude = !has_q || !A.replacement;
  int64_t* row_tok = out_tok + b * N;
  int64_t* row_nodes = out_nodes + b * N;

  int64_t node = 0, a = 0;
  int y = 0;
  for (;;) {
    const T* prow = A.P + b * A.PB + node * A.PN;
    const T* qrow = has_q ? A.Q + b * A.QB + node * A.QN : nullptr;
    __syncthreads();  // the previous node's membership tests are done
    for (int w = t; w < kBitWords; w += blockDim.x) s_bits[w] = 0u;
    __syncthreads();
    RemovedSet S{s_list, s_bits, 0, -1, node + 1, par, A.pN, tok, A.tN, node};
    float scale = 0.f;
    double mass = 1.0, q_sum = 0.0;
    bool fresh = true, any_child = false;
    int64_t chosen = -1, chosen_tok = -1;
    for (int64_t base = node + 1; base < n_valid && chosen < 0; base += blockDim.x) {
      const int64_t i = base + t;
      bool child = false;
      if (i < n_valid && par[i * A.pN] == node) {
        child = true;
        const int64_t x = tok[i * A.tN];
        float px = 0.f, qx = 0.f;
        if (x >= 0 && x < V) {  // an unchecked out-of-range token is rejected without a read
          px = load1(prow + x);
          if (has_q) qx = load1(qrow + x);
        }
        s_tok[t] = x;
        s_p[t] = px;
        s_q[t] = qx;
        s_u[t] = draw_uniform(key_accept, static_cast<uint32_t>(i - 1));
      }
      const unsigned found = __ballot_sync(kFullMask, child);
      if (lane == 0) s_mask[warp] = found;
      __syncthreads();
      // The children of this chunk in increasing index order (= draw order), decided identically by
      // every thread from shared values.
      for (int w = 0; w < kWarps && chosen < 0; ++w) {
        for (unsigned m = s_mask[w]; m != 0u; m &= m - 1u) {
          const int j = w * 32 + __ffs(static_cast<int>(m)) - 1;
          const int64_t ci = base + j;
          any_child = true;
          const int64_t x = s_tok[j];
          if (x < 0 || x >= V) continue;  // rejected unread, state unchanged
          S.upto = ci;
          if (exclude && S.contains(static_cast<int>(x))) continue;
          if (!fresh) {
            mass = residual_mass(prow, qrow, scale, V, S);
            fresh = true;
          }
          const float px = s_p[j], qx = s_q[j];
          const float rx = has_q ? tree_residual(px, qx, scale) : px;
          const float u = s_u[j];
          const bool ok = has_q ? tree_accept(u, qx, rx, mass, A.replacement ? 1.0 : 1.0 - q_sum)
                                : tree_accept_onehot(u, rx, mass);
          if (ok) {
            chosen = ci;
            chosen_tok = x;
            break;
          }
          if (!has_q) {
            mass = mass - static_cast<double>(rx);
          } else if (A.replacement) {
            scale = tree_next_scale(scale, mass, 1.0);
            fresh = false;
          } else {
            scale = tree_next_scale(scale, mass, 1.0 - q_sum);  // den before adding q(x)
            q_sum = q_sum + static_cast<double>(qx);
            fresh = false;
          }
          if (exclude) add_removed(S, static_cast<int>(x), ci, s_list, s_bits);
        }
      }
      __syncthreads();  // the next chunk overwrites s_tok, s_p, s_q, s_u, s_mask
    }
    if (chosen >= 0) {
      if (t == 0) {
        row_tok[a] = chosen_tok;
        row_nodes[a] = chosen;
      }
      ++a;
      node = chosen;
      continue;
    }
    if (!any_child) {  // leaf: bonus token from p
      y = race_row(prow, static_cast<const T*>(nullptr), 0.f, V, key_sample, nullptr);
    } else {  // every child rejected: correction from the final residual
      S.upto = n_valid;
      y = race_row(prow, qrow, scale, V, key_sample, &S);
      // Residual of zero mass: measure zero for valid inputs, so this second pass is off the fast path.
      if (y < 0) y = race_row(prow, static_cast<const T*>(nullptr), 0.f, V, key_sample, nullptr);
    }
    break;
  }
  if (t == 0) {
    row_tok[a] = y < 0 ? 0 : y;
    out_acc[b] = a;
  }
  fill_tail(row_tok, row_nodes, a, N);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    verify_tree_greedy_kernel(TreeArgs<T> A, int64_t* out_tok, int64_t* out_acc, int64_t* out_nodes) {
  const int64_t b = blockIdx.x;
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  __shared__ unsigned s_mask[kWarps];
  const int64_t N = A.N;
  const int64_t n_valid = valid_count(A.num_nodes, A.nnS, b, N);
  const int64_t* par = A.parents + b * A.pB;
  const int64_t* tok = A.tokens + b * A.tB;
  int64_t* row_tok = out_tok + b * N;
  int64_t* row_nodes = out_nodes + b * N;
  int64_t node = 0, a = 0;
  int best = 0;
  for (;;) {
    // Only the rows on the accepted path are read (depth + 1 passes); the argmax of a row does not
    // depend on anything else, so the walk needs no other state.
    best = row_argmax(A.P + b * A.PB + node * A.PN, A.V);
    int64_t found = -1;
    for (int64_t base = node + 1; base < n_valid && found < 0; base += blockDim.x) {
      const int64_t i = base + t;
      const bool match = i < n_valid && par[i * A.pN] == node && tok[i * A.tN] == best;
      const unsigned m = __ballot_sync(kFullMask, match);
      if (lane == 0) s_mask[warp] = m;
      __syncthreads();
      for (int w = 0; w < kWarps; ++w) {
        const unsigned mw = s_mask[w];
        if (mw != 0u) {  // first matching child = lowest index
          found = base + w * 32 + __ffs(static_cast<int>(mw)) - 1;
          break;
        }
      }
      __syncthreads();  // s_mask is rewritten by the next chunk
    }
    if (found < 0) break;
    if (t == 0) {
      row_tok[a] = best;
      row_nodes[a] = found;
    }
    ++a;
    node = found;
  }
  if (t == 0) {
    row_tok[a] = best;
    out_acc[b] = a;
  }
  fill_tail(row_tok, row_nodes, a, N);
}

// Node i of request b and its ancestors; padding nodes (i >= n_valid) only themselves, and an
// invalid parent link (unchecked input) ends the walk, so it always terminates.
template <typename F>
__device__ __forceinline__ int64_t walk_up(const int64_t* par, int64_t pN, int64_t i, int64_t n_valid, F&& visit) {
  visit(i);
  if (i >= n_valid) return 0;
  int64_t depth = 0;
  for (int64_t cur = i; cur > 0;) {
    const int64_t p = par[cur * pN];
    if (p < 0 || p >= cur) break;
    visit(p);
    ++depth;
    cur = p;
  }
  return depth;
}

__global__ void __launch_bounds__(kThreads)
    tree_mask_kernel(const int64_t* parents, int64_t pB, int64_t pN, const int64_t* num_nodes, int64_t nnS,
                     int64_t B, int64_t N, int64_t W, bool* mask, uint32_t* words) {
  const int64_t total = B * N;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = idx / N, i = idx - b * N;
    const int64_t n_valid = valid_count(num_nodes, nnS, b, N);
    // Row i of the output belongs to this thread alone: plain read-modify-write, no atomics.
    if (words != nullptr) {
      uint32_t* row = words + idx * W;
      walk_up(parents + b * pB, pN, i, n_valid, [&](int64_t j) { row[j >> 5] |= 1u << (j & 31); });
    } else {
      bool* row = mask + idx * N;
      walk_up(parents + b * pB, pN, i, n_valid, [&](int64_t j) { row[j] = true; });
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    tree_positions_kernel(const int64_t* parents, int64_t pB, int64_t pN, const int64_t* num_nodes,
                          int64_t nnS, const int64_t* prefix, int64_t prS, int64_t B, int64_t N,
                          int64_t* out) {
  const int64_t total = B * N;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = idx / N, i = idx - b * N;
    const int64_t n_valid = valid_count(num_nodes, nnS, b, N);
    out[idx] = prefix[b * prS] + walk_up(parents + b * pB, pN, i, n_valid, [](int64_t) {});
  }
}

unsigned grid_for(int64_t total) {
  // Grid-stride loops: a bounded grid covers any B * N.
  return static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 20));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_cuda(
    const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& target_probs_in,
    const std::optional<at::Tensor>& draft_probs_in, const std::optional<at::Tensor>& num_nodes,
    bool replacement, const at::Tensor& seed, const at::Tensor& offset, bool row_streams, bool /*check: the wrapper checked*/) {
  const TreeDims d = check_tree_verify_args(tokens, parents, target_probs_in, draft_probs_in, num_nodes,
                                            "target_probs");
  check_chain_rng(seed, offset, d.B, target_probs_in);
  const c10::cuda::CUDAGuard guard(target_probs_in.device());
  const at::Tensor P = unit_last_stride(target_probs_in);
  std::optional<at::Tensor> Q;
  if (draft_probs_in.has_value()) Q = unit_last_stride(*draft_probs_in);
  const auto opts = tokens.options();
  at::Tensor out_tok = at::empty({d.B, d.N}, opts);
  at::Tensor num_accepted = at::empty({d.B}, opts);
  at::Tensor out_nodes = at::empty({d.B, d.N}, opts);
  if (d.B == 0) return {out_tok, num_accepted, out_nodes};
  const auto stream = at::cuda::getCurrentCUDAStream();
  SPECDEC_DISPATCH_PROBS(P.scalar_type(), "verify_tree_cuda", [&] {
    const TreeArgs<scalar_t> A{tokens.data_ptr<int64_t>(),
                               tokens.stride(0),
                               tokens.stride(1),
                               parents.data_ptr<int64_t>(),
                               parents.stride(0),
                               parents.stride(1),
                               P.data_ptr<scalar_t>(),
                               P.stride(0),
                               P.stride(1),
                               Q ? Q->data_ptr<scalar_t>() : nullptr,
                               Q ? Q->stride(0) : 0,
                               Q ? Q->stride(1) : 0,
                               num_nodes ? num_nodes->data_ptr<int64_t>() : nullptr,
                               num_nodes ? num_nodes->stride(0) : 0,
                               seed.data_ptr<int64_t>(),
                               seed.stride(0),
                               offset.data_ptr<int64_t>(),
                               offset.stride(0),
                               row_streams,
                               replacement,
                               d.N,
                               static_cast<int>(d.V)};
    verify_tree_kernel<scalar_t><<<static_cast<unsigned>(d.B), kThreads, 0, stream>>>(
        A, out_tok.data_ptr<int64_t>(), num_accepted.data_ptr<int64_t>(), out_nodes.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out_tok, num_accepted, out_nodes};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_greedy_cuda(
    const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& target_logits_in,
    const std::optional<at::Tensor>& num_nodes, bool /*check: the wrapper checked*/) {
  const TreeDims d = check_tree_verify_args(tokens, parents, target_logits_in, std::nullopt, num_nodes,
                                            "target_logits");
  const c10::cuda::CUDAGuard guard(target_logits_in.device());
  const at::Tensor L = unit_last_stride(target_logits_in);
  const auto opts = tokens.options();
  at::Tensor out_tok = at::empty({d.B, d.N}, opts);
  at::Tensor num_accepted = at::empty({d.B}, opts);
  at::Tensor out_nodes = at::empty({d.B, d.N}, opts);
  if (d.B == 0) return {out_tok, num_accepted, out_nodes};
  const auto stream = at::cuda::getCurrentCUDAStream();
  SPECDEC_DISPATCH_PROBS(L.scalar_type(), "verify_tree_greedy_cuda", [&] {
    const TreeArgs<scalar_t> A{tokens.data_ptr<int64_t>(),
                               tokens.stride(0),
                               tokens.stride(1),
                               parents.data_ptr<int64_t>(),
                               parents.stride(0),
                               parents.stride(1),
                               L.data_ptr<scalar_t>(),
                               L.stride(0),
                               L.stride(1),
                               nullptr,
                               0,
                               0,
                               num_nodes ? num_nodes->data_ptr<int64_t>() : nullptr,
                               num_nodes ? num_nodes->stride(0) : 0,
                               nullptr,
                               0,
                               nullptr,
                               0,
                               false,
                               false,
                               d.N,
                               static_cast<int>(d.V)};
    verify_tree_greedy_kernel<scalar_t><<<static_cast<unsigned>(d.B), kThreads, 0, stream>>>(
        A, out_tok.data_ptr<int64_t>(), num_accepted.data_ptr<int64_t>(), out_nodes.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out_tok, num_accepted, out_nodes};
}

at::Tensor tree_attention_mask_cuda(const at::Tensor& parents, const std::optional<at::Tensor>& num_nodes,
                                    bool packed) {
  const TreeDims d = check_tree_args(parents, num_nodes);
  const c10::cuda::CUDAGuard guard(parents.device());
  const int64_t W = (d.N + 31) / 32;
  at::Tensor out = packed ? at::zeros({d.B, d.N, W}, parents.options().dtype(at::kInt))
                          : at::zeros({d.B, d.N, d.N}, parents.options().dtype(at::kBool));
  if (d.B == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  tree_mask_kernel<<<grid_for(d.B * d.N), kThreads, 0, stream>>>(
      parents.data_ptr<int64_t>(), parents.stride(0), parents.stride(1),
      num_nodes ? num_nodes->data_ptr<int64_t>() : nullptr, num_nodes ? num_nodes->stride(0) : 0, d.B, d.N, W,
      packed ? nullptr : out.data_ptr<bool>(),
      packed ? reinterpret_cast<uint32_t*>(out.data_ptr<int32_t>()) : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor tree_position_ids_cuda(const at::Tensor& parents, const at::Tensor& prefix_len,
                                  const std::optional<at::Tensor>& num_nodes) {
  const TreeDims d = check_tree_args(parents, num_nodes);
  check_row_param(prefix_len, d.B, at::kLong, "prefix_len", parents);
  const c10::cuda::CUDAGuard guard(parents.device());
  at::Tensor out = at::empty({d.B, d.N}, parents.options());
  if (d.B == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  tree_positions_kernel<<<grid_for(d.B * d.N), kThreads, 0, stream>>>(
      parents.data_ptr<int64_t>(), parents.stride(0), parents.stride(1),
      num_nodes ? num_nodes->data_ptr<int64_t>() : nullptr, num_nodes ? num_nodes->stride(0) : 0,
      prefix_len.data_ptr<int64_t>(), prefix_len.stride(0), d.B, d.N, out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("verify_tree", &cuda::verify_tree_cuda);
  m.impl("verify_tree_greedy", &cuda::verify_tree_greedy_cuda);
  m.impl("tree_attention_mask", &cuda::tree_attention_mask_cuda);
  m.impl("tree_position_ids", &cuda::tree_position_ids_cuda);
}

}  // namespace specdec
