// draft_entropy on the CPU: one row per task, two passes over the row (the maximum, then
// Z = sum exp(s - m) and A = sum exp(s - m) (s - m), float exps accumulated in double),
// H = log Z - A / Z. The second pass re-reads a row that is still in cache (V = 32000 float32 is
// 128 KiB), and double sums keep the result within float32 rounding of the float64 reference.
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

#if SPECDEC_HAVE_AVX2
// The same two passes eight lanes at a time. The maximum is taken on the raw logits (x -> x / t is
// monotone for t > 0, so max(x) / t is the maximum of the scaled row), with the NaN test, in the
// pass that streams the row from memory; d = x / t - m is one fused multiply-add with 1 / t
// (within an ulp of the division, inside the float32 tolerance of the result). exp8_le0 for the
// exponentials; 128 elements per step summed in float in two chains (8 terms a lane each), then
// added to double accumulators, so no add chain limits the loop and 128K terms lose nothing.
template <typename T>
SPECDEC_AVX2 double entropy_row_avx2(const T* row, int64_t V, float t) {
  const int64_t V32 = V & ~int64_t(31);
  bool bad = false;
  const float m = max_and_nan_avx2(row, V, &bad) / t;
  // A NaN logit, or +inf (inf - inf) or an all -inf row (-inf + inf): NaN, as the scalar sums give.
  if (bad || !(m > -INFINITY && m < INFINITY)) return std::numeric_limits<double>::quiet_NaN();
  const __m256 itv = _mm256_set1_ps(1.f / t), mm = _mm256_set1_ps(m);
  __m256d z = _mm256_setzero_pd(), a = _mm256_setzero_pd();
  // Tokens below the float range of exp (masked ones, -inf, included) add exactly 0 to Z and A:
  // e is zeroed there and d clamped, so that 0 * d is never 0 * -inf.
  const __m256 lo = _mm256_set1_ps(-87.3365447505531f);
  auto term = [&](int64_t v, __m256& es, __m256& eds) SPECDEC_AVX2 {
    const __m256 raw = _mm256_fmsub_ps(load8(row + v), itv, mm);
    const __m256 d = _mm256_max_ps(raw, lo);
    const __m256 e = _mm256_and_ps(exp8_le0(d), _mm256_cmp_ps(raw, lo, _CMP_GE_OQ));
    es = _mm256_add_ps(es, e);
    eds = _mm256_fmadd_ps(e, d, eds);
  };
  // 128 elements per step in two independent float chains (8 terms a lane each), then double.
  const int64_t V128 = V & ~int64_t(127);
  int64_t v = 0;
  for (; v < V128; v += 128) {
    __m256 e0 = _mm256_setzero_ps(), d0 = e0, e1 = e0, d1 = e0;
    for (int j = 0; j < 16; j += 2) {
      term(v + 8 * j, e0, d0);
      term(v + 8 * j + 8, e1, d1);
    }
    z = add_to_double(z, _mm256_add_ps(e0, e1));
    a = add_to_double(a, _mm256_add_ps(d0, d1));
  }
  for (; v < V32; v += 32) {
    __m256 es = _mm256_setzero_ps(), eds = es;
    for (int j = 0; j < 4; ++j) term(v + 8 * j, es, eds);
    z = add_to_double(z, es);
    a = add_to_double(a, eds);
  }
  double zs = hsum4d(z), as = hsum4d(a);
  for (int64_t v = V32; v < V; ++v) {
    const float d = static_cast<float>(row[v]) / t - m;
    if (d == -std::numeric_limits<float>::infinity()) continue;
    const float e = std::exp(d);
    zs += e;
    as += static_cast<double>(e) * d;
  }
  return std::log(zs) - as / zs;
}
#endif

at::Tensor draft_entropy_cpu(const at::Tensor& logits_in, const at::Tensor& temperature, bool check) {
  const int64_t R = check_entropy_args(logits_in, temperature);
  if (check) check_temperature_values(temperature, "temperature must be > 0 and finite in every row");
  const at::Tensor logits = unit_last_stride(logits_in);
  const int64_t V = logits.size(1);
  at::Tensor out = at::empty({R}, logits.options().dtype(at::kFloat));
  if (R == 0) return out;
  const float* temp = temperature.data_ptr<float>();
  const int64_t ts = temperature.stride(0);
  float* h = out.data_ptr<float>();
  // check=True costs nothing on good rows: NaN or +inf logits and all -inf rows are exactly the
  // rows whose entropy comes out NaN, and only those are looked at again.
  std::vector<int8_t> err(check ? R : 0, kRowOk);
  SPECDEC_DISPATCH_PROBS(logits.scalar_type(), "draft_entropy_cpu", [&] {
    const scalar_t* L = logits.data_ptr<scalar_t>();
    const int64_t sr = logits.stride(0);
    at::parallel_for(0, R, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = L + r * sr;
        const float t = temp[r * ts];
#if SPECDEC_HAVE_AVX2
        if (simd_enabled() && t > 0.f) {  // (the maximum pass assumes t > 0)
          const double hv = entropy_row_avx2(row, V, t);
          h[r] = static_cast<float>(hv > 0.0 ? hv : (hv == hv ? 0.0 : hv));
          continue;
        }
#endif
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<float>(row[v]) / t);
        double z = 0.0, a = 0.0;
        for (int64_t v = 0; v < V; ++v) {
          const float d = static_cast<float>(row[v]) / t - m;
          if (d == -std::numeric_limits<float>::infinity()) continue;  // a masked token: p = 0
          const float e = std::exp(d);  // float exp (~4x cheaper than double); sums stay double
          z += e;
          a += static_cast<double>(e) * d;
        }
        // An all -inf row (rejected by check=True) gives z = 0: NaN, as the reference does.
        const double hv = std::log(z) - a / z;
        h[r] = static_cast<float>(hv > 0.0 ? hv : (hv == hv ? 0.0 : hv));
      }
      if (check) {
        for (int64_t r = r0; r < r1; ++r) {
          if (h[r] != h[r]) err[r] = row_logit_error(L + r * sr, V, temp[r * ts], false);
        }
      }
    });
  });
  if (check) {
    raise_logits_error(err.data(), R, "logits must not contain NaN or +inf",
                       "logits has a row where every entry is -inf (its distribution is undefined)");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) { m.impl("draft_entropy", &draft_entropy_cpu); }

}  // namespace specdec
