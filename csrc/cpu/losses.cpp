// Drafter-distillation losses on the CPU (ALGORITHMS.md §7; spec in specdec_kernels/reference/
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

namespace specdec {
namespace {

// kind 0: total variation (value 1/2 sum |p - q|, a = E_q[r], c = sum r with r = 1[p > q]);
// kind 1: forward KL (value sum p (log p - log q), a = sum p, c = 0).
template <typename Z, typename P>
void forward_rows(const Z* z, const P* p, int64_t sz, int64_t sp, int64_t N, int64_t V, int64_t kind, float* st) {
  at::parallel_for(0, N, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const Z* zr = z + r * sz;
      const P* pr = p + r * sp;
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<float>(zr[v]));
      double s = 0.0;
      for (int64_t v = 0; v < V; ++v) s += std::exp(static_cast<float>(zr[v]) - m);  // float exp, double sum
      const float lse = m + static_cast<float>(std::log(s));
      double value = 0.0, a = 0.0, c = 0.0;
      for (int64_t v = 0; v < V; ++v) {
        const float zv = static_cast<float>(zr[v]) - lse;
        const float pv = static_cast<float>(pr[v]);
        if (kind == 0) {
          const float q = std::exp(zv);  // the same float formula as the backward pass: same r
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
