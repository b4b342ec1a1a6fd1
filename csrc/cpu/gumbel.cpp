// Sampling without replacement on the CPU (Gumbel-Top-k, one Stochastic Beam Search step):
// at::parallel_for over rows; each vocabulary row is read once while a sorted list of the k best
// perturbed logits and the online log-sum-exp are kept. Noise is drawn lazily: an element whose
// scaled logit cannot beat the current k-th best even with the largest possible Gumbel value
// (kGumbelMax) costs one division and one exp, not a Philox block and two logs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/checks.h"
#include "../common/gumbel_math.h"
#include "../common/philox.h"
#include "simd.h"

namespace specdec {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Candidate {
  float z;
  int64_t idx;
};

// Offers (z, v) to the sorted list top[0..n) of at most k candidates (z desc, idx asc); a shift
// beats a heap for the small k of tree drafting.
inline void offer_candidate(Candidate* top, int64_t& n, int64_t k, float z, int64_t v) {
  if (n == k && !topk_better(z, v, top[k - 1].z, top[k - 1].idx)) return;
  int64_t pos = n < k ? n++ : k - 1;
  while (pos > 0 && topk_better(z, v, top[pos - 1].z, top[pos - 1].idx)) {
    top[pos] = top[pos - 1];
    --pos;
  }
  top[pos] = {z, v};
}

// One row: its top-k candidates by (z desc, idx asc) and its log-sum-exp of s = x / T.
// `element0` is the Philox element of vocabulary index 0 (w * V for beam w of a request).
template <typename T>
int64_t scan_row(const T* x, int64_t V, float temp, const DrawKey& key, uint64_t element0, int64_t k,
                 Candidate* top, float* lse_out) {
  int64_t n = 0;
  // The sum runs in double: 128K float32 terms added in sequence would lose ~1e-5 relative.
  float m = kNegInf;
  double sum = 0.0;
  uint64_t cached_block = ~uint64_t(0);
  Philox4 words{};
  for (int64_t v = 0; v < V; ++v) {
    const float s = scale_logit(static_cast<float>(x[v]), temp);
    if (s == kNegInf) continue;  // masked token: no probability, never a candidate
    if (s > m) {
      sum = sum * std::exp(static_cast<double>(m) - s) + 1.0;  // exp(-inf) = 0 on the first finite entry
      m = s;
    } else {
      sum += std::exp(s - m);  // float exp: its 1-ulp error does not accumulate
    }
    // Full list: only z > the k-th best can enter (a tie loses to the earlier, smaller index),
    // and z = s + g <= s + kGumbelMax in float32 as well (rounding is monotone).
    if (n == k && !(s + kGumbelMax > top[k - 1].z)) continue;
    const uint64_t e = element0 + static_cast<uint64_t>(v);
    if ((e >> 2) != cached_block) {
      cached_block = e >> 2;
      words = draw_block(key, static_cast<uint32_t>(cached_block));
    }
    offer_candidate(top, n, k, s + gumbel_from_uniform(word_to_uniform(pick_word(words, static_cast<uint32_t>(e & 3)))),
                    v);
  }
  *lse_out = m == kNegInf ? kNegInf : static_cast<float>(m + std::log(sum));
  return n;
}

#if SPECDEC_HAVE_AVX2
// scan_row eight lanes at a time, with the same candidates and keys (z = x / T + Gumbel, the
// division correctly rounded in both paths, the Gumbel noise from the scalar logs), so the same
// tokens. Two passes: the maximum of the raw row (x / T is monotone for T > 0), then 128 elements of
// the Philox stream per step: their exponentials for the log-sum-exp (exp8_le0, summed in double) and,
// unless no element can enter the full top-k list even with the largest Gumbel value, their
// uniforms. A cheap exact bound then spares the two logs of almost every element:
// -log(u) >= 1 - u, so g = -log(-log(u)) <= -log(1 - u) <= -e ln 2, where 2^e <= 1 - u (the
// float exponent of 1 - u, which is exact: u is an odd multiple of 2^-24). Only elements with
// s + (-e ln 2) (plus a margin for rounding) above the k-th best z get their noise computed.
template <typename T>
SPECDEC_AVX2 int64_t scan_row_avx2(const T* x, int64_t V, float temp, const DrawKey& key, uint64_t element0,
                                   int64_t k, Candidate* top, float* lse_out, int8_t* err) {
  const __m256 tv = _mm256_set1_ps(temp), ninf = _mm256_set1_ps(kNegInf);
  const bool unit_temp = temp == 1.f;
  bool has_nan = false;
  const float mx = max_and_nan_avx2(x, V, &has_nan);
  const float m = scale_logit(mx, temp);
  if (err && (has_nan || m == INFINITY)) {  // check=True, folded into the maximum pass
    *err = kRowNaN;
    return 0;
  }
  const __m256 mm = _mm256_set1_ps(m);
  const bool finite_max = m > kNegInf && m < INFINITY;
  __m256d acc = _mm256_setzero_pd();
  int64_t n = 0;
  alignas(32) float sbuf[128];
  alignas(32) float ubuf[128];
  const uint64_t e_end = element0 + static_cast<uint64_t>(V);
  const __m256 sign = _mm256_set1_ps(-0.f), ln2 = _mm256_set1_ps(0.693147182f);
  const __m256 one = _mm256_set1_ps(1.f), gmax = _mm256_set1_ps(kGumbelMax);
  const __m256 rel = _mm256_set1_ps(1e-5f), absm = _mm256_set1_ps(1e-4f);
  for (uint64_t j = element0 >> 7; (j << 7) < e_end; ++j) {
    const int64_t v0 = static_cast<int64_t>(j << 7) - static_cast<int64_t>(element0);  // may be < 0
    __m256 sv[16];
    if (v0 >= 0 && v0 + 128 <= V) {
      if (unit_temp) {  // x / 1 == x: skip the divisions (a quarter of the loop's time)
        for (int t = 0; t < 16; ++t) sv[t] = load8(x + v0 + 8 * t);
      } else {
        for (int t = 0; t < 16; ++t) sv[t] = _mm256_div_ps(load8(x + v0 + 8 * t), tv);
      }
    } else {  // a chunk cut by the row's ends: elements outside it are masked (-inf)
      for (int64_t i = 0; i < 128; ++i) {
        const int64_t v = v0 + i;
        sbuf[i] = (v >= 0 && v < V) ? scale_logit(static_cast<float>(x[v]), temp) : kNegInf;
      }
      for (int t = 0; t < 16; ++t) sv[t] = _mm256_load_ps(sbuf + 8 * t);
    }
    if (finite_max) {
      __m256 es = _mm256_setzero_ps();
      for (int t = 0; t < 16; ++t) es = _mm256_add_ps(es, exp8_le0(_mm256_sub_ps(sv[t], mm)));
      acc = add_to_double(acc, es);
    }
    int any = 0;
    const __m256 kth = _mm256_set1_ps(n == k ? top[k - 1].z : kNegInf);
    if (n == k) {
      for (int t = 0; t < 16; ++t) any |= _mm256_movemask_ps(_mm256_cmp_ps(_mm256_add_ps(sv[t], gmax), kth, _CMP_GT_OQ));
    } else {
      for (int t = 0; t < 16; ++t) any |= _mm256_movemask_ps(_mm256_cmp_ps(sv[t], ninf, _CMP_NEQ_UQ));
    }
    if (!any) continue;  // no element of the chunk can enter the list: no Philox blocks
    __m256 u[16];
    uniforms128(key, static_cast<uint32_t>(j), u);
    for (int t = 0; t < 16; ++t) {
      int mask;
      if (n == k) {
        const __m256 w = _mm256_sub_ps(one, u[t]);
        const __m256i ex = _mm256_sub_epi32(_mm256_srli_epi32(_mm256_castps_si256(w), 23), _mm256_set1_epi32(127));
        const __m256 gb = _mm256_mul_ps(_mm256_cvtepi32_ps(ex), _mm256_xor_ps(ln2, sign));  // -e ln 2
        const __m256 slack = _mm256_fmadd_ps(_mm256_andnot_ps(sign, sv[t]), rel, absm);
        const __m256 zup = _mm256_add_ps(_mm256_add_ps(sv[t], gb), slack);
        mask = _mm256_movemask_ps(_mm256_cmp_ps(zup, kth, _CMP_GT_OQ));
      } else {  // list not full: every unmasked element (NaN too, as in scan_row) is a candidate
        mask = _mm256_movemask_ps(_mm256_cmp_ps(sv[t], ninf, _CMP_NEQ_UQ));
      }
      if (!mask) continue;
      _mm256_store_ps(sbuf + 8 * t, sv[t]);
      _mm256_store_ps(ubuf + 8 * t, u[t]);
      while (mask) {
        const int i = 8 * t + __builtin_ctz(static_cast<unsigned>(mask));
        mask &= mask - 1;
        const float s = sbuf[i];
        if (s == kNegInf) continue;
        offer_candidate(top, n, k, s + gumbel_from_uniform(ubuf[i]), v0 + i);
      }
    }
  }
  if (has_nan) {
    *lse_out = std::numeric_limits<float>::quiet_NaN();
  } else if (!finite_max) {
    *lse_out = m;  // every logit -inf (no candidate either), or +inf
  } else {
    *lse_out = static_cast<float>(m + std::log(hsum4d(acc)));
  }
  return n;
}
#endif

// scan_row on the fastest path available.
template <typename T>
int64_t scan_row_any(const T* x, int64_t V, float temp, const DrawKey& key, uint64_t element0, int64_t k,
                     Candidate* top, float* lse_out, int8_t* err) {
#if SPECDEC_HAVE_AVX2
  if (simd_enabled() && temp > 0.f) return scan_row_avx2(x, V, temp, key, element0, k, top, lse_out, err);
#endif
  // check=True: NaN, +inf or overflowing x / T (all -inf rows are fine: no candidates).
  if (err && row_logit_error(x, V, temp, true) == kRowNaN) {
    *err = kRowNaN;
    return 0;
  }
  return scan_row(x, V, temp, key, element0, k, top, lse_out);
}

constexpr const char* kGumbelLogitsMsg =
    "logits must not contain NaN or +inf, and logits / temperature must not overflow float32 "
    "(-inf masks a token)";
constexpr const char* kGumbelTemperatureMsg = "temperature must be > 0 and finite in every row";

std::tuple<at::Tensor, at::Tensor, at::Tensor> gumbel_topk_cpu(const at::Tensor& logits_in,
                                                               const at::Tensor& temperature, int64_t k,
                                                               const at::Tensor& seed, const at::Tensor& offset,
                                                               bool row_streams, bool check) {
  const auto [R, V] = check_gumbel_args(logits_in, temperature, k, seed, offset);
  if (check) check_temperature_values(temperature, kGumbelTemperatureMsg);
  const at::Tensor logits = unit_last_stride(logits_in);
  at::Tensor tokens = at::empty({R, k}, logits.options().dtype(at::kLong));
  at::Tensor log_probs = at::empty({R, k}, logits.options().dtype(at::kFloat));
  at::Tensor scores = at::empty({R, k}, logits.options().dtype(at::kFloat));
  if (R == 0) return {tokens, log_probs, scores};
  const float* temp = temperature.data_ptr<float>();
  const RowStream rng{seed.data_ptr<int64_t>(), seed.stride(0), offset.data_ptr<int64_t>(), offset.stride(0),
                      row_streams};
  int64_t* tok = tokens.data_ptr<int64_t>();
  float* lp = log_probs.data_ptr<float>();
  float* sc = scores.data_ptr<float>();
  std::vector<int8_t> err(check ? R : 0, kRowOk);
  SPECDEC_DISPATCH_PROBS(logits.scalar_type(), "gumbel_topk_cpu", [&] {
    const scalar_t* X = logits.data_ptr<scalar_t>();
    const int64_t sR = logits.stride(0);
    at::parallel_for(0, R, 1, [&](int64_t r0, int64_t r1) {
      std::vector<Candidate> top(k);
      for (int64_t r = r0; r < r1; ++r) {
        const DrawKey key = row_draw_key(rng, r, 0);
        const float T = temp[r * temperature.stride(0)];
        float lse;
        const scalar_t* row = X + r * sR;
        const int64_t n = scan_row_any<scalar_t>(row, V, T, key, 0, k, top.data(), &lse, check ? &err[r] : nullptr);
        for (int64_t j = 0; j < k; ++j) {
          const bool valid = j < n;
          tok[r * k + j] = valid ? top[j].idx : -1;
          lp[r * k + j] = valid ? scale_logit(static_cast<float>(row[top[j].idx]), T) - lse : kNegInf;
          sc[r * k + j] = valid ? top[j].z - lse : kNegInf;
        }
      }
    });
  });
  if (check) raise_logits_error(err.data(), R, kGumbelLogitsMsg, nullptr);
  return {tokens, log_probs, scores};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> stochastic_beam_step_cpu(
    const at::Tensor& logits_in, const at::Tensor& beam_log_probs, const at::Tensor& beam_scores,
    const std::optional<at::Tensor>& beam_mask, int64_t width, const at::Tensor& temperature,
    const at::Tensor& seed, const at::Tensor& offset, bool row_streams, bool check) {
  const BeamDims d = check_beam_args(logits_in, beam_log_probs, beam_scores, beam_mask, width, temperature,
                                     seed, offset);
  if (check) {
    check_temperature_values(temperature, kGumbelTemperatureMsg);
    check_beam_values(beam_log_probs, beam_scores, beam_mask);
  }
  const int64_t B = d.B, W = d.W, V = d.V;
  const at::Tensor logits = unit_last_stride(logits_in);
  const auto lopts = logits.options().dtype(at::kLong), fopts = logits.options().dtype(at::kFloat);
  at::Tensor parents = at::empty({B, width}, lopts);
  at::Tensor tokens = at::empty({B, width}, lopts);
  at::Tensor log_probs = at::empty({B, width}, fopts);
  at::Tensor scores = at::empty({B, width}, fopts);
  if (B == 0) return {parents, tokens, log_probs, scores};
  const int64_t kk = std::min(width, V);  // candidates per beam: only these can survive
  // Stage 1, parallel over beams: each live beam's candidates (z order) and log-sum-exp.
  std::vector<Candidate> cand(static_cast<size_t>(B * W * kk));
  std::vector<int64_t> ncand(static_cast<size_t>(B * W), 0);
  std::vector<float> lse(static_cast<size_t>(B * W), kNegInf);
  const auto phi = beam_log_probs.accessor<float, 2>();
  const auto G = beam_scores.accessor<float, 2>();
  const bool* mask = beam_mask.has_value() ? beam_mask->data_ptr<bool>() : nullptr;
  const int64_t mB = mask ? beam_mask->stride(0) : 0, mW = mask ? beam_mask->stride(1) : 0;
  const float* temp = temperature.data_ptr<float>();
  const RowStream rng{seed.data_ptr<int64_t>(), seed.stride(0), offset.data_ptr<int64_t>(), offset.stride(0),
                      row_streams};
  std::vector<int8_t> err(check ? B * W : 0, kRowOk);
  SPECDEC_DISPATCH_PROBS(logits.scalar_type(), "stochastic_beam_step_cpu", [&] {
    const scalar_t* X = logits.data_ptr<scalar_t>();
    const int64_t sB = logits.stride(0), sW = logits.stride(1);
    at::parallel_for(0, B * W, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / W, w = i % W;
        if (mask && !mask[b * mB + w * mW]) continue;  // dead beam: its row is never read
        const DrawKey key = row_draw_key(rng, b, 0);
        ncand[i] = scan_row_any<scalar_t>(X + b * sB + w * sW, V, temp[b * temperature.stride(0)], key,
                                      static_cast<uint64_t>(w * V), kk, cand.data() + i * kk, &lse[i],
                                      check ? &err[i] : nullptr);
      }
    });
    if (check) raise_logits_error(err.data(), B * W, kGumbelLogitsMsg, nullptr);
    // Stage 2, parallel over requests: truncated scores, then the `width` best over all beams.
    int64_t* par = parents.data_ptr<int64_t>();
    int64_t* tok = tokens.data_ptr<int64_t>();
    float* lp = log_probs.data_ptr<float>();
    float* sc = scores.data_ptr<float>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      struct Child {
        float gp;
        int64_t w, rank;
      };
      std::vector<Child> kids;
      for (int64_t b = b0; b < b1; ++b) {
        kids.clear();
        const float T = temp[b * temperature.stride(0)];
        for (int64_t w = 0; w < W; ++w) {
          const int64_t i = b * W + w;
          if (ncand[i] == 0) continue;
          const Candidate* c = cand.data() + i * kk;
          const float Z = phi[b][w] + (c[0].z - lse[i]);
          for (int64_t j = 0; j < ncand[i]; ++j) {
            const float Gt = phi[b][w] + (c[j].z - lse[i]);
            kids.push_back({truncated_score(G[b][w], Z, Gt), w, j});
          }
        }
        const auto better = [](const Child& a, const Child& c) {
          return a.gp > c.gp || (a.gp == c.gp && (a.w < c.w || (a.w == c.w && a.rank < c.rank)));
        };
        const int64_t n = std::min<int64_t>(width, static_cast<int64_t>(kids.size()));
        std::partial_sort(kids.begin(), kids.begin() + n, kids.end(), better);
        for (int64_t j = 0; j < width; ++j) {
          const int64_t o = b * width + j;
          if (j >= n) {
            par[o] = tok[o] = -1;
            lp[o] = sc[o] = kNegInf;
            continue;
          }
          const Child& ch = kids[j];
          const int64_t i = b * W + ch.w;
          const int64_t v = cand[i * kk + ch.rank].idx;
          const float s = scale_logit(static_cast<float>(X[b * sB + ch.w * sW + v]), T);
          par[o] = ch.w;
          tok[o] = v;
          lp[o] = phi[b][ch.w] + (s - lse[i]);
          sc[o] = ch.gp;
        }
      }
    });
  });
  return {parents, tokens, log_probs, scores};
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("gumbel_topk", &gumbel_topk_cpu);
  m.impl("stochastic_beam_step", &stochastic_beam_step_cpu);
}

}  // namespace specdec
