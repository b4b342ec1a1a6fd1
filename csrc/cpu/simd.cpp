// Run-time selection of the CPU kernels' AVX2 paths (simd.h) and the cpu_simd op that reports or
// changes it (tests run every CPU kernel with and without AVX2 and compare both with the
// reference; benchmarks compare the two paths).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>

#include "simd.h"

// GCC 12 warns inside its own avx512fintrin.h (an "undefined" source operand of the unmasked
// forms); the operand is never read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace specdec {
namespace {

int best_supported() {
#if SPECDEC_HAVE_AVX2
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return __builtin_cpu_supports("avx512f") ? 2 : 1;
  }
#endif
  return 0;
}

int initial_level() {
  int level = best_supported();
  if (const char* env = std::getenv("SPECDEC_CPU_SIMD")) {
    if (env[0] >= '0' && env[0] <= '2') level = std::min(level, env[0] - '0');
  }
  return level;
}

std::atomic<int>& level_ref() {
  static std::atomic<int> level{initial_level()};
  return level;
}

// level -1: report the current level; -2: report the best the CPU supports. Otherwise set
// min(level, supported) and return the level before the call.
int64_t cpu_simd(int64_t level) {
  if (level == -2) return best_supported();
  const int before = level_ref().load();
  if (level >= 0) {
    const int64_t capped = std::min<int64_t>(level, best_supported());
    level_ref().store(static_cast<int>(capped));
  }
  return before;
}

}  // namespace

int simd_level() { return level_ref().load(std::memory_order_relaxed); }

#if SPECDEC_HAVE_AVX2
// Two chains of sixteen lanes (blocks 32 j + 16 g + 4 (i % 4) + i / 4 for lane i of chain g): the
// in-lane transpose lands every element in place, and two chains in flight hide the latency of a
// round (multiply -> blend -> xor3).
SPECDEC_AVX512 void uniforms128_avx512(const DrawKey& key, uint32_t j, __m256 u[16]) {
  const __m512i M0 = _mm512_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m512i M1 = _mm512_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m512i lanes = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m512i c0[2], c1[2], c2[2], c3[2];
  for (int g = 0; g < 2; ++g) {
    c0[g] = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(32u * j + 16u * g)), lanes);
    c1[g] = _mm512_set1_epi32(static_cast<int>(key.stream));
    c2[g] = _mm512_set1_epi32(static_cast<int>(key.d0));
    c3[g] = _mm512_set1_epi32(static_cast<int>(key.d1));
  }
  uint32_t k0 = key.k0, k1 = key.k1;
  for (int r = 0; r < 10; ++r) {
    const __m512i K0 = _mm512_set1_epi32(static_cast<int>(k0)), K1 = _mm512_set1_epi32(static_cast<int>(k1));
    for (int g = 0; g < 2; ++g) {
      const __m512i e0 = _mm512_mul_epu32(c0[g], M0), o0 = _mm512_mul_epu32(_mm512_srli_epi64(c0[g], 32), M0);
      const __m512i e1 = _mm512_mul_epu32(c2[g], M1), o1 = _mm512_mul_epu32(_mm512_srli_epi64(c2[g], 32), M1);
      const __m512i hi0 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(e0, 32), o0);
      const __m512i lo0 = _mm512_mask_blend_epi32(0xAAAA, e0, _mm512_slli_epi64(o0, 32));
      const __m512i hi1 = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(e1, 32), o1);
      const __m512i lo1 = _mm512_mask_blend_epi32(0xAAAA, e1, _mm512_slli_epi64(o1, 32));
      c0[g] = _mm512_ternarylogic_epi32(hi1, c1[g], K0, 0x96);  // hi1 ^ c1 ^ k0
      c2[g] = _mm512_ternarylogic_epi32(hi0, c3[g], K1, 0x96);  // hi0 ^ c3 ^ k1
      c1[g] = lo1;
      c3[g] = lo0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const __m512 half = _mm512_set1_ps(0.5f), scale = _mm512_set1_ps(1.1920928955078125e-07f);
  for (int g = 0; g < 2; ++g) {
    const __m512i t0 = _mm512_unpacklo_epi32(c0[g], c1[g]), t1 = _mm512_unpackhi_epi32(c0[g], c1[g]);
    const __m512i t2 = _mm512_unpacklo_epi32(c2[g], c3[g]), t3 = _mm512_unpackhi_epi32(c2[g], c3[g]);
    const __m512i e[4] = {_mm512_unpacklo_epi64(t0, t2), _mm512_unpackhi_epi64(t0, t2),
                          _mm512_unpacklo_epi64(t1, t3), _mm512_unpackhi_epi64(t1, t3)};
    for (int k = 0; k < 4; ++k) {
      const __m512 x = _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(e[k], 9)), half), scale);
      u[8 * g + 2 * k] = _mm512_castps512_ps256(x);
      u[8 * g + 2 * k + 1] = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1));
    }
  }
}
#endif

TORCH_LIBRARY_IMPL(specdec, CatchAll, m) { m.impl("cpu_simd", &cpu_simd); }

}  // namespace specdec
