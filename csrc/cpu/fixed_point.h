// Exact masses of residual rows on the CPU: the 2^-64 fixed-point words of csrc/common/tree_math.h
// (fixed_point_add) summed over a row given by a row functor (race.h), vectorised. Integer sums do
// not depend on the order of the reduction, so these masses equal the reference's and the CUDA and
// Triton kernels' bit for bit. Used by the tree's residual after a rejected child and by block
// verification's m_i (chain.cpp).
#pragma once
#include <cmath>
#include <cstdint>

#include "../common/tree_math.h"
#include "race.h"
#include "simd.h"

namespace specdec {

#if SPECDEC_HAVE_AVX2
// fixed_point_add over four lanes: the same words, hi = floor(r 2^32) and lo = floor(r 2^64) -
// hi 2^32 (both exact integers below 2^33 in double), summed in double accumulators: integer
// values below 2^53 add exactly in double, so the words need no int64 conversion per element.
// The caller flushes the accumulators to int64 well before 2^53 (kFlushElements).
SPECDEC_AVX2 inline void fixed_point_acc4(__m256d r, __m256d& acc_hi, __m256d& acc_lo) {
  // r >= 0 and NaN-free (the residual maps NaN and negatives to 0); values above 1 only come from
  // invalid inputs and are clamped like fixed_point_add does.
  r = _mm256_min_pd(r, _mm256_set1_pd(1.0));
  const __m256d t = _mm256_mul_pd(r, _mm256_set1_pd(4294967296.0));  // r 2^32, exact
  const __m256d h = _mm256_round_pd(t, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  const __m256d l = _mm256_round_pd(_mm256_mul_pd(_mm256_sub_pd(t, h), _mm256_set1_pd(4294967296.0)),
                                    _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
  acc_hi = _mm256_add_pd(acc_hi, h);
  acc_lo = _mm256_add_pd(acc_lo, l);
}

SPECDEC_AVX2 inline void flush_words(__m256d& acc_hi, __m256d& acc_lo, int64_t& hi, int64_t& lo) {
  alignas(32) double hw[4], lw[4];
  _mm256_store_pd(hw, acc_hi);
  _mm256_store_pd(lw, acc_lo);
  for (int j = 0; j < 4; ++j) {
    hi += static_cast<int64_t>(hw[j]);
    lo += static_cast<int64_t>(lw[j]);
  }
  acc_hi = acc_lo = _mm256_setzero_pd();
}

// kCheck (the functor checks): as in race.h race_avx2, the lane statistics reported to the functor
// and the sums into *sums when given.
template <bool kCheck, typename F>
SPECDEC_AVX2 void residual_words_avx2(const F& f, int64_t V, int64_t& hi, int64_t& lo,
                                      RowSums* sums) {
  // Each lane adds at most 2^32 per element: flushing every 2^18 elements (2^16 per lane) keeps
  // the double sums below 2^49, exact.
  constexpr int64_t kFlushElements = int64_t(1) << 18;
  // Two pairs of accumulators: independent add chains for the two halves of each vector.
  __m256d ah = _mm256_setzero_pd(), al = _mm256_setzero_pd(), bh = ah, bl = ah;
  // check=True: the rows' lane statistics, sums flushed to double every 128 elements.
  Lanes8 lp = lanes8(), lq = lanes8();
  __m256d sum_p = _mm256_setzero_pd(), sum_q = sum_p;
  const int64_t V8 = V & ~int64_t(7);
  for (int64_t v = 0; v < V8; v += 8) {
    const __m256 r = f.vec(v, lp, lq);
    fixed_point_acc4(_mm256_cvtps_pd(_mm256_castps256_ps128(r)), ah, al);
    fixed_point_acc4(_mm256_cvtps_pd(_mm256_extractf128_ps(r, 1)), bh, bl);
    if (kCheck && ((v + 8) & 127) == 0) {
      sum_p = add_to_double(sum_p, lp.sum);
      sum_q = add_to_double(sum_q, lq.sum);
      lp.sum = lq.sum = _mm256_setzero_ps();
    }
    if (((v + 8) & (kFlushElements - 1)) == 0) {
      flush_words(ah, al, hi, lo);
      flush_words(bh, bl, hi, lo);
    }
  }
  flush_words(ah, al, hi, lo);
  flush_words(bh, bl, hi, lo);
  double tail_p = 0.0, tail_q = 0.0;
  double* tp = kCheck ? &tail_p : nullptr;
  double* tq = kCheck ? &tail_q : nullptr;
  for (int64_t v = V8; v < V; ++v) fixed_point_add(f.at(v, tp, tq), hi, lo);
  if constexpr (kCheck) {
    const double sp = hsum4d(add_to_double(sum_p, lp.sum)) + tail_p;
    const double sq = hsum4d(add_to_double(sum_q, lq.sum)) + tail_q;
    f.report(V, lp, sp, lq, sq);
    if (sums) *sums = {sp, sq, true};
  }
}
#endif

// The fixed-point words of a residual row functor's whole row (order-independent integer sums).
// `sums` (check=True, for a functor that checks): set to the sums of the rows read.
template <typename F>
void residual_words(const F& f, int64_t V, int64_t& hi, int64_t& lo, RowSums* sums) {
#if SPECDEC_HAVE_AVX2
  if (simd_enabled()) {
    return f.bad_p ? residual_words_avx2<true>(f, V, hi, lo, sums) : residual_words_avx2<false>(f, V, hi, lo, sums);
  }
#endif
  double sp = 0.0, sq = 0.0;
  for (int64_t v = 0; v < V; ++v) fixed_point_add(f.at(v, &sp, &sq), hi, lo);
  if (sums) *sums = {sp, sq, true};
}

#if SPECDEC_HAVE_AVX2
template <bool kCheck, typename F>
SPECDEC_AVX2 double row_sum_avx2(const F& f, int64_t V, RowSums* sums, double stop_above) {
  __m256d a = _mm256_setzero_pd(), b = a;
  Lanes8 lp = lanes8(), lq = lanes8();
  __m256d sum_p = _mm256_setzero_pd(), sum_q = sum_p;
  const int64_t V8 = V & ~int64_t(7);
  for (int64_t v = 0; v < V8; v += 8) {
    const __m256 r = f.vec(v, lp, lq);
    a = _mm256_add_pd(a, _mm256_cvtps_pd(_mm256_castps256_ps128(r)));
    b = _mm256_add_pd(b, _mm256_cvtps_pd(_mm256_extractf128_ps(r, 1)));
    if (kCheck && ((v + 8) & 127) == 0) {
      sum_p = add_to_double(sum_p, lp.sum);
      sum_q = add_to_double(sum_q, lq.sum);
      lp.sum = lq.sum = _mm256_setzero_ps();
    }
    if (((v + 8) & 2047) == 0) {  // a multiple of 128: the check sums were just flushed
      const double partial = hsum4d(_mm256_add_pd(a, b));
      if (partial > stop_above) {
        if constexpr (kCheck) f.report(V, lp, hsum4d(sum_p), lq, hsum4d(sum_q));  // *sums: not read whole
        return partial;
      }
    }
  }
  double tail_p = 0.0, tail_q = 0.0, tail = 0.0;
  double* tp = kCheck ? &tail_p : nullptr;
  double* tq = kCheck ? &tail_q : nullptr;
  for (int64_t v = V8; v < V; ++v) tail += f.at(v, tp, tq);
  if constexpr (kCheck) {
    const double sp = hsum4d(add_to_double(sum_p, lp.sum)) + tail_p;
    const double sq = hsum4d(add_to_double(sum_q, lq.sum)) + tail_q;
    f.report(V, lp, sp, lq, sq);
    if (sums) *sums = {sp, sq, true};
  }
  return hsum4d(_mm256_add_pd(a, b)) + tail;
}
#endif

// The plain float64 sum of a residual row functor's row: NOT order-independent (the vector and
// scalar paths add in different orders), but within a relative 2^-53 * V of the exact sum, which is
// all a caller that only compares the sum with a threshold far from it needs (chain.cpp
// block_weigh). Four times fewer operations per element than residual_words; checks ride along as
// there. The pass returns a partial sum as soon as it exceeds `stop_above` (the terms are >= 0, so
// the whole sum is larger still): the rest of the row is never read, and with check=True only the
// values read are checked (*sums is left alone: the row was not read whole).
template <typename F>
double row_sum(const F& f, int64_t V, RowSums* sums, double stop_above = INFINITY) {
#if SPECDEC_HAVE_AVX2
  if (simd_enabled()) {
    return f.bad_p ? row_sum_avx2<true>(f, V, sums, stop_above) : row_sum_avx2<false>(f, V, sums, stop_above);
  }
#endif
  double sp = 0.0, sq = 0.0, s = 0.0;
  for (int64_t v = 0; v < V; ++v) {
    s += f.at(v, &sp, &sq);
    if ((v & 2047) == 2047 && s > stop_above) return s;
  }
  if (sums) *sums = {sp, sq, true};
  return s;
}

}  // namespace specdec
