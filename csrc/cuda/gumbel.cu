// Gumbel-Top-k and one Stochastic Beam Search step on CUDA; the arithmetic spec is
// specdec_kernels/reference/gumbel.py. Each logit row is read exactly once and no [R, V] noise
// tensor exists: the only per-element work is s = x / T, an online (max, sum exp) for the
// log-normaliser and, for elements that can still enter the top-k, one Philox block per 4
// elements. Two kernels, as in chain.cu:
//   1. topk_partial, grid (chunks, rows): every warp keeps a sorted top-k of (z, index) spread
//      over its lanes and inserts only candidates that beat its k-th best, so after the first few
//      hundred elements almost every element costs a compare and no random numbers (elements with
//      s + kGumbelMax below the k-th best cannot win and skip Philox). The block's warp lists are
//      merged by rank and written as a sorted chunk list, with the chunk's (max, sum exp).
//   2. a one-block-per-row (gumbel_topk) or per-request (stochastic_beam_step) finalize that merges
//      the chunk lists with the same warp lists, combines the log-normaliser partials and, for
//      beam search, the per-beam truncated scores and the cross-beam selection.
// Nothing is synchronised with the host; scratch is O(rows * chunks * k).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <type_traits>

#include "../common/checks.h"
#include "../common/gumbel_math.h"
#include "../common/philox.h"
#include "cuda_common.cuh"

namespace specdec {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kGroup = 4 * kThreads;  // elements one block-wide step covers (4 per thread)
#ifndef SPECDEC_CUDA_MAX_K
#error "SPECDEC_CUDA_MAX_K comes from specdec_kernels/contract/limits.py (setup.py passes it)"
#endif
constexpr int kMaxK = SPECDEC_CUDA_MAX_K;
constexpr uint32_t kEmpty = 0xffffffffu;  // index of an empty list slot: loses every tie

// Indices are kept as uint32 (vocabulary ids < 2^31, beam-search keys w * kk + rank < 2^32);
// topk_better on their int64 values gives the same order.
__device__ __forceinline__ bool better(float z, uint32_t i, float bz, uint32_t bi) {
  return topk_better(z, static_cast<int64_t>(i), bz, static_cast<int64_t>(bi));
}

// A warp's sorted top-k (k <= 32 * KPL): lane l holds positions l*KPL .. l*KPL+KPL-1, so an
// insertion shifts each lane's slots locally and needs one shuffle for the slot crossing lanes.
// (tz, ti), identical in every lane, is the entry at P = the first position >= k - 1 in a lane's
// LAST slot: a compile-time slot keeps the list in registers (a runtime slot index put it in
// local memory). Rejecting what does not beat entry P keeps positions 0..P exact, so the first k
// are; it is the empty slot (-inf, kEmpty) until P + 1 entries are held.
template <int KPL>
struct WarpList {
  float z[KPL];
  uint32_t i[KPL];
  float tz;
  uint32_t ti;
  int src;  // lane holding position P

  __device__ __forceinline__ void init(int k) {
#pragma unroll
    for (int j = 0; j < KPL; ++j) {
      z[j] = -INFINITY;
      i[j] = kEmpty;
    }
    tz = -INFINITY;
    ti = kEmpty;
    src = (k + KPL - 1) / KPL - 1;
  }

  __device__ __forceinline__ void refresh() {
    tz = __shfl_sync(kFullMask, z[KPL - 1], src);
    ti = __shfl_sync(kFullMask, i[KPL - 1], src);
  }

  // Insert a warp-uniform candidate (distinct from every held index); the last slot falls off.
  __device__ __forceinline__ void insert(float cz, uint32_t ci) {
    float pz = __shfl_up_sync(kFullMask, z[KPL - 1], 1);
    uint32_t pi = __shfl_up_sync(kFullMask, i[KPL - 1], 1);
    bool prev_better = (threadIdx.x & 31) == 0 || better(pz, pi, cz, ci);
#pragma unroll
    for (int j = 0; j < KPL; ++j) {
      const float oz = z[j];
      const uint32_t oi = i[j];
      const bool cur_better = better(oz, oi, cz, ci);
      if (!cur_better) {
        z[j] = prev_better ? cz : pz;
        i[j] = prev_better ? ci : pi;
      }
      prev_better = cur_better;
      pz = oz;
      pi = oi;
    }
  }

  // Every lane offers one (z, i) (cand = false: nothing); called by all 32 lanes. Candidates are
  // inserted one at a time, re-tested against the raised threshold: the final set is the top-k
  // of everything offered whatever the order, since a rejected candidate never beats a later,
  // higher, threshold.
  __device__ __forceinline__ void offer(float cz, uint32_t ci, bool cand) {
    bool pend = cand && better(cz, ci, tz, ti);
    unsigned m = __ballot_sync(kFullMask, pend);
    while (m) {
      const int l = __ffs(m) - 1;
      insert(__shfl_sync(kFullMask, cz, l), __shfl_sync(kFullMask, ci, l));
      refresh();
      pend = pend && (threadIdx.x & 31) != l && better(cz, ci, tz, ti);
      m = __ballot_sync(kFullMask, pend);
    }
  }
};

// Online log-sum-exp partials (max, sum exp(s - max)); (-inf, 0) is the empty row.
__device__ __forceinline__ void lse_combine(float& m, float& s, float m2, float s2) {
  const float M = fmaxf(m, m2);
  if (M == -INFINITY) {
    m = M;
    s = 0.f;
    return;
  }
  s = s * expf(m - M) + s2 * expf(m2 - M);
  m = M;
}

__device__ __forceinline__ void warp_lse(float& m, float& s) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(kFullMask, m, off);
    const float s2 = __shfl_xor_sync(kFullMask, s, off);
    lse_combine(m, s, m2, s2);
  }
}

// Block-wide (max, sum); every thread gets the same value (fixed combination order).
__device__ __forceinline__ void block_lse(float& m, float& s) {
  __shared__ float sm[kWarps], ss[kWarps];
  warp_lse(m, s);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
    sm[threadIdx.x >> 5] = m;
    ss[threadIdx.x >> 5] = s;
  }
  __syncthreads();
  m = sm[0];
  s = ss[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) lse_combine(m, s, sm[w], ss[w]);
}

__device__ __forceinline__ float lse_value(float m, float s) { return m == -INFINITY ? m : m + logf(s); }

// Number of entries of a sorted list better than (z, i): a prefix, found by bisection.
__device__ __forceinline__ int count_better(const float* lz, const uint32_t* li, int n, float z, uint32_t i) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (better(lz[mid], li[mid], z, i))
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

// Merge the block's warp lists into its top-k. Each entry's final position is its position in
// its own list plus the count of better entries in the other lists (bisection in shared memory),
// so the merge is fully parallel with no sort. Calls emit(position, z, index) for the
// min(k, #entries) best and returns that count (the same in every thread).
template <int KPL, typename Emit>
__device__ __forceinline__ int block_merge(const WarpList<KPL>& L, int k, Emit emit) {
  constexpr int KC = 32 * KPL;
  __shared__ float sz[kWarps * KC];
  __shared__ uint32_t si[kWarps * KC];
  __shared__ int scnt[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int cnt = 0;
#pragma unroll
  for (int j = 0; j < KPL; ++j) {
    const int p = lane * KPL + j;
    sz[warp * KC + p] = L.z[j];
    si[warp * KC + p] = L.i[j];
    cnt += (p < k && L.i[j] != kEmpty) ? 1 : 0;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) cnt += __shfl_xor_sync(kFullMask, cnt, off);
  if (lane == 0) scnt[warp] = cnt;
  __syncthreads();
  int total = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += scnt[w];
  for (int e = threadIdx.x; e < kWarps * k; e += blockDim.x) {
    const int w = e / k, p = e - w * k;
    if (p >= scnt[w]) continue;
    const float z = sz[w * KC + p];
    const uint32_t i = si[w * KC + p];
    int rank = p;
    for (int w2 = 0; w2 < kWarps && rank < k; ++w2)
      if (w2 != w) rank += count_better(sz + w2 * KC, si + w2 * KC, scnt[w2], z, i);
    if (rank < k) emit(rank, z, i);
  }
  return total < k ? total : k;
}

// Rows are (request b, beam w) pairs: gumbel_topk has W = 1 (row r = request r, element v),
// stochastic_beam_step W beams per request (element w * V + v, Philox key of request b).
template <typename T>
struct ScanArgs {
  const T* L;
  int64_t sB, sW;
  const float* temp;
  int64_t tS;
  const int64_t* seed;
  int64_t seedS;
  const int64_t* offset;
  int64_t offS;
  const bool* mask;  // nullptr: every beam live
  int64_t mB, mW;
  bool row_streams;
  int W, V, kk;  // kk: list length per row
  int64_t chunk;
  int nchunks;
};

template <typename T>
__device__ __forceinline__ bool beam_live(const ScanArgs<T>& A, int64_t b, int w) {
  return A.mask == nullptr || A.mask[b * A.mB + w * A.mW];
}

template <typename T>
__device__ __forceinline__ DrawKey row_key(const ScanArgs<T>& A, int64_t b) {
  return row_draw_key(RowStream{A.seed, A.seedS, A.offset, A.offS, A.row_streams}, b, 0);
}

// Vocabulary ids v0 .. v0+3; ok[j] false outside [0, V) or when the group lies past the chunk.
template <typename T>
__device__ __forceinline__ void load_group(const T* rowp, bool vec, int64_t v0, bool active, int V,
                                           float x[4], bool ok[4]) {
  if (active && vec && v0 >= 0 && v0 + 4 <= V) {
    load4(rowp + v0, x);
#pragma unroll
    for (int j = 0; j < 4; ++j) ok[j] = true;
    return;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t v = v0 + j;
    ok[j] = active && v >= 0 && v < V;
    x[j] = ok[j] ? load1(rowp + v) : 0.f;
  }
}

// One group of 4 consecutive elements (one Philox block: u0 is a multiple of 4 in the shifted
// coordinate u = v + shift, so ebase + u0 is the group's first element).
template <int KPL>
__device__ __forceinline__ void scan_group(WarpList<KPL>& L, const DrawKey& key, uint32_t ebase, int64_t u0,
                                           int64_t v0, const float x[4], const bool ok[4], float temp,
                                           float& m, float& sum) {
  float s[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) s[j] = ok[j] ? scale_logit(x[j], temp) : -INFINITY;
  // One rescale per group instead of per element: 5 exps per 4 elements.
  const float gm = fmaxf(fmaxf(s[0], s[1]), fmaxf(s[2], s[3]));
  if (gm > m) {
    sum *= expf(m - gm);
    m = gm;
  }
  if (m != -INFINITY) sum += (expf(s[0] - m) + expf(s[1] - m)) + (expf(s[2] - m) + expf(s[3] - m));
  // fl(s + g) <= fl(s + kGumbelMax) < tz means z < tz: such an element can neither beat nor tie
  // the k-th best, now or later (the threshold only rises), so its Philox rounds are skipped.
  bool need = false;
#pragma unroll
  for (int j = 0; j < 4; ++j) need |= s[j] != -INFINITY && s[j] + kGumbelMax >= L.tz;
  float z[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
  if (need) {
    const Philox4 r = draw_block(key, (ebase + static_cast<uint32_t>(u0)) >> 2);
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (s[j] != -INFINITY) z[j] = s[j] + gumbel_from_uniform(word_to_uniform(pick_word(r, j)));
  }
  // Once the list is warm almost no group has a candidate: one vote skips the four ballots.
  bool any = false;
#pragma unroll
  for (int j = 0; j < 4; ++j)
    any |= z[j] != -INFINITY && better(z[j], static_cast<uint32_t>(v0 + j), L.tz, L.ti);
  if (!__any_sync(kFullMask, any)) return;
#pragma unroll
  for (int j = 0; j < 4; ++j) L.offer(z[j], static_cast<uint32_t>(v0 + j), z[j] != -INFINITY);
}

template <typename T, int KPL>
__global__ void __launch_bounds__(kThreads)
    topk_partial(ScanArgs<T> A, int64_t r0, float* cand_z, int* cand_i, float2* part) {
  const int64_t row = r0 + blockIdx.y;
  const int c = blockIdx.x;
  const int64_t b = row / A.W;
  const int w = static_cast<int>(row - b * A.W);
  if (!beam_live(A, b, w)) return;  // dead beams are never read; finalize skips them too
  const T* rowp = A.L + b * A.sB + w * A.sW;
  const float temp = A.temp[b * A.tS];
  const DrawKey key = row_key(A, b);
  // Elements w*V + v need not start on a Philox block; iterating over u = v + shift aligns every
  // group of 4 with one block (one Philox call per 4 elements), and the logit loads stay vector
  // loads whenever rowp - shift is 4-element aligned.
  const uint32_t base = static_cast<uint32_t>(w) * static_cast<uint32_t>(A.V);
  const int shift = static_cast<int>(base & 3u);
  const uint32_t ebase = base - static_cast<uint32_t>(shift);
  const bool vec = (reinterpret_cast<uintptr_t>(rowp) - shift * sizeof(T)) % (4 * sizeof(T)) == 0;
  const int64_t lo = c * A.chunk;
  const int64_t hi = min(static_cast<int64_t>(A.V) + shift, lo + A.chunk);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  WarpList<KPL> L;
  L.init(A.kk);
  float m = -INFINITY, sum = 0.f;
  // The loop bound is warp-uniform (ballots need all lanes); both groups' loads are issued before
  // either is scanned, so each thread keeps two loads in flight.
  for (int64_t ub = lo + 128 * warp; ub < hi; ub += 2 * kGroup) {
    const int64_t u0 = ub + 4 * lane, u1 = u0 + kGroup;
    float x0[4], x1[4];
    bool ok0[4], ok1[4];
    load_group(rowp, vec, u0 - shift, u0 < hi, A.V, x0, ok0);
    load_group(rowp, vec, u1 - shift, u1 < hi, A.V, x1, ok1);
    scan_group(L, key, ebase, u0, u0 - shift, x0, ok0, temp, m, sum);
    scan_group(L, key, ebase, u1, u1 - shift, x1, ok1, temp, m, sum);
  }
  block_lse(m, sum);
  const int64_t at = row * A.nchunks + c;
  if (threadIdx.x == 0) part[at] = make_float2(m, sum);
  float* oz = cand_z + at * A.kk;
  int* oi = cand_i + at * A.kk;
  const int n = block_merge(L, A.kk, [&](int p, float z, uint32_t i) {
    oz[p] = z;
    oi[p] = static_cast<int>(i);
  });
  for (int p = n + threadIdx.x; p < A.kk; p += blockDim.x) {
    oz[p] = -INFINITY;
    oi[p] = INT_MAX;
  }
}

// Offer the entries q of a row's chunk lists, flattened ([chunks * kk], sorted per chunk), from
// `first` with stride `step` per 32-entry slice. Two slices are loaded before either is offered
// to keep loads in flight across the (usually empty) ballots.
template <int KPL>
__device__ __forceinline__ void offer_flat(WarpList<KPL>& L, const float* cz, const int* ci, int64_t n,
                                           int64_t first, int64_t step) {
  const int lane = threadIdx.x & 31;
  for (int64_t q0 = first; q0 < n; q0 += 2 * step) {
    const int64_t qa = q0 + lane, qb = qa + step;
    const float za = qa < n ? cz[qa] : -INFINITY;
    const int ia = qa < n ? ci[qa] : INT_MAX;
    const float zb = qb < n ? cz[qb] : -INFINITY;
    const int ib = qb < n ? ci[qb] : INT_MAX;
    L.offer(za, static_cast<uint32_t>(ia), ia != INT_MAX);
    L.offer(zb, static_cast<uint32_t>(ib), ib != INT_MAX);
  }
}

template <typename T, int KPL>
__global__ void __launch_bounds__(kThreads)
    gumbel_finalize(ScanArgs<T> A, const float* cand_z, const int* cand_i, const float2* part, int64_t* tokens,
                    float* log_probs, float* scores) {
  const int64_t r = blockIdx.x;
  const int k = A.kk, C = A.nchunks;
  const int warp = threadIdx.x >> 5;
  float m = -INFINITY, sum = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float2 p = part[r * C + c];
    lse_combine(m, sum, p.x, p.y);
  }
  block_lse(m, sum);
  const float lse = lse_value(m, sum);
  WarpList<KPL> L;
  L.init(k);
  const int64_t n = static_cast<int64_t>(C) * k;
  offer_flat(L, cand_z + r * n, cand_i + r * n, n, 32 * warp, kThreads);
  const T* rowp = A.L + r * A.sB;
  const float temp = A.temp[r * A.tS];
  int64_t* tok = tokens + r * k;
  float* lp = log_probs + r * k;
  float* sc = scores + r * k;
  const int cnt = block_merge(L, k, [&](int p, float z, uint32_t i) {
    // s of the k winners is recomputed from the logits (k scalar loads) rather than carried
    // through the partials, which would double their size.
    tok[p] = i;
    lp[p] = scale_logit(load1(rowp + i), temp) - lse;
    sc[p] = z - lse;
  });
  for (int p = cnt + threadIdx.x; p < k; p += blockDim.x) {
    tok[p] = -1;
    lp[p] = -INFINITY;
    sc[p] = -INFINITY;
  }
}

struct BeamIn {
  const float* phi;
  int64_t phiB, phiW;
  const float* G;
  int64_t GB, GW;
};

// One block per request; warp j handles beams j, j + 8, ...: merges the beam's chunk lists into
// its top-kk by z, finishes lse_w, turns the candidates into (phi', G') and offers them to the
// warp's request list keyed by (G', w * kk + rank): topk_better on that key is exactly the
// (G' desc, beam asc, rank asc) order. The warps' request lists are then merged by rank. A beam's
// (token, phi') are parked in its chunk-0 slots of the scratch (no longer read) for the writer.
template <typename T, int KPL>
__global__ void __launch_bounds__(kThreads)
    beam_finalize(ScanArgs<T> A, BeamIn Bi, int width, float* cand_z, int* cand_i, const float2* part,
                  int64_t* parents, int64_t* tokens, float* log_probs, float* scores) {
  const int64_t b = blockIdx.x;
  const int kk = A.kk, C = A.nchunks, W = A.W;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n = static_cast<int64_t>(C) * kk;
  const float temp = A.temp[b * A.tS];
  WarpList<KPL> req;
  req.init(width);
  for (int w = warp; w < W; w += kWarps) {
    if (!beam_live(A, b, w)) continue;
    const int64_t row = b * W + w;
    WarpList<KPL> L;
    L.init(kk);
    offer_flat(L, cand_z + row * n, cand_i + row * n, n, 0, 32);
    float m = -INFINITY, sum = 0.f;
    for (int c = lane; c < C; c += 32) {
      const float2 p = part[row * C + c];
      lse_combine(m, sum, p.x, p.y);
    }
    warp_lse(m, sum);
    const float lse = lse_value(m, sum);
    const float phi = Bi.phi[b * Bi.phiB + w * Bi.phiW];
    const float G = Bi.G[b * Bi.GB + w * Bi.GW];
    const T* rowp = A.L + b * A.sB + w * A.sW;
    float Gt[KPL], child_phi[KPL];
    bool valid[KPL];
#pragma unroll
    for (int j = 0; j < KPL; ++j) {
      valid[j] = lane * KPL + j < kk && L.i[j] != kEmpty;
      Gt[j] = phi + (L.z[j] - lse);
      child_phi[j] = valid[j] ? phi + (scale_logit(load1(rowp + L.i[j]), temp) - lse) : -INFINITY;
    }
    // Z_w is the Gt of the beam's best child: position 0 (only used when position 0 is valid).
    const float Z = __shfl_sync(kFullMask, Gt[0], 0);
    __syncwarp();  // the warp's reads of this row's chunk lists precede the writes below
    float* pz = cand_z + row * n;
    int* pi = cand_i + row * n;
#pragma unroll
    for (int j = 0; j < KPL; ++j) {
      const int p = lane * KPL + j;
      const float Gp = valid[j] ? truncated_score(G, Z, Gt[j]) : -INFINITY;
      if (valid[j]) {
        pz[p] = child_phi[j];
        pi[p] = static_cast<int>(L.i[j]);
      }
      req.offer(Gp, static_cast<uint32_t>(w) * static_cast<uint32_t>(kk) + static_cast<uint32_t>(p), valid[j]);
    }
  }
  int64_t* par = parents + b * width;
  int64_t* tok = tokens + b * width;
  float* lp = log_probs + b * width;
  float* sc = scores + b * width;
  // block_merge's barrier also orders the parked (token, phi') writes before these reads.
  const int cnt = block_merge(req, width, [&](int p, float g, uint32_t key) {
    const uint32_t w = key / static_cast<uint32_t>(kk), rank = key % static_cast<uint32_t>(kk);
    const int64_t at = (b * W + w) * n + rank;
    par[p] = w;
    tok[p] = cand_i[at];
    lp[p] = cand_z[at];
    sc[p] = g;
  });
  for (int p = cnt + threadIdx.x; p < width; p += blockDim.x) {
    par[p] = -1;
    tok[p] = -1;
    lp[p] = -INFINITY;
    sc[p] = -INFINITY;
  }
}

// Slots per lane: the smallest KPL with k <= 32 * KPL keeps registers and shuffles minimal.
template <typename F>
void with_kpl(int64_t k, F&& f) {
  if (k <= 32)
    f(std::integral_constant<int, 1>{});
  else if (k <= 64)
    f(std::integral_constant<int, 2>{});
  else if (k <= 128)
    f(std::integral_constant<int, 4>{});
  else
    f(std::integral_constant<int, 8>{});
}

template <typename T, int KPL>
void launch_partial(const ScanArgs<T>& A, int64_t rows, float* cz, int* ci, float2* part, cudaStream_t stream) {
  // Rows ride on grid.y (at most 65535): larger batches take one launch per slice of rows.
  for (int64_t r0 = 0; r0 < rows; r0 += kMaxGridYZ) {
    const auto nr = static_cast<unsigned>(std::min<int64_t>(kMaxGridYZ, rows - r0));
    topk_partial<T, KPL><<<dim3(A.nchunks, nr), kThreads, 0, stream>>>(A, r0, cz, ci, part);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// Chunks so that rows * chunks fills the GPU, but at least 16 * kk elements each: the partial
// lists then hold at most 1/16 of the row, which bounds the finalize's merge work.
int64_t list_chunk(int64_t rows, int64_t span, int64_t kk) {
  return chunk_size(rows, span, std::max<int64_t>(kGroup, 16 * kk), kGroup);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gumbel_topk_cuda(const at::Tensor& logits_in,
                                                                const at::Tensor& temperature, int64_t k,
                                                                const at::Tensor& seed,
                                                                const at::Tensor& offset, bool row_streams, bool /*check: the wrapper checked*/) {
  const auto dims = check_gumbel_args(logits_in, temperature, k, seed, offset);
  check_max_k(k, kMaxK, "k", "gumbel_topk");
  const int64_t R = dims.first, V = dims.second;
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor L = unit_last_stride(logits_in);
  const auto fopts = L.options().dtype(at::kFloat);
  at::Tensor tokens = at::empty({R, k}, L.options().dtype(at::kLong));
  at::Tensor log_probs = at::empty({R, k}, fopts);
  at::Tensor scores = at::empty({R, k}, fopts);
  if (R == 0) return {tokens, log_probs, scores};
  const int64_t chunk = list_chunk(R, V, k);
  const int nchunks = static_cast<int>((V + chunk - 1) / chunk);
  at::Tensor cand_z = at::empty({R, nchunks, k}, fopts);
  at::Tensor cand_i = at::empty({R, nchunks, k}, L.options().dtype(at::kInt));
  at::Tensor part = at::empty({R, nchunks, 2}, fopts);
  const auto stream = at::cuda::getCurrentCUDAStream();
  SPECDEC_DISPATCH_PROBS(L.scalar_type(), "gumbel_topk_cuda", [&] {
    const ScanArgs<scalar_t> A{L.data_ptr<scalar_t>(), L.stride(0), 0, temperature.data_ptr<float>(),
                               temperature.stride(0), seed.data_ptr<int64_t>(), seed.stride(0),
                               offset.data_ptr<int64_t>(), offset.stride(0), nullptr, 0, 0, row_streams, 1,
                               static_cast<int>(V), static_cast<int>(k), chunk, nchunks};
    float2* pp = reinterpret_cast<float2*>(part.data_ptr<float>());
    with_kpl(k, [&](auto kpl) {
      constexpr int KPL = decltype(kpl)::value;
      launch_partial<scalar_t, KPL>(A, R, cand_z.data_ptr<float>(), cand_i.data_ptr<int>(), pp, stream);
      gumbel_finalize<scalar_t, KPL><<<static_cast<unsigned>(R), kThreads, 0, stream>>>(
          A, cand_z.data_ptr<float>(), cand_i.data_ptr<int>(), pp, tokens.data_ptr<int64_t>(),
          log_probs.data_ptr<float>(), scores.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {tokens, log_probs, scores};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> stochastic_beam_step_cuda(
    const at::Tensor& logits_in, const at::Tensor& beam_log_probs, const at::Tensor& beam_scores,
    const std::optional<at::Tensor>& beam_mask, int64_t width, const at::Tensor& temperature,
    const at::Tensor& seed, const at::Tensor& offset, bool row_streams, bool /*check: the wrapper checked*/) {
  const BeamDims d = check_beam_args(logits_in, beam_log_probs, beam_scores, beam_mask, width, temperature,
                                     seed, offset);
  check_max_k(width, kMaxK, "width", "stochastic_beam_step");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor L = unit_last_stride(logits_in);
  const auto fopts = L.options().dtype(at::kFloat);
  const auto lopts = L.options().dtype(at::kLong);
  at::Tensor parents = at::empty({d.B, width}, lopts);
  at::Tensor tokens = at::empty({d.B, width}, lopts);
  at::Tensor log_probs = at::empty({d.B, width}, fopts);
  at::Tensor scores = at::empty({d.B, width}, fopts);
  if (d.B == 0) return {parents, tokens, log_probs, scores};
  const int64_t kk = std::min(width, d.V);
  const int64_t rows = d.B * d.W;
  // A beam's first element w * V may sit mid-Philox-block; the shifted coordinate u = v + shift
  // then spans up to V + 3.
  const int64_t span = d.V + ((d.W > 1 && d.V % 4 != 0) ? 3 : 0);
  const int64_t chunk = list_chunk(rows, span, kk);
  const int nchunks = static_cast<int>((span + chunk - 1) / chunk);
  at::Tensor cand_z = at::empty({rows, nchunks, kk}, fopts);
  at::Tensor cand_i = at::empty({rows, nchunks, kk}, L.options().dtype(at::kInt));
  at::Tensor part = at::empty({rows, nchunks, 2}, fopts);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const BeamIn Bi{beam_log_probs.data_ptr<float>(), beam_log_probs.stride(0), beam_log_probs.stride(1),
                  beam_scores.data_ptr<float>(), beam_scores.stride(0), beam_scores.stride(1)};
  const bool* mask = beam_mask ? beam_mask->data_ptr<bool>() : nullptr;
  const int64_t mB = beam_mask ? beam_mask->stride(0) : 0, mW = beam_mask ? beam_mask->stride(1) : 0;
  SPECDEC_DISPATCH_PROBS(L.scalar_type(), "stochastic_beam_step_cuda", [&] {
    const ScanArgs<scalar_t> A{L.data_ptr<scalar_t>(), L.stride(0), L.stride(1), temperature.data_ptr<float>(),
                               temperature.stride(0), seed.data_ptr<int64_t>(), seed.stride(0),
                               offset.data_ptr<int64_t>(), offset.stride(0), mask, mB, mW, row_streams,
                               static_cast<int>(d.W), static_cast<int>(d.V), static_cast<int>(kk), chunk,
                               nchunks};
    float2* pp = reinterpret_cast<float2*>(part.data_ptr<float>());
    with_kpl(kk, [&](auto kpl) {
      constexpr int KPL = decltype(kpl)::value;
      launch_partial<scalar_t, KPL>(A, rows, cand_z.data_ptr<float>(), cand_i.data_ptr<int>(), pp, stream);
    });
    with_kpl(width, [&](auto kpl) {
      constexpr int KPL = decltype(kpl)::value;
      beam_finalize<scalar_t, KPL><<<static_cast<unsigned>(d.B), kThreads, 0, stream>>>(
          A, Bi, static_cast<int>(width), cand_z.data_ptr<float>(), cand_i.data_ptr<int>(), pp,
          parents.data_ptr<int64_t>(), tokens.data_ptr<int64_t>(), log_probs.data_ptr<float>(),
          scores.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {parents, tokens, log_probs, scores};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(specdec, CUDA, m) {
  m.impl("gumbel_topk", &cuda::gumbel_topk_cuda);
  m.impl("stochastic_beam_step", &cuda::stochastic_beam_step_cuda);
}

}  // namespace specdec
