// sampling_probs on the CPU: one row per task. Softmax in two passes; top-k by nth_element on a
// copy of the scaled logits; top-p by a mass-guided quickselect (expected O(V), no full sort).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../common/checks.h"
#include "simd.h"

namespace specdec {
namespace {

// Smallest kept probability under top-p: keep x iff sum_{y: p_y > p_x} p_y < top_p. Partition
// around a pivot value; the mass strictly above decides which side holds the threshold.
float top_p_threshold(std::vector<float>& cand, double top_p, double above0 = 0.0) {
  double above = above0;  // mass of values known to be larger than every candidate
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
  cand.resize(static_cast<size_t>(V + 8));
  float* dst = cand.data();
  const int64_t V8 = V & ~int64_t(7);
  const __m256 bv = _mm256_set1_ps(bound);
  for (int64_t v = 0; v < V8; v += 8) {
    const __m256 xv = _mm256_loadu_ps(x + v);
    dst = compress_store8(dst, xv, _mm256_movemask_ps(_mm256_cmp_ps(xv, bv, _CMP_GE_OQ)));
  }
  for (int64_t v = V8; v < V; ++v) {
    if (x[v] >= bound) *dst++ = x[v];
  }
  cand.resize(static_cast<size_t>(dst - cand.data()));
  if (static_cast<int64_t>(cand.size()) < k) {  // NaN in the row: fall back to every element
    cand.assign(x, x + V);
  }
  std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), std::greater<float>());
  return cand[k - 1];
}

// filter_row eight lanes at a time, over a row that stays in cache:
//   1. s = x / T (a multiply by 1 / T, within an ulp of the division) and its maximum;
//   2. (top-k) the k-th largest s (kth_largest_avx2);
//   3. e = exp(s - max) for the kept tokens, their sum, and with top-p the sums of e at or above
//      four levels (2^-4, 2^-8, 2^-12, 2^-16: the largest e is exactly 1);
//   4. (top-p) the threshold: every token below the first level whose mass at or above reaches
//      top_p * sum is dropped (its mass above is even larger), every token at or above the level
//      before it is kept; the tokens in between are collected, the bracket is bisected on the
//      float bits while it holds many of them (one vector pass over them each), and the exact
//      mass-guided selection of filter_row finishes on the few left;
//   5. one pass writing e / (sum of the kept e), 0 for the dropped.
// Top-p decides in units of e instead of normalised probabilities: the same comparisons up to
// float rounding of the sum, as the scalar path's own rounding already does.
template <typename T>
SPECDEC_AVX2 void filter_row_avx2(const T* in, float* out, int64_t V, float temp, int64_t top_k, float top_p,
                                  std::vector<float>& scratch, int8_t* err) {
  const int64_t V8 = V & ~int64_t(7);
  const float it = 1.f / temp;
  const __m256 itv = _mm256_set1_ps(it);
  __m256 mv = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
  for (int64_t v = 0; v < V8; v += 8) {
    const __m256 xin = load8(in + v);
    const __m256 x = temp == 1.f ? xin : _mm256_mul_ps(xin, itv);
    _mm256_storeu_ps(out + v, x);
    mv = _mm256_max_ps(x, mv);
    if (err) nan = _mm256_or_ps(nan, _mm256_cmp_ps(xin, xin, _CMP_UNORD_Q));
  }
  float mx = hmax8(mv);
  bool has_nan = _mm256_movemask_ps(nan) != 0;
  for (int64_t v = V8; v < V; ++v) {
    out[v] = temp == 1.f ? static_cast<float>(in[v]) : static_cast<float>(in[v]) * it;
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
  const bool nucleus = top_p < 1.f;
  constexpr int kLevels = 4;
  float thr[kLevels];
  __m256d lv_acc[kLevels];
  for (int i = 0; i < kLevels; ++i) {
    thr[i] = std::ldexp(1.f, -4 * (i + 1));
    lv_acc[i] = _mm256_setzero_pd();
  }
  const __m256 mm = _mm256_set1_ps(mx), kv = _mm256_set1_ps(kth);
  __m256d acc = _mm256_setzero_pd();
  // 128 elements per step: float partial sums (16 terms a lane), then double accumulators.
  const int64_t V128 = V & ~int64_t(127), V32 = V & ~int64_t(31);
  auto exp_block = [&](int64_t v, int64_t n, bool levels) SPECDEC_AVX2 {
    __m256 es = _mm256_setzero_ps();
    __m256 ls[kLevels] = {es, es, es, es};
    for (int64_t j = 0; j < n; j += 8) {
      const __m256 x = _mm256_loadu_ps(out + v + j);
      const __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(x, mm)), _mm256_cmp_ps(x, kv, _CMP_GE_OQ));
      _mm256_storeu_ps(out + v + j, e);
      es = _mm256_add_ps(es, e);
      if (levels) {
        // e >= 2^-4(i+1) read off the exponent field with integer compares, which run beside
        // the floating-point pipes the exponentials keep busy.
        const __m256i ex = _mm256_srli_epi32(_mm256_castps_si256(e), 23);
        for (int i = 0; i < kLevels; ++i) {
          const __m256i ge = _mm256_cmpgt_epi32(ex, _mm256_set1_epi32(126 - 4 * (i + 1)));
          ls[i] = _mm256_add_ps(ls[i], _mm256_and_ps(e, _mm256_castsi256_ps(ge)));
        }
      }
    }
    acc = add_to_double(acc, es);
    if (levels) {
      for (int i = 0; i < kLevels; ++i) lv_acc[i] = add_to_double(lv_acc[i], ls[i]);
    }
  };
  int64_t v = 0;
  if (nucleus) {
    for (; v < V128; v += 128) exp_block(v, 128, true);
    for (; v < V32; v += 32) exp_block(v, 32, true);
  } else {
    for (; v < V128; v += 128) exp_block(v, 128, false);
    for (; v < V32; v += 32) exp_block(v, 32, false);
  }
  double sum = hsum4d(acc);
  double level_mass[kLevels];
  for (int i = 0; i < kLevels; ++i) level_mass[i] = hsum4d(lv_acc[i]);
  for (int64_t v = V32; v < V; ++v) {
    const float e = out[v] >= kth ? std::exp(out[v] - mx) : 0.f;
    out[v] = e;
    sum += e;
    for (int i = 0; i < kLevels; ++i) level_mass[i] += e >= thr[i] ? e : 0.f;
  }
  float tau = 0.f;  // e >= tau is kept
  double kept = sum;
  if (nucleus) {
    const double target = static_cast<double>(top_p) * sum;
    float lo = 0.f, hi = INFINITY;
    double above_hi = 0.0;
    for (int i = 0; i < kLevels; ++i) {
      if (level_mass[i] >= target) {
        lo = thr[i];
        break;
      }
      hi = thr[i];
      above_hi = level_mass[i];
    }
    scratch.resize(static_cast<size_t>(V + 8));
    float* dst = scratch.data();
    const __m256 lov = _mm256_set1_ps(lo), hiv = _mm256_set1_ps(hi), zero = _mm256_setzero_ps();
    for (int64_t v = 0; v < V8; v += 8) {
      const __m256 e = _mm256_loadu_ps(out + v);
      dst = compress_store8(dst, e, _mm256_movemask_ps(_mm256_and_ps(
          _mm256_and_ps(_mm256_cmp_ps(e, lov, _CMP_GE_OQ), _mm256_cmp_ps(e, hiv, _CMP_LT_OQ)),
          _mm256_cmp_ps(e, zero, _CMP_GT_OQ))));
    }
    for (int64_t v = V8; v < V; ++v) {
      if (out[v] > 0.f && out[v] >= lo && out[v] < hi) *dst++ = out[v];
    }
    int64_t n = dst - scratch.data();
    // Bisect the bracket on the float bits (positive floats order like their bits) while it holds
    // many tokens: the mass at or above the midpoint settles one side, the candidates are packed
    // down to the other (vector left-packing, in place).
    while (n > 64) {
      uint32_t lb, hb;
      std::memcpy(&lb, &lo, 4);
      if (hi == INFINITY) {
        const float top = *std::max_element(scratch.begin(), scratch.begin() + n);
        std::memcpy(&hb, &top, 4);
        ++hb;
      } else {
        std::memcpy(&hb, &hi, 4);
      }
      if (hb - lb < 2) break;
      const uint32_t mb = lb + (hb - lb) / 2;
      float mid;
      std::memcpy(&mid, &mb, 4);
      const __m256 midv = _mm256_set1_ps(mid);
      float* c = scratch.data();
      const int64_t n8 = n & ~int64_t(7);
      __m256d mass_v = _mm256_setzero_pd();
      for (int64_t i = 0; i < n8; i += 8) {
        const __m256 x = _mm256_loadu_ps(c + i);
        mass_v = add_to_double(mass_v, _mm256_and_ps(x, _mm256_cmp_ps(x, midv, _CMP_GE_OQ)));
      }
      double mass = hsum4d(mass_v);
      for (int64_t i = n8; i < n; ++i) mass += c[i] >= mid ? c[i] : 0.f;
      const bool keep_upper = above_hi + mass < target;  // every token >= mid is kept
      if (keep_upper) {
        hi = mid;
        above_hi += mass;
      } else {  // every token < mid is dropped
        lo = mid;
      }
      // Pack the survivors (below mid when the upper side was settled, else at or above it). The
      // writes never overtake the reads: the packed prefix is at most as long as what was read.
      float* w = c;
      for (int64_t i = 0; i < n8; i += 8) {
        const __m256 x = _mm256_loadu_ps(c + i);
        const __m256 sel = keep_upper ? _mm256_cmp_ps(x, midv, _CMP_LT_OQ) : _mm256_cmp_ps(x, midv, _CMP_GE_OQ);
        w = compress_store8(w, x, _mm256_movemask_ps(sel));
      }
      for (int64_t i = n8; i < n; ++i) {
        if (keep_upper ? c[i] < mid : c[i] >= mid) *w++ = c[i];
      }
      n = w - c;
    }
    scratch.resize(static_cast<size_t>(n));
    // The exact threshold among the few left; none of them kept: the threshold is hi.
    tau = std::min(top_p_threshold(scratch, target, above_hi), hi);
    kept = above_hi;
    for (const float x : scratch) kept += x >= tau ? x : 0.f;
  }
  const float inv = static_cast<float>(1.0 / kept);
  const __m256 iv = _mm256_set1_ps(inv), tauv = _mm256_set1_ps(tau);
  if (tau > 0.f) {
    for (int64_t v = 0; v < V8; v += 8) {
      const __m256 e = _mm256_loadu_ps(out + v);
      _mm256_storeu_ps(out + v, _mm256_and_ps(_mm256_mul_ps(e, iv), _mm256_cmp_ps(e, tauv, _CMP_GE_OQ)));
    }
  } else {
    for (int64_t v = 0; v < V8; v += 8) _mm256_storeu_ps(out + v, _mm256_mul_ps(_mm256_loadu_ps(out + v), iv));
  }
  for (int64_t v = V8; v < V; ++v) out[v] = out[v] >= tau ? out[v] * inv : 0.f;
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
