// Drafter-distillation losses on the CPU (docs/algorithms.md §7; spec in specdec_kernels/reference/
// losses.py): one row (position) per task. Forward: two passes over the student row (log-sum-exp,
// then q = exp(z - lse) against the teacher row) leaving 4 floats per row; backward: one pass that
// recomputes q and writes the gradient. No [N, V] temporary exists besides the gradient itself.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../common/checks.h"
#include "simd.h"

namespace specdec {
namespace {

// One element's share of the forward statistics (scalar path and vector tails): the same float
// formula q = exp(z - lse) as the backward pass, so both agree on r = 1[p > q].
inline void divergence_term(float zv, float pv, int64_t kind, double& value, double& a, double& c) {
  if (kind == 0) {
    const float q = std::exp(zv);
    value += std::fabs(static_cast<double>(pv) - q);
    if (pv > q) {
      a += q;
      c += 1.0;
    }
  } else {
    if (pv > 0.f) value += static_cast<double>(pv) * (std::log(static_cast<double>(pv)) - zv);
    a += pv;
  }
}

#if SPECDEC_HAVE_AVX2
// The three passes of forward_rows eight lanes at a time: maximum, log-sum-exp (exp8), then the
// divergence with q = exp8(z - lse), the same float formula as backward_row_avx2 so both passes
// agree on every indicator 1[p > q]. Sums run in float over 32 elements, then in double.
template <typename Z, typename P>
SPECDEC_AVX2 void forward_row_avx2(const Z* z, const P* p, int64_t V, int64_t kind, float* o) {
  const int64_t V32 = V & ~int64_t(31);
  bool nan_unused;  // a NaN logit makes the sum NaN by itself
  const float m = max_and_nan_avx2(z, V, &nan_unused);
  const __m256 mm = _mm256_set1_ps(m);
  __m256d sd = _mm256_setzero_pd();
  for (int64_t v = 0; v < V32; v += 32) {
    __m256 e = exp8_le0(_mm256_sub_ps(load8(z + v), mm));
    for (int j = 1; j < 4; ++j) e = _mm256_add_ps(e, exp8_le0(_mm256_sub_ps(load8(z + v + 8 * j), mm)));
    sd = add_to_double(sd, e);
  }
  double sum = hsum4d(sd);
  for (int64_t v = V32; v < V; ++v) sum += std::exp(static_cast<float>(z[v]) - m);
  const float lse = m + static_cast<float>(std::log(sum));
  const __m256 lv = _mm256_set1_ps(lse), sign = _mm256_set1_ps(-0.f), one = _mm256_set1_ps(1.f);
  const __m256 zero = _mm256_setzero_ps();
  __m256d val = _mm256_setzero_pd(), acc_a = _mm256_setzero_pd(), acc_c = _mm256_setzero_pd();
  for (int64_t v = 0; v < V32; v += 32) {
    __m256 bv = zero, ba = zero, bc = zero;
    for (int j = 0; j < 4; ++j) {
      const __m256 zv = _mm256_sub_ps(load8(z + v + 8 * j), lv);
      const __m256 pv = load8(p + v + 8 * j);
      if (kind == 0) {
        const __m256 q = exp8(zv);
        const __m256 up = _mm256_cmp_ps(pv, q, _CMP_GT_OQ);
        bv = _mm256_add_ps(bv, _mm256_andnot_ps(sign, _mm256_sub_ps(pv, q)));
        ba = _mm256_add_ps(ba, _mm256_and_ps(up, q));
        bc = _mm256_add_ps(bc, _mm256_and_ps(up, one));
      } else {
        const __m256 pos = _mm256_cmp_ps(pv, zero, _CMP_GT_OQ);
        bv = _mm256_add_ps(bv, _mm256_and_ps(pos, _mm256_mul_ps(pv, _mm256_sub_ps(log8(pv), zv))));
        ba = _mm256_add_ps(ba, pv);
      }
    }
    val = add_to_double(val, bv);
    acc_a = add_to_double(acc_a, ba);
    acc_c = add_to_double(acc_c, bc);
  }
  double value = hsum4d(val), a = hsum4d(acc_a), c = hsum4d(acc_c);
  for (int64_t v = V32; v < V; ++v) {
    divergence_term(static_cast<float>(z[v]) - lse, static_cast<float>(p[v]), kind, value, a, c);
  }
  o[0] = lse;
  o[1] = static_cast<float>(kind == 0 ? 0.5 * value : value);
  o[2] = static_cast<float>(a);
  o[3] = static_cast<float>(c);
}

template <typename Z, typename P>
SPECDEC_AVX2 void backward_row_avx2(const Z* z, const P* p, int64_t V, int64_t kind, float lse, float a,
                                    float c, Z* g) {
  // The vector part ends where forward_row_avx2's does (a multiple of 32): the tail gets q from
  // std::exp in both passes, so forward and backward agree on every indicator 1[p > q].
  const int64_t V32 = V & ~int64_t(31);
  const __m256 lv = _mm256_set1_ps(lse), av = _mm256_set1_ps(a), cv = _mm256_set1_ps(c);
  const __m256 one = _mm256_set1_ps(1.f);
  for (int64_t v = 0; v < V32; v += 8) {
    const __m256 q = exp8(_mm256_sub_ps(load8(z + v), lv));
    const __m256 pv = load8(p + v);
    __m256 gv;
    if (kind == 0) {  // -c q (1[p > q] - a)
      const __m256 r = _mm256_and_ps(_mm256_cmp_ps(pv, q, _CMP_GT_OQ), one);
      gv = _mm256_mul_ps(_mm256_xor_ps(_mm256_mul_ps(cv, q), _mm256_set1_ps(-0.f)), _mm256_sub_ps(r, av));
    } else {  // c (q a - p)
      gv = _mm256_mul_ps(cv, _mm256_fmsub_ps(q, av, pv));
    }
    store8(g + v, gv);
  }
  for (int64_t v = V32; v < V; ++v) {
    const float q = std::exp(static_cast<float>(z[v]) - lse);
    const float pv = static_cast<float>(p[v]);
    const float gv = kind == 0 ? -c * q * ((pv > q ? 1.f : 0.f) - a) : c * (q * a - pv);
    g[v] = static_cast<Z>(gv);
  }
}
#endif

// kind 0: total variation (value 1/2 sum |p - q|, a = E_q[r], c = sum r with r = 1[p > q]);
// kind 1: forward KL (value sum p (log p - log q), a = sum p, c = 0).
template <typename Z, typename P>
void forward_rows(const Z* z, const P* p, int64_t sz, int64_t sp, int64_t N, int64_t V, int64_t kind, float* st) {
  at::parallel_for(0, N, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const Z* zr = z + r * sz;
      const P* pr = p + r * sp;
#if SPECDEC_HAVE_AVX2
      if (simd_enabled()) {
        forward_row_avx2(zr, pr, V, kind, st + r * 4);
        continue;
      }
#endif
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<float>(zr[v]));
      double s = 0.0;
      for (int64_t v = 0; v < V; ++v) s += std::exp(static_cast<float>(zr[v]) - m);  // float exp, double sum
      const float lse = m + static_cast<float>(std::log(s));
      double value = 0.0, a = 0.0, c = 0.0;
      for (int64_t v = 0; v < V; ++v) {
        divergence_term(static_cast<float>(zr[v]) - lse, static_cast<float>(pr[v]), kind, value, a, c);
      }
      float* o = st + r * 4;
      o[0] = lse;
      o[1] = static_cast<float>(kind == 0 ? 0.5 * value : value);
      o[2] = static_cast<float>(a);
      o[3] = static_cast<float>(c);
    }
  });
}

template <typename Z, typename P>
void backward_rows(const Z* z, const P* p, int64_t sz, int64_t sp, int64_t N, int64_t V, int64_t kind,
                   const float* st, const float* coef, Z* g) {
  at::parallel_for(0, N, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const Z* zr = z + r * sz;
      const P* pr = p + r * sp;
      Z* gr = g + r * V;
      const float lse = st[r * 4], a = st[r * 4 + 2], c = coef[r];
      if (c == 0.f) {
        std::fill(gr, gr + V, static_cast<Z>(0.f));
        continue;
      }
#if SPECDEC_HAVE_AVX2
      if (simd_enabled()) {
        backward_row_avx2(zr, pr, V, kind, lse, a, c, gr);
        continue;
      }
#endif
      for (int64_t v = 0; v < V; ++v) {
        const float q = std::exp(static_cast<float>(zr[v]) - lse);
        const float pv = static_cast<float>(pr[v]);
        const float gv = kind == 0 ? -c * q * ((pv > q ? 1.f : 0.f) - a) : c * (q * a - pv);
        gr[v] = static_cast<Z>(gv);
      }
    }
  });
}

at::Tensor divergence_forward_cpu(const at::Tensor& z_in, const at::Tensor& p_in, int64_t kind) {
  check_divergence_args(z_in, p_in, kind);
  const at::Tensor z = unit_last_stride(z_in), p = unit_last_stride(p_in);
  const int64_t N = z.size(0), V = z.size(1);
  at::Tensor stats = at::empty({N, 4}, z.options().dtype(at::kFloat));
  if (N == 0) return stats;
  SPECDEC_DISPATCH_PROBS(z.scalar_type(), "divergence_forward_cpu", [&] {
    using ZT = scalar_t;
    SPECDEC_DISPATCH_PROBS(p.scalar_type(), "divergence_forward_cpu", [&] {
      forward_rows<ZT, scalar_t>(z.data_ptr<ZT>(), p.data_ptr<scalar_t>(), z.stride(0), p.stride(0), N, V, kind,
                                 stats.data_ptr<float>());
    });
  });
  return stats;
}

at::Tensor divergence_backward_cpu(const at::Tensor& z_in, const at::Tensor& p_in, const at::Tensor& stats,
                                   const at::Tensor& coef, int64_t kind) {
  check_divergence_args(z_in, p_in, kind);
  const at::Tensor z = unit_last_stride(z_in), p = unit_last_stride(p_in);
  const int64_t N = z.size(0), V = z.size(1);
  check_divergence_stats(stats, coef, N, z);
  at::Tensor grad = at::empty({N, V}, z.options());
  if (N == 0) return grad;
  const at::Tensor st = stats.contiguous(), cf = coef.contiguous();
  SPECDEC_DISPATCH_PROBS(z.scalar_type(), "divergence_backward_cpu", [&] {
    using ZT = scalar_t;
    SPECDEC_DISPATCH_PROBS(p.scalar_type(), "divergence_backward_cpu", [&] {
      backward_rows<ZT, scalar_t>(z.data_ptr<ZT>(), p.data_ptr<scalar_t>(), z.stride(0), p.stride(0), N, V, kind,
                                  st.data_ptr<float>(), cf.data_ptr<float>(), grad.data_ptr<ZT>());
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("divergence_forward", &divergence_forward_cpu);
  m.impl("divergence_backward", &divergence_backward_cpu);
}

}  // namespace specdec
