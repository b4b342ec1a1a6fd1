// Chain verification on the CPU: at::parallel_for over requests.
// rule="token": per request only the scalars p_i(x_i), q_i(x_i) of the drafted tokens are read
// until the first rejection; then exactly one row (the residual max(0, p - q) of the rejected
// position, or the bonus row of p) is read in full, and with check=True its sum (and q's) checked
// in that same pass.
// rule="block" (verify_chain_block; spec in specdec_kernels/reference/chain.py): the same scalars
// of every draft, then a row pair only where the downward scan must weigh a position (eta_i < w_i,
// stochastic drafts), then the one raced row.
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
#include "fixed_point.h"
#include "parallel.h"
#include "race.h"

namespace specdec {
namespace {

// Block verification's weighted residual fl32(max(0, w p - q)) (sampling_math.h block_residual), a
// row functor for race_row and residual_words (race.h).
template <typename T>
struct BlockResidual {
  const T* p;
  const T* q;
  float w;
  bool* bad_p = nullptr;
  bool* bad_q = nullptr;
  float at(int64_t v, double* sp = nullptr, double* sq = nullptr) const {
    const float pv = static_cast<float>(p[v]), qv = static_cast<float>(q[v]);
    if (bad_p) {
      if (!prob_ok(pv, kFiniteMax)) *bad_p = true;
      if (sp) *sp += pv;
    }
    if (bad_q) {
      if (!prob_ok(qv, kFiniteMax)) *bad_q = true;
      if (sq) *sq += qv;
    }
    return block_residual(pv, qv, w);
  }
#if SPECDEC_HAVE_AVX2
  SPECDEC_AVX2 __m256 vec(int64_t v, Lanes8& lp, Lanes8& lq) const {
    const __m256 pv = load8(p + v), qv = load8(q + v);
    if (bad_p) lanes8_add<true>(lp, pv);
    if (bad_q) lanes8_add<true>(lq, qv);
    // w p is exact in double, so the fused multiply-subtract rounds once, like block_residual.
    const __m256d s = _mm256_set1_pd(static_cast<double>(w)), zero = _mm256_setzero_pd();
    __m256d lo = _mm256_fmsub_pd(s, _mm256_cvtps_pd(_mm256_castps256_ps128(pv)),
                                 _mm256_cvtps_pd(_mm256_castps256_ps128(qv)));
    __m256d hi = _mm256_fmsub_pd(s, _mm256_cvtps_pd(_mm256_extractf128_ps(pv, 1)),
                                 _mm256_cvtps_pd(_mm256_extractf128_ps(qv, 1)));
    lo = _mm256_and_pd(lo, _mm256_cmp_pd(lo, zero, _CMP_GT_OQ));  // NaN and <= 0 give 0
    hi = _mm256_and_pd(hi, _mm256_cmp_pd(hi, zero, _CMP_GT_OQ));
    return _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
  }
  SPECDEC_AVX2 void report(int64_t V, const Lanes8& lp, double sp, const Lanes8& lq, double sq) const {
    if (bad_p && !lanes8_clean(lp, sp, kFiniteMax) && !row_ok(p, V, kFiniteMax)) *bad_p = true;
    if (bad_q && !lanes8_clean(lq, sq, kFiniteMax) && !row_ok(q, V, kFiniteMax)) *bad_q = true;
  }
#endif
};

// One request of a sampling chain kernel: its rows (p and q of position 0, K stride apart), its
// drafts, its Philox keys and where its results and check=True findings go.
template <typename T>
struct ChainRequest {
  const T* P;  // p rows of this request: row i at P + i * pK
  int64_t pK;
  const T* Q;  // q rows, or nullptr for deterministic drafts
  int64_t qK;
  at::TensorAccessor<int64_t, 1> x;    // drafts
  int64_t* out;                        // tokens row (a fresh contiguous tensor)
  int64_t n, V;                        // drafts of this request, vocabulary
  DrawKey accept_key, sample_key;      // Philox slot 0 (acceptance tests), slot 1 (the race)
  bool check;
  double sum_tol;
  int8_t* err;      // check=True: the request's finding ...
  double* err_sum;  // ... and the sum a kTargetSum / kDraftSum found
};

// check=True: a request's finding, in the order every chain kernel reports them.
inline int8_t chain_finding(bool bad_p, bool zero_mass, bool off_p, bool bad_q, bool off_q) {
  return bad_p ? kTargetBad : zero_mass ? kTargetZeroMass : off_p ? kTargetSum
         : bad_q ? kDraftBad : off_q ? kDraftSum : kChainOk;
}

// What the two sampling chain kernels share: argument checks, outputs, the loop over requests with
// their Philox keys, and the check=True report. `Rule<T>::run(request)` decides one request, writes
// its tokens and returns its accepted count.
template <template <typename> class Rule>
std::tuple<at::Tensor, at::Tensor> chain_kernel(const at::Tensor& draft_tokens, const at::Tensor& target_probs_in,
                                                const std::optional<at::Tensor>& draft_probs_in,
                                                const std::optional<at::Tensor>& num_draft, const at::Tensor& seed,
                                                const at::Tensor& offset, bool row_streams, bool check) {
  const ChainDims d = check_chain_args(draft_tokens, target_probs_in, draft_probs_in, num_draft,
                                       "target_probs");
  check_chain_rng(seed, offset, d.B, target_probs_in);
  const at::Tensor target_probs = unit_last_stride(target_probs_in);
  std::optional<at::Tensor> draft_probs;
  if (draft_probs_in.has_value()) draft_probs = unit_last_stride(*draft_probs_in);
  const int64_t B = d.B, K = d.K, V = d.V;
  at::Tensor tokens = at::full({B, K + 1}, -1, draft_tokens.options());
  at::Tensor num_accepted = at::empty({B}, draft_tokens.options());
  if (B == 0) return {tokens, num_accepted};
  if (check) check_chain_structure(draft_tokens, num_draft, K, V);
  std::vector<int8_t> err(check ? B : 0, kChainOk);
  std::vector<double> err_sum(check ? B : 0, 0.0);
  const double sum_tol = prob_sum_tolerance(target_probs.scalar_type());

  const auto dt = draft_tokens.accessor<int64_t, 2>();
  const int64_t* nd = num_draft.has_value() ? num_draft->data_ptr<int64_t>() : nullptr;
  const int64_t nd_stride = num_draft.has_value() ? num_draft->stride(0) : 0;
  const RowStream rng{seed.data_ptr<int64_t>(), seed.stride(0), offset.data_ptr<int64_t>(), offset.stride(0),
                      row_streams};
  int64_t* out = tokens.data_ptr<int64_t>();
  int64_t* nacc = num_accepted.data_ptr<int64_t>();

  SPECDEC_DISPATCH_PROBS(target_probs.scalar_type(), "verify_chain_cpu", [&] {
    const scalar_t* P = target_probs.data_ptr<scalar_t>();
    const scalar_t* Q = draft_probs.has_value() ? draft_probs->data_ptr<scalar_t>() : nullptr;
    const int64_t pB = target_probs.stride(0), pK = target_probs.stride(1);
    const int64_t qB = Q ? draft_probs->stride(0) : 0, qK = Q ? draft_probs->stride(1) : 0;
    parallel_requests(B, [&](int64_t b) {
      nacc[b] = Rule<scalar_t>::run(ChainRequest<scalar_t>{
          P + b * pB, pK, Q ? Q + b * qB : nullptr, qK, dt[b], out + b * (K + 1),
          nd ? std::clamp<int64_t>(nd[b * nd_stride], 0, K) : K, V,
          row_draw_key(rng, b, 0), row_draw_key(rng, b, 1), check, sum_tol,
          check ? &err[b] : nullptr, check ? &err_sum[b] : nullptr});
    });
  });
  if (check) raise_chain_value_error(err.data(), B, err_sum.data(), target_probs.scalar_type());
  return {tokens, num_accepted};
}

// rule="token" (docs/algorithms.md §1). check=True: every probability read is validated as it is
// read (the scalars of the tested drafts, the raced row and its sum); rows never read cannot change
// the result and cost nothing.
template <typename T>
struct TokenRule {
  static int64_t run(const ChainRequest<T>& r) {
    const int64_t n = r.n, V = r.V;
    bool bad_p = false, bad_q = false;
    bool* fp = r.check ? &bad_p : nullptr;
    bool* fq = r.check && r.Q ? &bad_q : nullptr;
    int64_t a = 0;
    for (; a < n; ++a) {
      const int64_t x = r.x[a];
      if (x < 0 || x >= V) break;  // unchecked out-of-range draft: reject, never read it
      const float p = static_cast<float>(r.P[a * r.pK + x]);
      const float q = r.Q ? static_cast<float>(r.Q[a * r.qK + x]) : 1.f;
      if (r.check) {
        bad_p |= !prob_ok(p, kFiniteMax);
        bad_q |= !prob_ok(q, kFiniteMax);
      }
      if (!accept_draft(draw_uniform(r.accept_key, static_cast<uint32_t>(a)), p, q)) break;
      r.out[a] = x;
    }
    const T* prow = r.P + a * r.pK;
    RowSums sums;  // check=True: the sums of the rows raced (p, and q after a stochastic rejection)
    RowSums* fs = r.check ? &sums : nullptr;
    int64_t y;
    if (a == n) {
      y = race_row(RowP<T>{prow, fp}, V, r.sample_key, fs);
    } else {
      if (r.Q) {
        y = race_row(RowResidual<T>{prow, r.Q + a * r.qK, fp, fq}, V, r.sample_key, fs);
      } else {
        y = race_row(RowWithout<T>{prow, r.x[a], fp}, V, r.sample_key, fs);
      }
      // Residual of zero mass (p == q on the support, or p one-hot at the rejected draft):
      // a measure-zero event for valid inputs; fall back to p itself.
      if (y < 0) y = race_row(RowP<T>{prow}, V, r.sample_key);
    }
    r.out[a] = y < 0 ? 0 : y;
    if (r.check) {
      const bool off_p = std::abs(sums.p - 1.0) > r.sum_tol;
      const bool off_q = r.Q && a < n && std::abs(sums.q - 1.0) > r.sum_tol;
      *r.err = chain_finding(bad_p, y < 0, off_p, bad_q, off_q);
      *r.err_sum = *r.err == kTargetSum ? sums.p : sums.q;
    }
    return a;
  }
};

std::tuple<at::Tensor, at::Tensor> verify_chain_cpu(const at::Tensor& draft_tokens, const at::Tensor& target_probs,
                                                    const std::optional<at::Tensor>& draft_probs,
                                                    const std::optional<at::Tensor>& num_draft,
                                                    const at::Tensor& seed, const at::Tensor& offset,
                                                    bool row_streams, bool check) {
  return chain_kernel<TokenRule>(draft_tokens, target_probs, draft_probs, num_draft, seed, offset, row_streams,
                                 check);
}

// Weigh position i of the downward scan: block_accept(eta, m_i, w) with m_i the exact fixed-point
// mass of the weighted residual row f, computed cheaply. The decision is m_i > t = eta (1 - w) /
// (1 - eta) in exact arithmetic; a plain float64 sum (row_sum, a quarter of the fixed-point pass's
// arithmetic; the pass is compute-bound, the row pair is read at well below copy bandwidth) is
// within 1e-9 m_i of the exact mass for V < 2^21 (and the fixed-point truncation within V 2^-64),
// so when it is further than that from t (with a 1e-9 relative margin that no rounding of
// block_accept's few float64 operations can cross), the decision is block_accept's on the exact
// mass. Otherwise (a near-tie) the exact pass decides. Same results as the reference, bit for bit.
// The sum stops reading the row once it is certain to exceed t (a partial sum s with
// s (1 - 1e-9) > t (1 + 1e-9) + 1e-12 passes the test below, and the whole sum is larger).
template <typename F>
bool block_weigh(const F& f, int64_t V, float eta, float w, RowSums* sums) {
  const double e = static_cast<double>(eta);
  const double t = e * (1.0 - static_cast<double>(w)) / (1.0 - e);
  const double approx = row_sum(f, V, sums, (t * (1.0 + 1e-9) + 1e-12) / (1.0 - 1e-9));
  const double slack = 1e-9 * (approx + t) + 1e-12;
  if (approx - slack > t) return true;
  if (approx + slack < t) return false;
  int64_t hi = 0, lo = 0;
  residual_words(f, V, hi, lo, nullptr);
  return block_accept(eta, fixed_point_value(hi, lo), w);
}

// rule="block" (docs/algorithms.md §9). check=True as for rule "token": the values read are
// validated as they are read, and every row read whole (the raced row, the weighed row pairs that
// are not cut short) has its sums checked.
template <typename T>
struct BlockRule {
  static int64_t run(const ChainRequest<T>& r) {
    const int64_t n = r.n, V = r.V;
    const T* P = r.P;
    const T* Q = r.Q;
    bool bad_p = false, bad_q = false;
    bool* fp = r.check ? &bad_p : nullptr;
    bool* fq = r.check && Q ? &bad_q : nullptr;
    // check=True: the first sum found off 1 among the rows read whole, for p and for q.
    bool off_p = false, off_q = false;
    double sum_p = 0.0, sum_q = 0.0;
    auto judge = [&](const RowSums& s, bool with_q) {
      if (!s.read) return;
      if (!off_p && std::abs(s.p - 1.0) > r.sum_tol) off_p = true, sum_p = s.p;
      if (with_q && !off_q && std::abs(s.q - 1.0) > r.sum_tol) off_q = true, sum_q = s.q;
    };
    // The scalars of every valid draft and the running weights w_0..w_n (0 from the first
    // out-of-range draft on: it is never read). Per-thread scratch: no allocation per request.
    static thread_local std::vector<float> px, qx, w;
    px.resize(n);
    qx.resize(n);
    w.assign(n + 1, 0.f);
    w[0] = 1.f;
    int64_t valid = 0;
    for (; valid < n; ++valid) {
      const int64_t x = r.x[valid];
      if (x < 0 || x >= V) break;
      px[valid] = static_cast<float>(P[valid * r.pK + x]);
      qx[valid] = Q ? static_cast<float>(Q[valid * r.qK + x]) : 1.f;
      if (r.check) {
        bad_p |= !prob_ok(px[valid], kFiniteMax);
        bad_q |= !prob_ok(qx[valid], kFiniteMax);
      }
      w[valid + 1] = block_weight(w[valid], px[valid], qx[valid]);
    }
    // tau, scanning down from n: tau = n costs nothing more; a step down to i reads row pair i
    // only when eta_i < w_i (h_i <= w_i); deterministic drafts never read a row here.
    int64_t tau = 0;
    if (n == 0 || (valid == n && block_accept_all(draw_uniform(r.accept_key, static_cast<uint32_t>(n - 1)),
                                                  qx[n - 1], w[n - 1], px[n - 1]))) {
      tau = n;
    } else {
      for (int64_t i = n - 1; i >= 1; --i) {
        const float eta = draw_uniform(r.accept_key, static_cast<uint32_t>(i - 1));
        if (!(eta < w[i])) continue;
        bool stop;
        if (w[i] == 1.f) {
          stop = true;  // h_i = 1: den = m_i, and eta m_i < m_i (or m_i = 0 = den): no row read
        } else if (Q) {
          RowSums sums;
          stop = block_weigh(BlockResidual<T>{P + i * r.pK, Q + i * r.qK, w[i], fp, fq}, V, eta, w[i],
                             r.check ? &sums : nullptr);
          if (r.check) judge(sums, true);
        } else {
          stop = block_accept(eta, block_onehot_mass(w[i], i < valid ? px[i] : 0.f), w[i]);
        }
        if (stop) {
          tau = i;
          break;
        }
      }
    }
    for (int64_t a = 0; a < tau; ++a) r.out[a] = r.x[a];
    const T* prow = P + tau * r.pK;
    RowSums sums;
    RowSums* fs = r.check ? &sums : nullptr;
    int64_t y;
    if (tau == n) {
      y = race_row(RowP<T>{prow, fp}, V, r.sample_key, fs);
    } else {
      const T* qrow = Q ? Q + tau * r.qK : nullptr;
      if (!Q) {
        y = race_row(RowWithout<T>{prow, r.x[tau], fp}, V, r.sample_key, fs);
      } else if (tau == 0) {
        y = race_row(RowResidual<T>{prow, qrow, fp, fq}, V, r.sample_key, fs);
      } else {
        y = race_row(BlockResidual<T>{prow, qrow, w[tau], fp, fq}, V, r.sample_key, fs);
      }
      // A residual of zero mass: a measure-zero event for valid inputs; fall back to p itself.
      if (y < 0) y = race_row(RowP<T>{prow}, V, r.sample_key);
    }
    r.out[tau] = y < 0 ? 0 : y;
    if (r.check) {
      judge(sums, Q && tau < n);
      *r.err = chain_finding(bad_p, y < 0, off_p, bad_q, off_q);
      *r.err_sum = *r.err == kTargetSum ? sum_p : sum_q;
    }
    return tau;
  }
};

std::tuple<at::Tensor, at::Tensor> verify_chain_block_cpu(const at::Tensor& draft_tokens,
                                                          const at::Tensor& target_probs,
                                                          const std::optional<at::Tensor>& draft_probs,
                                                          const std::optional<at::Tensor>& num_draft,
                                                          const at::Tensor& seed, const at::Tensor& offset,
                                                          bool row_streams, bool check) {
  return chain_kernel<BlockRule>(draft_tokens, target_probs, draft_probs, num_draft, seed, offset, row_streams,
                                 check);
}

std::tuple<at::Tensor, at::Tensor> verify_chain_greedy_cpu(
    const at::Tensor& draft_tokens, const at::Tensor& target_logits_in,
    const std::optional<at::Tensor>& num_draft, bool check) {
  const ChainDims d = check_chain_args(draft_tokens, target_logits_in, std::nullopt, num_draft,
                                       "target_logits");
  const at::Tensor logits = unit_last_stride(target_logits_in);
  const int64_t B = d.B, K = d.K, V = d.V;
  at::Tensor tokens = at::full({B, K + 1}, -1, draft_tokens.options());
  at::Tensor num_accepted = at::empty({B}, draft_tokens.options());
  if (B == 0) return {tokens, num_accepted};
  if (check) check_chain_structure(draft_tokens, num_draft, K, V);
  std::vector<int8_t> err(check ? B : 0, kChainOk);
  const auto dt = draft_tokens.accessor<int64_t, 2>();
  const int64_t* nd = num_draft.has_value() ? num_draft->data_ptr<int64_t>() : nullptr;
  const int64_t nd_stride = num_draft.has_value() ? num_draft->stride(0) : 0;
  auto out = tokens.accessor<int64_t, 2>();
  int64_t* nacc = num_accepted.data_ptr<int64_t>();
  SPECDEC_DISPATCH_PROBS(logits.scalar_type(),
                                  "verify_chain_greedy_cpu", [&] {
    const scalar_t* L = logits.data_ptr<scalar_t>();
    const int64_t sB = logits.stride(0), sK = logits.stride(1);
    parallel_requests(B, [&](int64_t b) {
      const int64_t n = nd ? std::clamp<int64_t>(nd[b * nd_stride], 0, K) : K;
      int64_t a = 0;
      for (;; ++a) {
        // Argmax with ties to the smallest index; NaN never wins (and is reported by check=True
        // in the rows the argmax reads).
        bool nan = false;
        const int64_t arg = argmax_row(L + b * sB + a * sK, V, check ? &nan : nullptr);
        if (nan) err[b] = kLogitsNaN;
        if (a == n || dt[b][a] != arg) {
          out[b][a] = arg;
          break;
        }
        out[b][a] = arg;
      }
      nacc[b] = a;
    });
  });
  if (check) raise_chain_value_error(err.data(), B);
  return {tokens, num_accepted};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("verify_chain", &verify_chain_cpu);
  m.impl("verify_chain_block", &verify_chain_block_cpu);
  m.impl("verify_chain_greedy", &verify_chain_greedy_cpu);
}

}  // namespace specdec
