// The exponential race over a row on the CPU, shared by the chain and tree kernels: the winner of
// r(v) / -log(u_v) over v in [0, V), ties to the smaller index, -1 when r is all zero. r is given by
// a row functor so each caller's residual (p, max(0, p - q), p without a token, the tree's
// closed-form residual) is computed on the fly and never stored.
//
// A row functor F has `float at(int64_t v, double* sp = nullptr, double* sq = nullptr)` (one
// element) and, for the AVX2 path, `__m256 vec(int64_t v, Lanes8& lp, Lanes8& lq)` (elements
// v .. v + 7, all < V), both giving the same floats, and `report(V, lp, sum_p, lq, sum_q)`. With
// check=True the kernels hand a functor flags (bad_p, bad_q; see prob_ok): at() checks each value
// it reads and adds it to the sums sp (p) and sq (q, for functors that read a q row) when given;
// vec() gathers the lane statistics of what it reads (Lanes8), which the vector loops turn into
// the row sums and, once per row, into the flags through report().
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
#include <cmath>
#include <cstdint>

#include "../common/philox.h"
#include "../common/sampling_math.h"
#include "simd.h"

namespace specdec {

// check=True: the sums of the rows a pass reads whole (p, and q where the functor reads one), for
// the sum-to-1 check (prob_sum_tolerance, checks.h). The vector loops sum in float lanes flushed
// to double every 128 elements (16 float terms per lane at most), the scalar loops in double:
// nothing measurable is lost over 128K ids. Filled by race_row and the tree's residual_words when
// they are given one, for a functor that checks.
struct RowSums {
  double p = 0.0, q = 0.0;
  bool read = false;  // set by a pass that read the rows whole
};

// A value a checking kernel accepts as a probability: in [0, hi].
inline bool prob_ok(float x, float hi) { return x >= 0.f && x <= hi; }  // NaN fails both

// Largest accepted probability value: chain ops accept any finite value >= 0, tree ops [0, 1].
constexpr float kFiniteMax = 3.40282347e+38f;

// prob_ok of every value of row[0..V): the exact finding behind lanes that are not clean (below).
template <typename T>
bool row_ok(const T* row, int64_t V, float hi) {
  for (int64_t v = 0; v < V; ++v) {
    if (!prob_ok(static_cast<float>(row[v]), hi)) return false;
  }
  return true;
}

#if SPECDEC_HAVE_AVX2
// check=True in the vector loops: what they gather, lane by lane, about a row read whole, in two
// or three instructions per eight values and no branch: the sum (the loops flush it to double
// every 128 elements), the bitwise or of the values (a sign bit: a negative value, or -0.0) and,
// with kMax, their maximum (max_ps with the new value first ignores a NaN). A row is clean when
// no sign bit is set, its sum is finite (a NaN or +inf value makes it NaN or inf) and the maximum
// is within the bound: then every value passes prob_ok. Otherwise (an invalid row; rarely a -0.0,
// or finite values whose sum overflows) row_ok decides, value by value.
struct Lanes8 {
  __m256 sum, bits, hi;
};

SPECDEC_AVX2 inline Lanes8 lanes8() {
  return {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_set1_ps(-INFINITY)};
}

template <bool kMax>
SPECDEC_AVX2 inline void lanes8_add(Lanes8& l, __m256 x) {
  l.sum = _mm256_add_ps(l.sum, x);
  l.bits = _mm256_or_ps(l.bits, x);
  if constexpr (kMax) l.hi = _mm256_max_ps(x, l.hi);
}

SPECDEC_AVX2 inline bool lanes8_clean(const Lanes8& l, double sum, float hi) {
  return _mm256_movemask_ps(l.bits) == 0 && std::isfinite(sum) && hmax8(l.hi) <= hi;
}
#endif

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
// kCheck (the functor checks): gather the lane statistics, report them to the functor at the end
// and fill *sums when given. Without it the statistics are dead values that the compiler drops:
// check=False runs the loop it ran before the checks existed.
template <bool kCheck, typename F>
SPECDEC_AVX2 int64_t race_avx2(const F& f, int64_t V, const DrawKey& key, RowSums* sums) {
  constexpr int kVecs = 16;  // 128 elements per step: one uniforms128 call
  float best = 0.f;
  int64_t best_idx = -1;
  const __m256 zero = _mm256_setzero_ps();
  __m256 bm = zero;  // best * (1 - 1e-5): the threshold is bm (1 - u) = bm - bm u
  alignas(32) float rbuf[8 * kVecs];
  alignas(32) float ubuf[8];
  Lanes8 lp = lanes8(), lq = lanes8();  // check=True: the statistics of the rows
  __m256d sum_p = _mm256_setzero_pd(), sum_q = sum_p;
  double tail_p = 0.0, tail_q = 0.0;
  for (int64_t base = 0; base < V; base += 8 * kVecs) {
    __m256 r[kVecs];
    if (base + 8 * kVecs <= V) {
      for (int t = 0; t < kVecs; ++t) r[t] = f.vec(base + 8 * t, lp, lq);
      if constexpr (kCheck) {
        sum_p = add_to_double(sum_p, lp.sum);
        sum_q = add_to_double(sum_q, lq.sum);
        lp.sum = lq.sum = zero;
      }
    } else {  // tail: elements past V race with r = 0 and never win
      double* tp = kCheck ? &tail_p : nullptr;
      double* tq = kCheck ? &tail_q : nullptr;
      for (int64_t j = 0; j < 8 * kVecs; ++j) rbuf[j] = base + j < V ? f.at(base + j, tp, tq) : 0.f;
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
  if constexpr (kCheck) {
    const double sp = hsum4d(sum_p) + tail_p, sq = hsum4d(sum_q) + tail_q;
    f.report(V, lp, sp, lq, sq);
    if (sums) *sums = {sp, sq, true};
  }
  return best_idx;
}
#endif

// Row functors of the races: p itself, the residual max(0, p - q) after a rejection, and p without
// the rejected token for deterministic drafts. With check=True the kernels hand them flags
// (bad_p, bad_q) that they set when a value they read is not a probability (prob_ok), and the
// passes sum the rows they read whole (RowSums), so the value checks ride along the pass the race
// makes anyway instead of scanning the inputs again.
template <typename T>
struct RowP {
  const T* p;
  bool* bad_p = nullptr;
  float hi = kFiniteMax;
  float at(int64_t v, double* sp = nullptr, double* = nullptr) const {
    const float x = static_cast<float>(p[v]);
    if (bad_p) {
      if (!prob_ok(x, hi)) *bad_p = true;
      if (sp) *sp += x;
    }
    return x;
  }
#if SPECDEC_HAVE_AVX2
  SPECDEC_AVX2 __m256 vec(int64_t v, Lanes8& lp, Lanes8&) const {
    const __m256 x = load8(p + v);
    if (bad_p) lanes8_add<true>(lp, x);
    return x;
  }
  SPECDEC_AVX2 void report(int64_t V, const Lanes8& lp, double sp, const Lanes8&, double) const {
    if (bad_p && !lanes8_clean(lp, sp, hi) && !row_ok(p, V, hi)) *bad_p = true;
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
    return std::max(0.f, pv - qv);
  }
#if SPECDEC_HAVE_AVX2
  SPECDEC_AVX2 __m256 vec(int64_t v, Lanes8& lp, Lanes8& lq) const {
    const __m256 pv = load8(p + v), qv = load8(q + v);
    if (bad_p) lanes8_add<false>(lp, pv);
    if (bad_q) lanes8_add<false>(lq, qv);
    return _mm256_max_ps(_mm256_sub_ps(pv, qv), _mm256_setzero_ps());
  }
  SPECDEC_AVX2 void report(int64_t V, const Lanes8& lp, double sp, const Lanes8& lq, double sq) const {
    if (bad_p && !lanes8_clean(lp, sp, kFiniteMax) && !row_ok(p, V, kFiniteMax)) *bad_p = true;
    if (bad_q && !lanes8_clean(lq, sq, kFiniteMax) && !row_ok(q, V, kFiniteMax)) *bad_q = true;
  }
#endif
};

template <typename T>
struct RowWithout {
  const T* p;
  int64_t skip;
  bool* bad_p = nullptr;
  float at(int64_t v, double* sp = nullptr, double* = nullptr) const {
    const float x = static_cast<float>(p[v]);
    if (bad_p) {
      if (!prob_ok(x, kFiniteMax)) *bad_p = true;
      if (sp) *sp += x;
    }
    return v == skip ? 0.f : x;
  }
#if SPECDEC_HAVE_AVX2
  SPECDEC_AVX2 __m256 vec(int64_t v, Lanes8& lp, Lanes8&) const {
    const __m256 x = load8(p + v);
    if (bad_p) lanes8_add<false>(lp, x);  // the skipped token included: the statistics are the row's
    if (skip < v || skip >= v + 8) return x;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i hit = _mm256_cmpeq_epi32(lane, _mm256_set1_epi32(static_cast<int>(skip - v)));
    return _mm256_andnot_ps(_mm256_castsi256_ps(hit), x);
  }
  SPECDEC_AVX2 void report(int64_t V, const Lanes8& lp, double sp, const Lanes8&, double) const {
    if (bad_p && !lanes8_clean(lp, sp, kFiniteMax) && !row_ok(p, V, kFiniteMax)) *bad_p = true;
  }
#endif
};

// The race over a row functor, on the fastest path this CPU (and the cpu_simd switch) allows.
// `sums` (check=True, for a functor that checks): set to the sums of the rows the race read.
template <typename F>
int64_t race_row(const F& f, int64_t V, const DrawKey& key, RowSums* sums = nullptr) {
#if SPECDEC_HAVE_AVX2
  if (simd_enabled()) return f.bad_p ? race_avx2<true>(f, V, key, sums) : race_avx2<false>(f, V, key, sums);
#endif
  if (!sums) return race_over([&](int64_t v) { return f.at(v); }, V, key);
  double sp = 0.0, sq = 0.0;
  const int64_t y = race_over([&](int64_t v) { return f.at(v, &sp, &sq); }, V, key);
  *sums = {sp, sq, true};
  return y;
}

}  // namespace specdec
