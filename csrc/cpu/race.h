// The exponential race over a row on the CPU, shared by the chain and tree kernels: the winner of
// r(v) / -log(u_v) over v in [0, V), ties to the smaller index, -1 when r is all zero. r is given by
// a row functor so each caller's residual (p, max(0, p - q), p without a token, the tree's
// closed-form residual) is computed on the fly and never stored.
//
// A row functor F has `float at(int64_t v)` (one element) and, for the AVX2 path,
// `__m256 vec(int64_t v)` (elements v .. v + 7, all < V), both giving the same floats.
//
// The AVX2 path (race_avx2) draws the uniforms of 128 elements at once (simd.h) and computes a key
// only for the elements that can still win: since -log(u) >= 1 - u, an element with
// r <= best * (1 - 1e-5) * (1 - u) has key r / -log(u) < best whatever the rounding of the log
// (a few ulp, far inside the 1e-5 margin), so it cannot win. The keys that are computed use the
// same scalar race_key as the scalar path: both paths return the same index, bit for bit. After
// the first few hundred elements almost every element fails that test (the best key grows like
// the sum of r seen so far), so the row costs a Philox block per 4 elements and a compare, and
// about log(V) scalar logs.
#pragma once
#include <algorithm>
#include <cstdint>

#include "../common/philox.h"
#include "../common/sampling_math.h"
#include "simd.h"

namespace specdec {

template <typename R>
int64_t race_over(R r_of, int64_t V, const DrawKey& key) {
  float best = 0.f;
  int64_t best_idx = -1;
  for (int64_t base = 0; base < V; base += 4) {
    const int64_t n = std::min<int64_t>(4, V - base);
    float r[4] = {0.f, 0.f, 0.f, 0.f};
    bool any = false;
    for (int64_t j = 0; j < n; ++j) {
      r[j] = r_of(base + j);
      any |= r[j] > 0.f;
    }
    if (!any) continue;  // a Philox block costs ~40 multiplies: skip blocks that cannot win
    const Philox4 w = draw_block(key, static_cast<uint32_t>(base >> 2));
    for (int64_t j = 0; j < n; ++j) {
      const float k = race_key(r[j], word_to_uniform(pick_word(w, static_cast<uint32_t>(j))));
      if (k > best) {  // ascending scan: ties keep the smaller index
        best = k;
        best_idx = base + j;
      }
    }
  }
  return best_idx;
}

#if SPECDEC_HAVE_AVX2
template <typename F>
SPECDEC_AVX2 int64_t race_avx2(const F& f, int64_t V, const DrawKey& key) {
  constexpr int kVecs = 16;  // 128 elements per step: one uniforms128 call
  float best = 0.f;
  int64_t best_idx = -1;
  const __m256 zero = _mm256_setzero_ps();
  __m256 bm = zero;  // best * (1 - 1e-5): the threshold is bm (1 - u) = bm - bm u
  alignas(32) float rbuf[8 * kVecs];
  alignas(32) float ubuf[8];
  for (int64_t base = 0; base < V; base += 8 * kVecs) {
    __m256 r[kVecs];
    if (base + 8 * kVecs <= V) {
      for (int t = 0; t < kVecs; ++t) r[t] = f.vec(base + 8 * t);
    } else {  // tail: elements past V race with r = 0 and never win
      for (int64_t j = 0; j < 8 * kVecs; ++j) rbuf[j] = base + j < V ? f.at(base + j) : 0.f;
      for (int t = 0; t < kVecs; ++t) r[t] = _mm256_load_ps(rbuf + 8 * t);
    }
    __m256 pos = _mm256_cmp_ps(r[0], zero, _CMP_GT_OQ);
    for (int t = 1; t < kVecs; ++t) pos = _mm256_or_ps(pos, _mm256_cmp_ps(r[t], zero, _CMP_GT_OQ));
    if (_mm256_movemask_ps(pos) == 0) continue;  // nothing positive: no Philox blocks needed
    __m256 u[kVecs];
    uniforms128(key, static_cast<uint32_t>(base >> 7), u);
    for (int t = 0; t < kVecs; ++t) {
      int m = _mm256_movemask_ps(_mm256_cmp_ps(r[t], _mm256_fnmadd_ps(bm, u[t], bm), _CMP_GT_OQ));
      if (m == 0) continue;
      alignas(32) float rr[8];
      _mm256_store_ps(rr, r[t]);
      _mm256_store_ps(ubuf, u[t]);
      while (m) {
        const int j = __builtin_ctz(static_cast<unsigned>(m));
        m &= m - 1;
        const float k = race_key(rr[j], ubuf[j]);
        if (k > best) {
          best = k;
          best_idx = base + 8 * t + j;
          bm = _mm256_set1_ps(best * 0.99999f);
        }
      }
    }
  }
  return best_idx;
}
#endif

// Row functors of the races: p itself, the residual max(0, p - q) after a rejection, and p without
// the rejected token for deterministic drafts. With check=True the kernels hand them flags
// (bad_p, bad_q) that they set when a value they read is not a probability (prob_ok), so the
// value checks ride along the pass the race makes anyway instead of scanning the inputs again.
inline bool prob_ok(float x, float hi) { return x >= 0.f && x <= hi; }  // NaN fails both

#if SPECDEC_HAVE_AVX2
SPECDEC_AVX2 inline bool probs_ok8(__m256 x, float hi) {
  const __m256 ok = _mm256_and_ps(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ),
                                  _mm256_cmp_ps(x, _mm256_set1_ps(hi), _CMP_LE_OQ));
  return _mm256_movemask_ps(ok) == 0xFF;
}
#endif

// Largest accepted probability value: chain ops accept any finite value >= 0, tree ops [0, 1].
constexpr float kFiniteMax = 3.40282347e+38f;

template <typename T>
struct RowP {
  const T* p;
  bool* bad_p = nullptr;
  float hi = kFiniteMax;
  float at(int64_t v) const {
    const float x = static_cast<float>(p[v]);
    if (bad_p && !prob_ok(x, hi)) *bad_p = true;
    return x;
  }
#if SPECDEC_HAVE_AVX2
  SPECDEC_AVX2 __m256 vec(int64_t v) const {
    const __m256 x = load8(p + v);
    if (bad_p && !probs_ok8(x, hi)) *bad_p = true;
    return x;
  }
#endif
};

template <typename T>
struct RowResidual {
  const T* p;
  const T* q;
  bool* bad_p = nullptr;
  bool* bad_q = nullptr;
  // std::max(0, NaN) is 0, and so is _mm256_max_ps(NaN, 0): the two paths agree on any input.
  float at(int64_t v) const {
    const float pv = static_cast<float>(p[v]), qv = static_cast<float>(q[v]);
    if (bad_p && !prob_ok(pv, kFiniteMax)) *bad_p = true;
    if (bad_q && !prob_ok(qv, kFiniteMax)) *bad_q = true;
    return std::max(0.f, pv - qv);
  }
#if SPECDEC_HAVE_AVX2
  SPECDEC_AVX2 __m256 vec(int64_t v) const {
    const __m256 pv = load8(p + v), qv = load8(q + v);
    if (bad_p && !probs_ok8(pv, kFiniteMax)) *bad_p = true;
    if (bad_q && !probs_ok8(qv, kFiniteMax)) *bad_q = true;
    return _mm256_max_ps(_mm256_sub_ps(pv, qv), _mm256_setzero_ps());
  }
#endif
};

template <typename T>
struct RowWithout {
  const T* p;
  int64_t skip;
  bool* bad_p = nullptr;
  float at(int64_t v) const {
    const float x = static_cast<float>(p[v]);
    if (bad_p && !prob_ok(x, kFiniteMax)) *bad_p = true;
    return v == skip ? 0.f : x;
  }
#if SPECDEC_HAVE_AVX2
  SPECDEC_AVX2 __m256 vec(int64_t v) const {
    const __m256 x = load8(p + v);
    if (bad_p && !probs_ok8(x, kFiniteMax)) *bad_p = true;
    if (skip < v || skip >= v + 8) return x;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i hit = _mm256_cmpeq_epi32(lane, _mm256_set1_epi32(static_cast<int>(skip - v)));
    return _mm256_andnot_ps(_mm256_castsi256_ps(hit), x);
  }
#endif
};

// The race over a row functor, on the fastest path this CPU (and the cpu_simd switch) allows.
template <typename F>
int64_t race_row(const F& f, int64_t V, const DrawKey& key) {
#if SPECDEC_HAVE_AVX2
  if (simd_enabled()) return race_avx2(f, V, key);
#endif
  return race_over([&](int64_t v) { return f.at(v); }, V, key);
}

}  // namespace specdec
