// Tree ops on the CPU (docs/algorithms.md §4-5; arithmetic spec in specdec_kernels/reference/tree.py):
// at::parallel_for over requests. verify_tree walks the tree from the root; a node whose first
// child is accepted costs two scalar reads. Full passes over V happen only where the math needs
// them: the exact mass of the residual after a stochastic rejection that another sibling follows,
// and the one final race (correction or bonus). The residual is recomputed from p and q in each
// pass (closed form), so nothing of size V is ever stored.
// verify_tree_block (rule="block", Traversal Verification; spec in the same docstring) walks the
// tree in post-order on an explicit stack of per-node states (weight, scale, mass, removed tokens):
// the scalars of every child reached, a row pair pass only where a deletion's new mass is needed,
// then the one race. Nothing of size V is stored there either.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/checks.h"
#include "../common/philox.h"
#include "../common/sampling_math.h"
#include "../common/tree_math.h"
#include "fixed_point.h"
#include "parallel.h"
#include "race.h"

namespace specdec {
namespace {

bool contains(const std::vector<int64_t>& s, int64_t x) {
  return std::find(s.begin(), s.end(), x) != s.end();
}

// The residual of one node after `scale` worth of rejections, fl32(max(0, p - scale q)) (p itself
// for one-hot drafts), with the tokens of `removed` (rejected siblings drawn without replacement,
// or rejected one-hot drafts) at zero when it is given.
template <typename T>
struct TreeResidual {
  const T* p;
  const T* q;  // nullptr: one-hot drafts
  float scale;
  const std::vector<int64_t>* removed;  // nullptr: nothing removed
  bool* bad_p = nullptr;  // check=True: set when a value read is not in [0, 1]
  bool* bad_q = nullptr;

  // sp, sq: the row sums of check=True (race.h RowSums, Lanes8), for the passes over whole rows.
  float at(int64_t v, double* sp = nullptr, double* sq = nullptr) const {
    const float pv = static_cast<float>(p[v]);
    const float qv = q ? static_cast<float>(q[v]) : 0.f;
    if (bad_p) {
      if (!prob_ok(pv, 1.f)) *bad_p = true;
      if (sp) *sp += pv;
    }
    if (q && bad_q) {
      if (!prob_ok(qv, 1.f)) *bad_q = true;
      if (sq) *sq += qv;
    }
    if (removed && contains(*removed, v)) return 0.f;
    return q ? tree_residual(pv, qv, scale) : pv;
  }
#if SPECDEC_HAVE_AVX2
  SPECDEC_AVX2 __m256 vec(int64_t v, Lanes8& lp, Lanes8& lq) const {
    __m256 r = load8(p + v);
    if (bad_p) lanes8_add<true>(lp, r);
    if (q) {
      // tree_residual eight lanes at a time: scale * q is exact in double, so the fused
      // multiply-subtract rounds once, like the scalar difference.
      const __m256 qv = load8(q + v);
      if (bad_q) lanes8_add<true>(lq, qv);
      const __m256d s = _mm256_set1_pd(static_cast<double>(scale)), zero = _mm256_setzero_pd();
      __m256d lo = _mm256_fnmadd_pd(s, _mm256_cvtps_pd(_mm256_castps256_ps128(qv)),
                                    _mm256_cvtps_pd(_mm256_castps256_ps128(r)));
      __m256d hi = _mm256_fnmadd_pd(s, _mm256_cvtps_pd(_mm256_extractf128_ps(qv, 1)),
                                    _mm256_cvtps_pd(_mm256_extractf128_ps(r, 1)));
      lo = _mm256_and_pd(lo, _mm256_cmp_pd(lo, zero, _CMP_GT_OQ));  // NaN and <= 0 give 0
      hi = _mm256_and_pd(hi, _mm256_cmp_pd(hi, zero, _CMP_GT_OQ));
      r = _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
    }
    if (removed) {
      for (const int64_t s : *removed) {
        if (s >= v && s < v + 8) {
          const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
          const __m256i hit = _mm256_cmpeq_epi32(lane, _mm256_set1_epi32(static_cast<int>(s - v)));
          r = _mm256_andnot_ps(_mm256_castsi256_ps(hit), r);
        }
      }
    }
    return r;
  }
  SPECDEC_AVX2 void report(int64_t V, const Lanes8& lp, double sp, const Lanes8& lq, double sq) const {
    if (bad_p && !lanes8_clean(lp, sp, 1.f) && !row_ok(p, V, 1.f)) *bad_p = true;
    if (q && bad_q && !lanes8_clean(lq, sq, 1.f) && !row_ok(q, V, 1.f)) *bad_q = true;
  }
#endif
};

// The next child of `node` after index `after` (children are the later valid nodes whose parent is
// node, in index order), or -1.
int64_t next_child(const int64_t* par, int64_t par_stride, int64_t node, int64_t after, int64_t n_valid) {
  for (int64_t i = std::max(after, node) + 1; i < n_valid; ++i) {
    if (par[i * par_stride] == node) return i;
  }
  return -1;
}

int64_t valid_count(const int64_t* nn, int64_t nn_stride, int64_t b, int64_t N) {
  return nn ? std::clamp<int64_t>(nn[b * nn_stride], 1, N) : N;
}

// Exact mass of a node's residual f: the integer sums of its fixed-point words over the row pair,
// minus the words of f's removed tokens (the same words, so the difference is exact too). The pass
// itself ignores the set: testing every element against it would cost |S| compares per eight
// elements, the subtraction |S| scalar reads. `fs` (check=True): the rows' sums.
template <typename T>
double residual_mass(TreeResidual<T> f, int64_t V, RowSums* fs) {
  const std::vector<int64_t>* removed = f.removed;
  f.removed = nullptr;
  int64_t hi = 0, lo = 0;
  residual_words(f, V, hi, lo, fs);
  if (removed) {
    for (const int64_t s : *removed) {
      int64_t shi = 0, slo = 0;
      fixed_point_add(f.at(s), shi, slo);
      hi -= shi;
      lo -= slo;
    }
  }
  return fixed_point_value(hi, lo);
}

// check=True findings on one node's rows: the flags of the values read (prob_ok, set by the row
// functors) and the sums of the rows a pass read whole.
struct NodeChecks {
  bool bad_p = false, bad_q = false;
  RowSums sums;
  // The node's first finding into e, unless e holds one already: a bad value of p, a row of zero
  // mass, a row read whole whose sum is off 1 (q's only where the pass read q), a bad value of q.
  void note(TreeValueError& e, int64_t node, bool zero, bool read_q, double sum_tol) const {
    if (e.code != kChainOk) return;
    const bool off_p = sums.read && std::abs(sums.p - 1.0) > sum_tol;
    const bool off_q = sums.read && read_q && std::abs(sums.q - 1.0) > sum_tol;
    const int8_t code = bad_p ? kTargetBad : zero ? kTargetZeroMass : off_p ? kTargetSum
                        : bad_q ? kDraftBad : off_q ? kDraftSum : kChainOk;
    if (code != kChainOk) e = {code, node, code == kTargetSum ? sums.p : sums.q};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_cpu(
    const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& target_probs_in,
    const std::optional<at::Tensor>& draft_probs_in, const std::optional<at::Tensor>& num_nodes,
    bool replacement, const at::Tensor& seed, const at::Tensor& offset, bool row_streams, bool check) {
  const TreeDims d = check_tree_verify_args(tokens, parents, target_probs_in, draft_probs_in, num_nodes,
                                            "target_probs");
  check_chain_rng(seed, offset, d.B, target_probs_in);
  const at::Tensor target_probs = unit_last_stride(target_probs_in);
  std::optional<at::Tensor> draft_probs;
  if (draft_probs_in.has_value()) draft_probs = unit_last_stride(*draft_probs_in);
  const int64_t B = d.B, N = d.N, V = d.V;
  at::Tensor out = at::full({B, N}, -1, tokens.options());
  at::Tensor out_nodes = at::full({B, N}, -1, tokens.options());
  at::Tensor num_accepted = at::empty({B}, tokens.options());
  if (B == 0) return {out, num_accepted, out_nodes};
  if (check) check_tree_structure(tokens, parents, num_nodes, V, !replacement);
  // check=True: the probabilities are validated as the walk reads them (the tested children's
  // scalars, the mass passes, the final race; the sum of each row a pass reads whole); rows of
  // nodes off the walk are never read.
  std::vector<TreeValueError> err(check ? B : 0);
  const double sum_tol = prob_sum_tolerance(target_probs.scalar_type());

  const auto tok = tokens.accessor<int64_t, 2>();
  const auto par = parents.accessor<int64_t, 2>();
  const int64_t* nn = num_nodes.has_value() ? num_nodes->data_ptr<int64_t>() : nullptr;
  const int64_t nn_stride = num_nodes.has_value() ? num_nodes->stride(0) : 0;
  const RowStream rng{seed.data_ptr<int64_t>(), seed.stride(0), offset.data_ptr<int64_t>(), offset.stride(0),
                      row_streams};
  auto o_tok = out.accessor<int64_t, 2>();
  auto o_nodes = out_nodes.accessor<int64_t, 2>();
  int64_t* nacc = num_accepted.data_ptr<int64_t>();
  const bool stochastic = draft_probs.has_value();
  const bool exclude = !stochastic || !replacement;

  SPECDEC_DISPATCH_PROBS(target_probs.scalar_type(), "verify_tree_cpu", [&] {
    const scalar_t* P = target_probs.data_ptr<scalar_t>();
    const scalar_t* Q = stochastic ? draft_probs->data_ptr<scalar_t>() : nullptr;
    const int64_t pB = target_probs.stride(0), pN = target_probs.stride(1);
    const int64_t qB = Q ? draft_probs->stride(0) : 0, qN = Q ? draft_probs->stride(1) : 0;
    parallel_requests(B, [&](int64_t b) {
      static thread_local std::vector<int64_t> removed;
      const int64_t n_valid = valid_count(nn, nn_stride, b, N);
      const DrawKey accept_key = row_draw_key(rng, b, 0);
      const DrawKey sample_key = row_draw_key(rng, b, 1);
      const int64_t* prow_par = &par[b][0];
      const int64_t par_stride = parents.stride(1);
      int64_t node = 0, a = 0, y = -1;
      while (true) {
        const scalar_t* p = P + b * pB + node * pN;
        const scalar_t* q = Q ? Q + b * qB + node * qN : nullptr;
        NodeChecks nc;  // check=True: this node's findings, its rows' sums once a pass read them whole
        bool* fp = check ? &nc.bad_p : nullptr;
        bool* fq = check && q ? &nc.bad_q : nullptr;
        RowSums* fs = check ? &nc.sums : nullptr;
        // check=True: the first bad row read on the walk, a row of zero mass, or a row read whole
        // whose sum is off 1 (q's only where the pass read q) is reported.
        auto note = [&](bool zero, bool read_q) {
          if (check) nc.note(err[b], node, zero, read_q, sum_tol);
        };
        int64_t child = next_child(prow_par, par_stride, node, node, n_valid);
        if (child < 0) {  // leaf: bonus token from p
          y = race_row(RowP<scalar_t>{p, fp, 1.f}, V, sample_key, fs);
          note(y < 0, false);
          break;
        }
        float scale = 0.f;
        double mass = 1.0, q_sum = 0.0;
        bool fresh = true;
        removed.clear();
        auto residual = [&](int64_t v) -> float {
          return TreeResidual<scalar_t>{p, q, scale, nullptr, fp, fq}.at(v);
        };
        int64_t chosen = -1;
        for (; child >= 0; child = next_child(prow_par, par_stride, node, child, n_valid)) {
          const int64_t x = tok[b][child];
          if (x < 0 || x >= V || (exclude && contains(removed, x))) continue;
          if (!fresh) {
            mass = residual_mass(TreeResidual<scalar_t>{p, q, scale, &removed, fp, fq}, V, fs);
            fresh = true;
          }
          const float r_x = residual(x);  // x is not excluded here
          const float u = draw_uniform(accept_key, static_cast<uint32_t>(child - 1));
          const bool ok = q ? tree_accept(u, static_cast<float>(q[x]), r_x, mass,
                                          replacement ? 1.0 : 1.0 - q_sum)
                            : tree_accept_onehot(u, r_x, mass);
          if (ok) {
            chosen = child;
            break;
          }
          if (!q) {
            removed.push_back(x);
            mass -= static_cast<double>(r_x);
          } else if (replacement) {
            scale = tree_next_scale(scale, mass, 1.0);
            fresh = false;
          } else {
            scale = tree_next_scale(scale, mass, 1.0 - q_sum);
            q_sum += static_cast<double>(static_cast<float>(q[x]));
            removed.push_back(x);
            fresh = false;
          }
        }
        if (chosen >= 0) {
          note(false, q != nullptr);
          o_tok[b][a] = tok[b][chosen];
          o_nodes[b][a] = chosen;
          ++a;
          node = chosen;
          continue;
        }
        y = race_row(TreeResidual<scalar_t>{p, q, scale, removed.empty() ? nullptr : &removed, fp, fq}, V,
                     sample_key, fs);
        // Residual of zero mass: measure zero for valid inputs; fall back to p.
        if (y < 0) y = race_row(RowP<scalar_t>{p}, V, sample_key);
        note(y < 0, q != nullptr);
        break;
      }
      o_tok[b][a] = y < 0 ? 0 : y;
      nacc[b] = a;
    });
  });
  if (check) raise_tree_value_error(err.data(), B, "target_probs", target_probs.scalar_type());
  return {out, num_accepted, out_nodes};
}

// One node of verify_tree_block's walk (the reference's visit()): its weight w (the probability
// that what is left of its subtree accepts), the closed-form residual (scale, removed tokens, the
// mass of the residual and Q_S), the child being walked, and its check=True findings. Kept on an
// explicit stack, one frame per level of the path from the root: a chain of N nodes is N levels,
// too deep to trust to recursion, and each frame is a few scalars plus the removed tokens (at most
// one per child), never anything of size V.
struct BlockFrame {
  int64_t node = 0;
  int64_t cursor = 0;  // the last child taken (the node itself before the first)
  double w = 0.0, mass = 1.0, q_sum = 0.0;
  float scale = 0.f;
  // A stochastic deletion whose new mass R' is not computed yet: w and mass still hold the values
  // before it, which the weight update needs with R'. R' costs a pass over the row pair, and only
  // the next child's weight or the node's own test reads it; the root has no test, so when its
  // last children are deleted (every draft rejected, the usual end of a round) the one race is
  // its only full read, as in verify_tree.
  bool pending = false;
  bool moved = false;  // a deletion moved the residual off p: the race reads r (and q), not p alone
  // The child being walked: its token and r(x), kept for its deletion (the node's scale and S do
  // not change while the child's subtree is walked, so the values are still those of r).
  int64_t x = 0;
  float r_x = 0.f;
  std::vector<int64_t> removed;  // S: capacity kept across requests (the frames are reused)
  NodeChecks checks;

  void reset(int64_t n, double weight) {
    node = cursor = n;
    w = weight;
    mass = 1.0;
    q_sum = 0.0;
    scale = 0.f;
    pending = moved = false;
    removed.clear();
    checks = NodeChecks{};
  }
};

// The weight after a deletion moved the mass from `mass` to `mass1` (both > 0 or mass1 = 0):
// m = (w R') / R, w' = m / (m + (1 - w)). Every operand of the addition is a quotient or a
// difference, never a bare product, so no FMA contraction can change a rounding.
inline double block_next_weight(double w, double mass, double mass1) {
  const double m = (w * mass1) / mass;
  const double den = m + (1.0 - w);
  return den > 0.0 ? m / den : 0.0;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_block_cpu(
    const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& target_probs_in,
    const std::optional<at::Tensor>& draft_probs_in, const std::optional<at::Tensor>& num_nodes,
    bool replacement, const at::Tensor& seed, const at::Tensor& offset, bool row_streams, bool check) {
  const TreeDims d = check_tree_verify_args(tokens, parents, target_probs_in, draft_probs_in, num_nodes,
                                            "target_probs");
  check_chain_rng(seed, offset, d.B, target_probs_in);
  const at::Tensor target_probs = unit_last_stride(target_probs_in);
  std::optional<at::Tensor> draft_probs;
  if (draft_probs_in.has_value()) draft_probs = unit_last_stride(*draft_probs_in);
  const int64_t B = d.B, N = d.N, V = d.V;
  at::Tensor out = at::full({B, N}, -1, tokens.options());
  at::Tensor out_nodes = at::full({B, N}, -1, tokens.options());
  at::Tensor num_accepted = at::empty({B}, tokens.options());
  if (B == 0) return {out, num_accepted, out_nodes};
  if (check) check_tree_structure(tokens, parents, num_nodes, V, !replacement);
  // check=True as in verify_tree_cpu: the values are validated as the walk reads them, the sums of
  // each row a pass reads whole; rows of nodes the walk never reads are not. A node's findings are
  // noted when the walk is done with it (post-order: a deleted node when it is deleted, then the
  // accepted path from its last node up to the root), the first one reported.
  std::vector<TreeValueError> err(check ? B : 0);
  const double sum_tol = prob_sum_tolerance(target_probs.scalar_type());

  const auto tok = tokens.accessor<int64_t, 2>();
  const auto par = parents.accessor<int64_t, 2>();
  const int64_t* nn = num_nodes.has_value() ? num_nodes->data_ptr<int64_t>() : nullptr;
  const int64_t nn_stride = num_nodes.has_value() ? num_nodes->stride(0) : 0;
  const RowStream rng{seed.data_ptr<int64_t>(), seed.stride(0), offset.data_ptr<int64_t>(), offset.stride(0),
                      row_streams};
  auto o_tok = out.accessor<int64_t, 2>();
  auto o_nodes = out_nodes.accessor<int64_t, 2>();
  int64_t* nacc = num_accepted.data_ptr<int64_t>();
  const bool stochastic = draft_probs.has_value();
  const bool exclude = !stochastic || !replacement;

  SPECDEC_DISPATCH_PROBS(target_probs.scalar_type(), "verify_tree_block_cpu", [&] {
    const scalar_t* P = target_probs.data_ptr<scalar_t>();
    const scalar_t* Q = stochastic ? draft_probs->data_ptr<scalar_t>() : nullptr;
    const int64_t pB = target_probs.stride(0), pN = target_probs.stride(1);
    const int64_t qB = Q ? draft_probs->stride(0) : 0, qN = Q ? draft_probs->stride(1) : 0;
    parallel_requests(B, [&](int64_t b) {
      static thread_local std::vector<BlockFrame> stack;
      const int64_t n_valid = valid_count(nn, nn_stride, b, N);
      // The path from the root has at most n_valid nodes; sized before the walk so that the frame
      // references below stay valid.
      if (static_cast<int64_t>(stack.size()) < n_valid) stack.resize(n_valid);
      const DrawKey accept_key = row_draw_key(rng, b, 0);
      const DrawKey sample_key = row_draw_key(rng, b, 1);
      const int64_t* prow_par = &par[b][0];
      const int64_t par_stride = parents.stride(1);
      auto prow = [&](const BlockFrame& f) { return P + b * pB + f.node * pN; };
      auto qrow = [&](const BlockFrame& f) { return Q ? Q + b * qB + f.node * qN : nullptr; };
      // The node's residual as a row functor, checking what it reads with check=True.
      auto residual = [&](BlockFrame& f) {
        return TreeResidual<scalar_t>{prow(f), qrow(f), f.scale, f.removed.empty() ? nullptr : &f.removed,
                                      check ? &f.checks.bad_p : nullptr, check && Q ? &f.checks.bad_q : nullptr};
      };
      auto note = [&](const BlockFrame& f, bool zero, bool read_q) {
        if (check) f.checks.note(err[b], f.node, zero, read_q, sum_tol);
      };
      // The pending deletion's R' (one pass over the row pair) and the weight it gives.
      auto resolve = [&](BlockFrame& f) {
        if (!f.pending) return;
        f.pending = false;
        const double mass1 = residual_mass(residual(f), V, check ? &f.checks.sums : nullptr);
        f.w = block_next_weight(f.w, f.mass, mass1);
        f.mass = mass1;
      };
      // The subtree of f's child of token x (residual r_x) is deleted: move f's residual on.
      auto delete_child = [&](BlockFrame& f, int64_t x, float r_x) {
        if (f.w <= 0.0 || f.mass <= 0.0) {
          f.w = 0.0;
          return;
        }
        f.moved = true;
        const scalar_t* q = qrow(f);
        if (!q) {  // one-hot drafts: R' = R - r(x), no pass
          f.removed.push_back(x);
          const double mass1 = f.mass - static_cast<double>(r_x);
          f.w = block_next_weight(f.w, f.mass, mass1);
          f.mass = mass1;
          return;
        }
        f.scale = tree_next_scale(f.scale, f.mass, replacement ? f.w : f.w * (1.0 - f.q_sum));
        if (!replacement) {
          f.q_sum += static_cast<double>(static_cast<float>(q[x]));
          f.removed.push_back(x);
        }
        f.pending = true;
      };

      int64_t top = 0;
      stack[0].reset(0, 1.0);
      while (true) {
        BlockFrame& f = stack[top];
        // The next child that is not skipped (out of range, or a token already in S: check=False).
        int64_t child = next_child(prow_par, par_stride, f.node, f.cursor, n_valid), x = -1;
        for (; child >= 0; child = next_child(prow_par, par_stride, f.node, child, n_valid)) {
          x = tok[b][child];
          if (x >= 0 && x < V && !(exclude && contains(f.removed, x))) break;
        }
        if (child >= 0) {
          f.cursor = child;
          resolve(f);
          const float r_x = residual(f).at(x);  // x is not in S here
          double w_c = 0.0;
          if (f.w > 0.0 && f.mass > 0.0) {
            const scalar_t* q = qrow(f);
            // Products and quotients only (1 - Q_S is a difference of its own): nothing to contract.
            const double num = q ? (f.w * static_cast<double>(r_x)) * (replacement ? 1.0 : 1.0 - f.q_sum)
                                 : f.w * static_cast<double>(r_x);
            const double den = q ? f.mass * static_cast<double>(static_cast<float>(q[x])) : f.mass;
            // num <= 0 (only from rounding: earlier siblings' q summing past 1) deletes untested
            w_c = !(num > 0.0) ? 0.0 : num < den ? num / den : 1.0;
          }
          if (w_c > 0.0) {  // walk the child's subtree
            f.x = x;
            f.r_x = r_x;
            stack[++top].reset(child, w_c);
          } else {  // weight 0: the subtree is deleted untested, its rows never read
            delete_child(f, x, r_x);
          }
          continue;
        }
        if (top == 0) break;  // every child of the root deleted: the root is accepted
        resolve(f);
        const float u = draw_uniform(accept_key, static_cast<uint32_t>(f.node - 1));
        if (static_cast<double>(u) < f.w) break;  // accepted
        note(f, false, Q != nullptr);
        BlockFrame& parent = stack[--top];
        delete_child(parent, parent.x, parent.r_x);
      }
      // stack[1..top] is the accepted path; the token comes from the race at its last node.
      for (int64_t a = 1; a <= top; ++a) {
        o_tok[b][a - 1] = tok[b][stack[a].node];
        o_nodes[b][a - 1] = stack[a].node;
      }
      BlockFrame& f = stack[top];
      const scalar_t* p = prow(f);
      RowSums* fs = check ? &f.checks.sums : nullptr;
      int64_t y;
      if (f.moved) {
        y = race_row(residual(f), V, sample_key, fs);
        // Residual of zero mass: measure zero for valid inputs; fall back to p.
        if (y < 0) y = race_row(RowP<scalar_t>{p}, V, sample_key);
      } else {  // r = p at an undeleted node: p's row alone, as verify_tree's bonus
        y = race_row(RowP<scalar_t>{p, check ? &f.checks.bad_p : nullptr, 1.f}, V, sample_key, fs);
      }
      note(f, y < 0, Q != nullptr && f.moved);
      for (int64_t a = top - 1; a >= 0; --a) note(stack[a], false, Q != nullptr);
      o_tok[b][top] = y < 0 ? 0 : y;
      nacc[b] = top;
    });
  });
  if (check) raise_tree_value_error(err.data(), B, "target_probs", target_probs.scalar_type());
  return {out, num_accepted, out_nodes};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> verify_tree_greedy_cpu(
    const at::Tensor& tokens, const at::Tensor& parents, const at::Tensor& target_logits_in,
    const std::optional<at::Tensor>& num_nodes, bool check) {
  const TreeDims d = check_tree_verify_args(tokens, parents, target_logits_in, std::nullopt, num_nodes,
                                            "target_logits");
  const at::Tensor logits = unit_last_stride(target_logits_in);
  const int64_t B = d.B, N = d.N, V = d.V;
  at::Tensor out = at::full({B, N}, -1, tokens.options());
  at::Tensor out_nodes = at::full({B, N}, -1, tokens.options());
  at::Tensor num_accepted = at::empty({B}, tokens.options());
  if (B == 0) return {out, num_accepted, out_nodes};
  if (check) check_tree_structure(tokens, parents, num_nodes, V, false);
  std::vector<TreeValueError> err(check ? B : 0);
  const auto tok = tokens.accessor<int64_t, 2>();
  const auto par = parents.accessor<int64_t, 2>();
  const int64_t* nn = num_nodes.has_value() ? num_nodes->data_ptr<int64_t>() : nullptr;
  const int64_t nn_stride = num_nodes.has_value() ? num_nodes->stride(0) : 0;
  auto o_tok = out.accessor<int64_t, 2>();
  auto o_nodes = out_nodes.accessor<int64_t, 2>();
  int64_t* nacc = num_accepted.data_ptr<int64_t>();
  SPECDEC_DISPATCH_PROBS(logits.scalar_type(), "verify_tree_greedy_cpu", [&] {
    const scalar_t* L = logits.data_ptr<scalar_t>();
    const int64_t sB = logits.stride(0), sN = logits.stride(1);
    parallel_requests(B, [&](int64_t b) {
      const int64_t n_valid = valid_count(nn, nn_stride, b, N);
      const int64_t* prow_par = &par[b][0];
      int64_t node = 0, a = 0, best_tok = 0;
      while (true) {
        // Argmax with ties to the smallest index; NaN never wins (check=True reports it in the
        // rows on the walk); an all -inf row gives 0.
        bool nan = false;
        best_tok = argmax_row(L + b * sB + node * sN, V, check ? &nan : nullptr);
        if (nan && err[b].code == kChainOk) err[b] = {kLogitsNaN, node};
        int64_t match = -1;
        for (int64_t c = next_child(prow_par, parents.stride(1), node, node, n_valid); c >= 0;
             c = next_child(prow_par, parents.stride(1), node, c, n_valid)) {
          if (tok[b][c] == best_tok) {
            match = c;
            break;
          }
        }
        if (match < 0) break;
        o_tok[b][a] = best_tok;
        o_nodes[b][a] = match;
        ++a;
        node = match;
      }
      o_tok[b][a] = best_tok;
      nacc[b] = a;
    });
  });
  if (check) raise_tree_value_error(err.data(), B, "target_logits", logits.scalar_type());
  return {out, num_accepted, out_nodes};
}

// Node i's ancestors-or-self, walking up parent links; an invalid link (parent not in [0, i),
// possible only with check=False) ends the walk. Padding nodes see only themselves.
template <typename F>
void walk_up(const int64_t* par, int64_t stride, int64_t i, int64_t n_valid, F visit) {
  visit(i);
  if (i >= n_valid) return;
  while (i > 0) {
    const int64_t pi = par[i * stride];
    if (pi < 0 || pi >= i) return;
    visit(pi);
    i = pi;
  }
}

at::Tensor tree_attention_mask_cpu(const at::Tensor& parents, const std::optional<at::Tensor>& num_nodes,
                                   bool packed) {
  const TreeDims d = check_tree_args(parents, num_nodes);
  const int64_t B = d.B, N = d.N, W = (N + 31) / 32;
  at::Tensor mask = packed ? at::zeros({B, N, W}, parents.options().dtype(at::kInt))
                           : at::zeros({B, N, N}, parents.options().dtype(at::kBool));
  if (B == 0) return mask;
  const auto par = parents.accessor<int64_t, 2>();
  const int64_t* nn = num_nodes.has_value() ? num_nodes->data_ptr<int64_t>() : nullptr;
  const int64_t nn_stride = num_nodes.has_value() ? num_nodes->stride(0) : 0;
  const int64_t ps = parents.stride(1);
  at::parallel_for(0, B * N, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / N, i = r % N;
      const int64_t n_valid = valid_count(nn, nn_stride, b, N);
      if (packed) {
        int32_t* row = mask.data_ptr<int32_t>() + r * W;
        walk_up(&par[b][0], ps, i, n_valid, [&](int64_t j) {
          row[j >> 5] = static_cast<int32_t>(static_cast<uint32_t>(row[j >> 5]) | (1u << (j & 31)));
        });
      } else {
        bool* row = mask.data_ptr<bool>() + r * N;
        walk_up(&par[b][0], ps, i, n_valid, [&](int64_t j) { row[j] = true; });
      }
    }
  });
  return mask;
}

at::Tensor tree_position_ids_cpu(const at::Tensor& parents, const at::Tensor& prefix_len,
                                 const std::optional<at::Tensor>& num_nodes) {
  const TreeDims d = check_tree_args(parents, num_nodes);
  check_row_param(prefix_len, d.B, at::kLong, "prefix_len", parents);
  const int64_t B = d.B, N = d.N;
  at::Tensor pos = at::empty({B, N}, parents.options());
  if (B == 0) return pos;
  const auto par = parents.accessor<int64_t, 2>();
  const int64_t* nn = num_nodes.has_value() ? num_nodes->data_ptr<int64_t>() : nullptr;
  const int64_t nn_stride = num_nodes.has_value() ? num_nodes->stride(0) : 0;
  const int64_t* pre = prefix_len.data_ptr<int64_t>();
  int64_t* out = pos.data_ptr<int64_t>();
  const int64_t ps = parents.stride(1);
  at::parallel_for(0, B * N, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / N, i = r % N;
      int64_t depth = -1;
      walk_up(&par[b][0], ps, i, valid_count(nn, nn_stride, b, N), [&](int64_t) { ++depth; });
      out[r] = pre[b * prefix_len.stride(0)] + depth;
    }
  });
  return pos;
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("verify_tree", &verify_tree_cpu);
  m.impl("verify_tree_block", &verify_tree_block_cpu);
  m.impl("verify_tree_greedy", &verify_tree_greedy_cpu);
  m.impl("tree_attention_mask", &tree_attention_mask_cpu);
  m.impl("tree_position_ids", &tree_position_ids_cpu);
}

}  // namespace specdec
