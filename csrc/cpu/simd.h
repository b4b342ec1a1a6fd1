// Vector building blocks of the CPU kernels, selected at run time.
//
// Why: a row of V = 32000 float32 is 125 KiB, which one core streams in about 3 us; the scalar
// kernels spent 6 ns per element on a Philox block, two logs and scalar exps, i.e. 60x that. The
// pieces here do the same arithmetic eight lanes at a time:
//   - uniforms128: the Philox uniforms of 128 elements per call (four AVX2 chains of 8 blocks, or
//     two AVX-512 chains of 16 at level 2), bit-identical to philox.h (integer arithmetic); the
//     race (race.h) and the Gumbel scan (gumbel.cpp) use them with exact pruning tests that leave
//     the logs, and so the bits of every key, to the scalar formulas of sampling_math.h.
//   - exp8 (about 1 ulp) for values that are outputs, exp8_le0 (1.9e-7, half the multiplies) for
//     the terms of sums, log8; used only where the result is compared with a tolerance, never
//     where a draw depends on it.
//   - loads/stores of every accepted dtype, maxima, argmax, left-packing.
// Every function is compiled for AVX2 + FMA + F16C (AVX-512F for the level-2 Philox) with a target
// attribute, so the library still loads on any x86-64: callers check simd_enabled() /
// simd_level() (the CPU's cpuid, capped by SPECDEC_CPU_SIMD and the torch.ops.specdec.cpu_simd
// switch that tests use to run the lower paths too) and fall back to the scalar code otherwise.
// Non-x86 builds compile only the scalar paths.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SPECDEC_HAVE_AVX2 1
#include <immintrin.h>
#define SPECDEC_AVX2 __attribute__((target("avx2,fma,f16c")))
#define SPECDEC_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))
#else
#define SPECDEC_HAVE_AVX2 0
#define SPECDEC_AVX2
#endif

#include "../common/philox.h"

namespace specdec {

// 0 = scalar code only, 1 = AVX2, 2 = AVX2 with AVX-512 Philox. Starts at the best the CPU
// supports, capped by the environment variable SPECDEC_CPU_SIMD (0, 1 or 2) when set.
int simd_level();
inline bool simd_enabled() { return simd_level() >= 1; }

#if SPECDEC_HAVE_AVX2

// Eight floats from p[0..7] of any accepted dtype (the conversions are exact, as the scalar
// static_cast<float> is).
SPECDEC_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
SPECDEC_AVX2 inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
SPECDEC_AVX2 inline __m256 load8(const c10::BFloat16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

SPECDEC_AVX2 inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
SPECDEC_AVX2 inline void store8(c10::Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
SPECDEC_AVX2 inline void store8(c10::BFloat16* p, __m256 v) {
  // Round to nearest even as c10::BFloat16's constructor does (NaN kept NaN).
  alignas(32) float f[8];
  _mm256_store_ps(f, v);
  for (int j = 0; j < 8; ++j) p[j] = c10::BFloat16(f[j]);
}

// The 32-bit products M * c: low words and high words.
SPECDEC_AVX2 inline void mulhilo8(__m256i m, __m256i c, __m256i* lo, __m256i* hi) {
  const __m256i even = _mm256_mul_epu32(c, m);                         // lanes 0, 2, 4, 6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(c, 32), m);   // lanes 1, 3, 5, 7
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

// Sixteen Philox4x32-10 blocks as two independent groups of eight: counters (c0[g][i], c1, c2, c3),
// key (k0, k1), as philox4x32_10. A round is a chain of multiply -> blend -> xor (~7 cycles of
// latency); two chains in flight keep the multipliers busy instead of waiting on it.
SPECDEC_AVX2 inline void philox8x2(__m256i c0a, __m256i c0b, uint32_t c1s, uint32_t c2s, uint32_t c3s,
                                   uint32_t k0, uint32_t k1, __m256i out[8]) {
  const __m256i M0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i M1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  __m256i c1a = _mm256_set1_epi32(static_cast<int>(c1s)), c1b = c1a;
  __m256i c2a = _mm256_set1_epi32(static_cast<int>(c2s)), c2b = c2a;
  __m256i c3a = _mm256_set1_epi32(static_cast<int>(c3s)), c3b = c3a;
  for (int r = 0; r < 10; ++r) {
    const __m256i K0 = _mm256_set1_epi32(static_cast<int>(k0)), K1 = _mm256_set1_epi32(static_cast<int>(k1));
    __m256i lo0a, hi0a, lo1a, hi1a, lo0b, hi0b, lo1b, hi1b;
    mulhilo8(M0, c0a, &lo0a, &hi0a);
    mulhilo8(M0, c0b, &lo0b, &hi0b);
    mulhilo8(M1, c2a, &lo1a, &hi1a);
    mulhilo8(M1, c2b, &lo1b, &hi1b);
    c0a = _mm256_xor_si256(_mm256_xor_si256(hi1a, c1a), K0);
    c0b = _mm256_xor_si256(_mm256_xor_si256(hi1b, c1b), K0);
    c2a = _mm256_xor_si256(_mm256_xor_si256(hi0a, c3a), K1);
    c2b = _mm256_xor_si256(_mm256_xor_si256(hi0b, c3b), K1);
    c1a = lo1a;
    c1b = lo1b;
    c3a = lo0a;
    c3b = lo0b;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0a;
  out[1] = c1a;
  out[2] = c2a;
  out[3] = c3a;
  out[4] = c0b;
  out[5] = c1b;
  out[6] = c2b;
  out[7] = c3b;
}

// uniforms128 with sixteen-lane Philox (AVX-512F, simd level 2: xor3 in one instruction, half the
// instructions of the AVX2 rounds). Called, not inlined, from the AVX2 loops: once per 128 elements.
__attribute__((noinline)) SPECDEC_AVX512 void uniforms128_avx512(const DrawKey& key, uint32_t j, __m256 u[16]);

// The uniforms of elements [64 j, 64 j + 64) of one draw (blocks 16 j .. 16 j + 15), in element
// order: u[t] holds elements 64 j + 8 t .. 64 j + 8 t + 7. Lane i of group g computes block
// 16 j + 8 g + 2 (i % 4) + i / 4, so that the in-lane 4x4 transpose of the four output words lands
// every element in place without a cross-lane shuffle.
SPECDEC_AVX2 inline void uniforms64(const DrawKey& key, uint32_t j, __m256 u[8]) {
  const __m256i lanes = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  const __m256i blocks = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(16u * j)), lanes);
  __m256i w[8];
  philox8x2(blocks, _mm256_add_epi32(blocks, _mm256_set1_epi32(8)), key.stream, key.d0, key.d1, key.k0,
            key.k1, w);
  // word_to_uniform: ((w >> 9) + 0.5) * 2^-23, every step exact in float32.
  const __m256 half = _mm256_set1_ps(0.5f), scale = _mm256_set1_ps(1.1920928955078125e-07f);
  for (int g = 0; g < 2; ++g) {
    const __m256i* x = w + 4 * g;
    const __m256i t0 = _mm256_unpacklo_epi32(x[0], x[1]);
    const __m256i t1 = _mm256_unpackhi_epi32(x[0], x[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(x[2], x[3]);
    const __m256i t3 = _mm256_unpackhi_epi32(x[2], x[3]);
    const __m256i e[4] = {_mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2),
                          _mm256_unpacklo_epi64(t1, t3), _mm256_unpackhi_epi64(t1, t3)};
    for (int t = 0; t < 4; ++t) {
      u[4 * g + t] =
          _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(e[t], 9)), half), scale);
    }
  }
}

// The uniforms of elements [128 j, 128 j + 128) in element order (u[t]: elements 128 j + 8 t ..).
SPECDEC_AVX2 inline void uniforms128(const DrawKey& key, uint32_t j, __m256 u[16]) {
  if (simd_level() >= 2) return uniforms128_avx512(key, j, u);
  uniforms64(key, 2 * j, u);
  uniforms64(key, 2 * j + 1, u + 8);
}

// exp(x) for float lanes (Cephes expf: n = round(x / ln 2), r = x - n ln 2 in two steps, e^r =
// 1 + r + r^2 P5(r) on |r| <= ln2 / 2, about 1 ulp; 2^n added to the exponent bits). Below -87.3
// (and -inf) it returns 0, not a denormal; above 88.4 the input is clamped (callers subtract a
// maximum first). Its accuracy matters where it makes outputs: top-p keeps or drops a token by
// comparing sums of these probabilities with top_p, and a 2-ulp exp flips ties there.
SPECDEC_AVX2 inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3365447505531f);
  const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(lo, _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x));  // NaN stays NaN
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
  // y in [0.7, 1.42], n in [-126, 127]: the exponent field stays a normal float's.
  y = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(y), _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23)));
  return _mm256_andnot_ps(underflow, y);
}

// log(x) for float lanes (Cephes logf: frexp, then a degree-9 polynomial on [sqrt(1/2) - 1,
// sqrt(2) - 1]). Inputs are clamped to the smallest normal float: callers mask x <= 0 themselves.
SPECDEC_AVX2 inline __m256 log8(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(1.17549435e-38f));
  const __m256i bits = _mm256_castps_si256(x);
  __m256 e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126)));
  // mantissa in [0.5, 1)
  __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007FFFFF)),
                                                 _mm256_set1_epi32(0x3F000000)));
  const __m256 small = _mm256_cmp_ps(m, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
  e = _mm256_sub_ps(e, _mm256_and_ps(small, _mm256_set1_ps(1.f)));
  m = _mm256_sub_ps(_mm256_add_ps(m, _mm256_and_ps(small, m)), _mm256_set1_ps(1.f));
  const __m256 z = _mm256_mul_ps(m, m);
  __m256 y = _mm256_set1_ps(7.0376836292e-2f);
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(-1.1514610310e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(1.1676998740e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(-1.2420140846e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(1.4249322787e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(-1.6668057665e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(2.0000714765e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(-2.4999993993e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(3.3333331174e-1f));
  y = _mm256_mul_ps(_mm256_mul_ps(y, m), z);
  y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
  return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), _mm256_add_ps(m, y));
}

// exp(x) for x <= 0, the terms of softmax-type sums (x = logit - max), at about half the
// multiply-pipe work of exp8, which bounds those loops: 2^t with t = x log2(e) split into
// n + f, |f| <= 1/2, and 2^f from a degree-5 near-minimax polynomial (relative error 1.9e-7 in
// float32), n added to the exponent bits. Rounding t costs |t| 2^-24 of relative error, so a term
// e^x is within 2^-24 |x| log2(e) + 1.9e-7 of exact: below 1e-6 for the terms that matter to a
// sum >= 1 (x > -14), and negligible beyond (those terms are below 1e-6 of the sum). x < -87.3
// (-inf included) gives exp(-87.3) ~ 1.2e-38, not 0; NaN stays NaN. Only for sums: probabilities
// that are outputs use exp8 (a masked token's probability must be exactly 0).
SPECDEC_AVX2 inline __m256 exp8_le0(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-87.3365447505531f), x);  // max_ps(lo, NaN) returns the NaN
  const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
  const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(t, n);
  // Fitted with the constant term pinned to 1: exp(0) is exactly 1, so a one-hot row sums to 1.
  __m256 y = _mm256_set1_ps(1.3264724984765053e-3f);
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(9.671512991189957e-3f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(5.550733581185341e-2f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(2.4022242426872253e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(6.931470036506653e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.f));
  // y in [0.7, 1.42] and n >= -126: adding n to the exponent field stays a normal float (n of a
  // NaN lane is 0x80000000, whose shifted value is 0: the NaN is kept).
  return _mm256_castsi256_ps(
      _mm256_add_epi32(_mm256_castps_si256(y), _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23)));
}

// Left-packing of the lanes selected by an 8-bit mask (AVX2 has no compress instruction): a
// permutation per mask from a 256-entry table, one full store, the pointer advanced by the count.
// `dst` needs room for 8 floats past the last kept one.
struct CompressTable {
  alignas(32) int32_t idx[256][8];
  constexpr CompressTable() : idx() {
    for (int m = 0; m < 256; ++m) {
      int k = 0;
      for (int j = 0; j < 8; ++j) {
        if (m & (1 << j)) idx[m][k++] = j;
      }
      for (; k < 8; ++k) idx[m][k] = 0;
    }
  }
};
inline constexpr CompressTable kCompress{};

SPECDEC_AVX2 inline float* compress_store8(float* dst, __m256 v, int mask) {
  const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompress.idx[mask]));
  _mm256_storeu_ps(dst, _mm256_permutevar8x32_ps(v, perm));
  return dst + __builtin_popcount(static_cast<unsigned>(mask));
}

SPECDEC_AVX2 inline float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

// Adds the eight lanes of v to a four-lane double accumulator (float lanes summed in double, as
// the scalar kernels do, so 128K terms lose nothing measurable).
SPECDEC_AVX2 inline __m256d add_to_double(__m256d acc, __m256 v) {
  acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  return _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

SPECDEC_AVX2 inline double hsum4d(__m256d v) {
  alignas(32) double d[4];
  _mm256_store_pd(d, v);
  return (d[0] + d[1]) + (d[2] + d[3]);
}

// The maximum of row[0..V) (NaN ignored, as std::max(m, x) ignores it) and whether a NaN occurs:
// the first pass of the softmax-type kernels, which streams the row from memory anyway.
template <typename T>
SPECDEC_AVX2 float max_and_nan_avx2(const T* row, int64_t V, bool* nan) {
  const int64_t V16 = V & ~int64_t(15);
  __m256 mv = _mm256_set1_ps(-INFINITY), un = _mm256_setzero_ps();
  for (int64_t v = 0; v < V16; v += 16) {
    const __m256 x0 = load8(row + v), x1 = load8(row + v + 8);
    mv = _mm256_max_ps(_mm256_max_ps(x0, x1), mv);  // max_ps(x, m) returns m when x is NaN
    un = _mm256_or_ps(un, _mm256_cmp_ps(x0, x1, _CMP_UNORD_Q));  // either lane NaN
  }
  float mx = hmax8(mv);
  bool found = _mm256_movemask_ps(un) != 0;
  for (int64_t v = V16; v < V; ++v) {
    const float x = static_cast<float>(row[v]);
    mx = std::max(mx, x);
    found |= x != x;
  }
  *nan = found;
  return mx;
}

template <typename T>
SPECDEC_AVX2 int64_t argmax_row_avx2(const T* row, int64_t V, bool* nan) {
  const int64_t V8 = V & ~int64_t(7);
  bool found = false;
  const float best = max_and_nan_avx2(row, V, &found);  // NaN never becomes the maximum
  if (nan && found) *nan = true;
  if (!(best > -INFINITY)) return 0;
  const __m256 bv = _mm256_set1_ps(best);
  for (int64_t v = 0; v < V8; v += 8) {
    const int hit = _mm256_movemask_ps(_mm256_cmp_ps(load8(row + v), bv, _CMP_EQ_OQ));
    if (hit) return v + __builtin_ctz(static_cast<unsigned>(hit));
  }
  for (int64_t v = V8; v < V; ++v) {
    if (static_cast<float>(row[v]) == best) return v;
  }
  return 0;  // unreachable: best is one of the values
}

#endif  // SPECDEC_HAVE_AVX2

// check=True finding of one logit row (checks.h RowLogitError): NaN or +inf, or with `scaled` a
// finite logit whose x / temp overflows float32 (the Gumbel ops check the scaled logits), else
// every entry -inf. The scalar paths call it before their pass; the vector paths fold the same
// tests into their first pass.
template <typename T>
int8_t row_logit_error(const T* row, int64_t V, float temp, bool scaled) {
  float mx = -INFINITY;
  for (int64_t v = 0; v < V; ++v) {
    const float x = static_cast<float>(row[v]);
    if (x != x || x == INFINITY) return 1;
    mx = std::max(mx, x);
  }
  if (mx == -INFINITY) return 2;
  if (scaled && mx / temp == INFINITY) return 1;
  return 0;
}

// Index of the largest value of row[0..V), ties to the smallest index; NaN never wins; 0 when no
// value exceeds -inf. Two passes over a row that is in cache after the first: a vector maximum,
// then the first lane equal to it. `nan` (when given) is set if the row holds a NaN.
template <typename T>
int64_t argmax_row(const T* row, int64_t V, bool* nan = nullptr) {
#if SPECDEC_HAVE_AVX2
  if (simd_enabled() && V >= 8) return argmax_row_avx2(row, V, nan);
#endif
  float best = -INFINITY;
  int64_t arg = 0;
  for (int64_t v = 0; v < V; ++v) {
    const float x = static_cast<float>(row[v]);
    if (nan && x != x) *nan = true;
    if (x > best) {
      best = x;
      arg = v;
    }
  }
  return arg;
}

}  // namespace specdec
