// sampling_probs on the CPU: one row per task. Softmax in two passes; top-k by nth_element on a
// copy of the scaled logits; top-p by a mass-guided quickselect (expected O(V), no full sort).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/checks.h"
#include "simd.h"

namespace specdec {
namespace {

// Smallest kept probability under top-p: keep x iff sum_{y: p_y > p_x} p_y < top_p. Partition
// around a pivot value; the mass strictly above decides which side holds the threshold.
float top_p_threshold(std::vector<float>& cand, float top_p) {
  double above = 0.0;  // mass of values known to be larger than every candidate
  float tau = std::numeric_limits<float>::infinity();
  size_t lo = 0, hi = cand.size();
  while (lo < hi) {
    const float pivot = cand[lo + (hi - lo) / 2];
    // three-way partition of [lo, hi): > pivot | == pivot | < pivot
    auto gt_end = std::partition(cand.begin() + lo, cand.begin() + hi, [&](float v) { return v > pivot; });
    auto eq_end = std::partition(gt_end, cand.begin() + hi, [&](float v) { return v == pivot; });
    double gt_mass = 0.0, eq_mass = 0.0;
    for (auto it = cand.begin() + lo; it != gt_end; ++it) gt_mass += *it;
    for (auto it = gt_end; it != eq_end; ++it) eq_mass += *it;
    if (above + gt_mass < top_p) {
      tau = pivot;  // pivot kept, so is everything larger; look below
      above += gt_mass + eq_mass;
      lo = static_cast<size_t>(eq_end - cand.begin());
    } else {
      hi = static_cast<size_t>(gt_end - cand.begin());  // pivot dropped; threshold is above it
    }
  }
  return tau;
}

template <typename T>
void filter_row(const T* in, float* out, int64_t V, float temp, int64_t top_k, float top_p,
                std::vector<float>& scratch) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t v = 0; v < V; ++v) {
    out[v] = static_cast<float>(in[v]) / temp;
    mx = std::max(mx, out[v]);
  }
  float kth = -std::numeric_limits<float>::infinity();
  if (top_k > 0 && top_k < V) {
    scratch.assign(out, out + V);
    std::nth_element(scratch.begin(), scratch.begin() + (top_k - 1), scratch.end(), std::greater<float>());
    kth = scratch[top_k - 1];
  }
  double sum = 0.0;
  for (int64_t v = 0; v < V; ++v) {
    const float e = out[v] >= kth ? std::exp(out[v] - mx) : 0.f;
    out[v] = e;
    sum += e;
  }
  float inv = static_cast<float>(1.0 / sum);
  for (int64_t v = 0; v < V; ++v) out[v] *= inv;
  if (top_p < 1.f) {
    scratch.clear();
    for (int64_t v = 0; v < V; ++v)
      if (out[v] > 0.f) scratch.push_back(out[v]);
    const float tau = top_p_threshold(scratch, top_p);
    sum = 0.0;
    for (int64_t v = 0; v < V; ++v) {
      if (out[v] < tau) out[v] = 0.f;
      sum += out[v];
    }
    inv = static_cast<float>(1.0 / sum);
    for (int64_t v = 0; v < V; ++v) out[v] *= inv;
  }
}

#if SPECDEC_HAVE_AVX2
// The k-th largest of x[0..V) (0 < k < V) without sorting the row. The row is cut into k chunks of
// L elements; the smallest of the k chunk maxima is at most the k-th largest (the maxima are k
// distinct elements), so every element of the top k is >= it. One vector pass finds the maxima,
// one more collects the elements >= that bound (typically a few times k of them), and
// nth_element runs on those alone.
SPECDEC_AVX2 float kth_largest_avx2(const float* x, int64_t V, int64_t k, std::vector<float>& cand) {
  const int64_t L = (V / k) & ~int64_t(7);
  float bound = -INFINITY;
  if (L >= 8) {
    bound = INFINITY;
    for (int64_t c = 0; c < k; ++c) {
      __m256 m = _mm256_set1_ps(-INFINITY);
      for (int64_t v = c * L; v < (c + 1) * L; v += 8) m = _mm256_max_ps(_mm256_loadu_ps(x + v), m);
      bound = std::min(bound, hmax8(m));
    }
  }
  cand.clear();
  const int64_t V8 = V & ~int64_t(7);
  const __m256 bv = _mm256_set1_ps(bound);
  for (int64_t v = 0; v < V8; v += 8) {
    int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + v), bv, _CMP_GE_OQ));
    while (m) {
      const int j = __builtin_ctz(static_cast<unsigned>(m));
      m &= m - 1;
      cand.push_back(x[v + j]);
    }
  }
  for (int64_t v = V8; v < V; ++v) {
    if (x[v] >= bound) cand.push_back(x[v]);
  }
  if (static_cast<int64_t>(cand.size()) < k) {  // NaN in the row: fall back to every element
    cand.assign(x, x + V);
  }
  std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), std::greater<float>());
  return cand[k - 1];
}

// filter_row eight lanes at a time. Passes over a row that stays in cache: scale + max, (top-k
// heap), exp + sum, normalise. With top-p the normalising pass also sums the mass above four
// thresholds (max p / 2^4, ..., / 2^16); every token below the largest threshold whose mass above
// reaches top_p is dropped for sure (its mass above is even larger), so only the tokens above it
// go through the exact mass-guided selection.
template <typename T>
SPECDEC_AVX2 void filter_row_avx2(const T* in, float* out, int64_t V, float temp, int64_t top_k, float top_p,
                                  std::vector<float>& scratch, int8_t* err) {
  const int64_t V8 = V & ~int64_t(7);
  const __m256 tv = _mm256_set1_ps(temp);
  __m256 mv = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
  for (int64_t v = 0; v < V8; v += 8) {
    const __m256 xin = load8(in + v);
    const __m256 x = _mm256_div_ps(xin, tv);
    _mm256_storeu_ps(out + v, x);
    mv = _mm256_max_ps(x, mv);
    if (err) nan = _mm256_or_ps(nan, _mm256_cmp_ps(xin, xin, _CMP_UNORD_Q));
  }
  float mx = hmax8(mv);
  bool has_nan = _mm256_movemask_ps(nan) != 0;
  for (int64_t v = V8; v < V; ++v) {
    out[v] = static_cast<float>(in[v]) / temp;
    mx = std::max(mx, out[v]);
    has_nan |= out[v] != out[v];
  }
  if (err && (has_nan || mx == INFINITY || mx == -INFINITY)) {
    // check=True, folded into the first pass: a suspicious row is classified by the scalar helper
    // (as the Python check does it, on the raw logits) and left unfiltered when it is bad.
    *err = row_logit_error(in, V, temp, false);
    if (*err != kRowOk) return;
  }
  float kth = -INFINITY;
  if (top_k > 0 && top_k < V) kth = kth_largest_avx2(out, V, top_k, scratch);
  const __m256 mm = _mm256_set1_ps(mx), kv = _mm256_set1_ps(kth);
  __m256d acc = _mm256_setzero_pd();
  for (int64_t v = 0; v < V8; v += 8) {
    const __m256 x = _mm256_loadu_ps(out + v);
    const __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(x, mm)), _mm256_cmp_ps(x, kv, _CMP_GE_OQ));
    _mm256_storeu_ps(out + v, e);
    acc = add_to_double(acc, e);
  }
  double sum = hsum4d(acc);
  for (int64_t v = V8; v < V; ++v) {
    const float e = out[v] >= kth ? std::exp(out[v] - mx) : 0.f;
    out[v] = e;
    sum += e;
  }
  float inv = static_cast<float>(1.0 / sum);
  const bool nucleus = top_p < 1.f;
  constexpr int kLevels = 4;
  float thr[kLevels];
  __m256 tvec[kLevels];
  __m256d above[kLevels];
  for (int i = 0; i < kLevels; ++i) {
    thr[i] = inv * std::ldexp(1.f, -4 * (i + 1));  // the largest probability is exp(0) * inv
    tvec[i] = _mm256_set1_ps(thr[i]);
    above[i] = _mm256_setzero_pd();
  }
  const __m256 iv = _mm256_set1_ps(inv);
  for (int64_t v = 0; v < V8; v += 8) {
    const __m256 pr = _mm256_mul_ps(_mm256_loadu_ps(out + v), iv);
    _mm256_storeu_ps(out + v, pr);
    if (nucleus) {
      for (int i = 0; i < kLevels; ++i) {
        above[i] = add_to_double(above[i], _mm256_and_ps(pr, _mm256_cmp_ps(pr, tvec[i], _CMP_GE_OQ)));
      }
    }
  }
  double tail_above[kLevels] = {0.0, 0.0, 0.0, 0.0};
  for (int64_t v = V8; v < V; ++v) {
    out[v] *= inv;
    for (int i = 0; i < kLevels; ++i) tail_above[i] += out[v] >= thr[i] ? out[v] : 0.f;
  }
  if (!nucleus) return;
  // Tokens below `floor` are dropped: the mass at or above floor (all of it strictly above any
  // smaller token) already reaches top_p.
  float floor = 0.f;
  for (int i = 0; i < kLevels; ++i) {
    if (hsum4d(above[i]) + tail_above[i] >= static_cast<double>(top_p)) {
      floor = thr[i];
      break;
    }
  }
  scratch.clear();
  for (int64_t v = 0; v < V8; v += 8) {
    const __m256 pr = _mm256_loadu_ps(out + v);
    int m = _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(pr, _mm256_set1_ps(floor), _CMP_GE_OQ),
                                             _mm256_cmp_ps(pr, _mm256_setzero_ps(), _CMP_GT_OQ)));
    while (m) {
      const int j = __builtin_ctz(static_cast<unsigned>(m));
      m &= m - 1;
      scratch.push_back(out[v + j]);
    }
  }
  for (int64_t v = V8; v < V; ++v) {
    if (out[v] > 0.f && out[v] >= floor) scratch.push_back(out[v]);
  }
  const float tau = top_p_threshold(scratch, top_p);
  const __m256 tauv = _mm256_set1_ps(tau);
  acc = _mm256_setzero_pd();
  for (int64_t v = 0; v < V8; v += 8) {
    const __m256 pr = _mm256_loadu_ps(out + v);
    const __m256 kept = _mm256_and_ps(pr, _mm256_cmp_ps(pr, tauv, _CMP_GE_OQ));
    _mm256_storeu_ps(out + v, kept);
    acc = add_to_double(acc, kept);
  }
  sum = hsum4d(acc);
  for (int64_t v = V8; v < V; ++v) {
    if (out[v] < tau) out[v] = 0.f;
    sum += out[v];
  }
  inv = static_cast<float>(1.0 / sum);
  const __m256 iv2 = _mm256_set1_ps(inv);
  for (int64_t v = 0; v < V8; v += 8) _mm256_storeu_ps(out + v, _mm256_mul_ps(_mm256_loadu_ps(out + v), iv2));
  for (int64_t v = V8; v < V; ++v) out[v] *= inv;
}
#endif

at::Tensor sampling_probs_cpu(const at::Tensor& logits_in, const at::Tensor& temperature,
                              const at::Tensor& top_k, const at::Tensor& top_p, bool check) {
  const int64_t R = check_sampling_args(logits_in, temperature, top_k, top_p), V = logits_in.size(1);
  if (check) {
    check_temperature_values(temperature,
                             "temperature must be > 0 and finite in every row (use verify_chain_greedy for greedy)");
    check_sampling_params(top_k, top_p);
  }
  const at::Tensor logits = logits_in.contiguous();
  at::Tensor out = at::empty({R, V}, logits.options().dtype(at::kFloat));
  if (R == 0 || V == 0) return out;
  const at::Tensor t = temperature.contiguous(), k = top_k.contiguous(), p = top_p.contiguous();
  const float* tp = t.data_ptr<float>();
  const int64_t* kp = k.data_ptr<int64_t>();
  const float* pp = p.data_ptr<float>();
  float* op = out.data_ptr<float>();
  std::vector<int8_t> err(check ? R : 0, kRowOk);
  SPECDEC_DISPATCH_PROBS(logits.scalar_type(), "sampling_probs_cpu", [&] {
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    at::parallel_for(0, R, 1, [&](int64_t r0, int64_t r1) {
      std::vector<float> scratch;
      for (int64_t r = r0; r < r1; ++r) {
#if SPECDEC_HAVE_AVX2
        if (simd_enabled() && tp[r] > 0.f) {
          filter_row_avx2(lp + r * V, op + r * V, V, tp[r], kp[r], pp[r], scratch, check ? &err[r] : nullptr);
          continue;
        }
#endif
        if (check && (err[r] = row_logit_error(lp + r * V, V, tp[r], false)) != kRowOk) continue;
        filter_row(lp + r * V, op + r * V, V, tp[r], kp[r], pp[r], scratch);
      }
    });
  });
  if (check) {
    raise_logits_error(err.data(), R, "logits must not contain NaN or +inf",
                       "logits has a row where every entry is -inf");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) { m.impl("sampling_probs", &sampling_probs_cpu); }

}  // namespace specdec
