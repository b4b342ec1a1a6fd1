// Arithmetic of sampling without replacement (Gumbel-Top-k, Stochastic Beam Search), shared by the
// CPU and CUDA kernels. The spec, step by step, is specdec_kernels/reference/gumbel.py; the Triton
// kernels (specdec_kernels/triton/gumbel.py) follow the same formulas.
#pragma once
#include <cmath>
#include <cstdint>

#include "philox.h"

namespace specdec {

// Gumbel(0, 1) noise from a Philox uniform u in (0, 1): -log(-log(u)). With 23-bit uniforms it lies
// in about [-2.81, 16.64]; kGumbelMax bounds it so kernels can skip the Philox rounds of elements
// that cannot enter the current top-k (s + kGumbelMax < k-th best z).
constexpr float kGumbelMax = 16.7f;

SPECDEC_HD float gumbel_from_uniform(float u) {
#if defined(__CUDA_ARCH__)
  return -logf(-logf(u));
#else
  return -std::log(-std::log(u));
#endif
}

// Scaled logit s = x / T, correctly rounded on every backend (CUDA's `/` may be approximate under
// fast-math flags; __fdiv_rn never is).
SPECDEC_HD float scale_logit(float x, float T) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(x, T);
#else
  return x / T;
#endif
}

// Candidate order of the top-k: larger z first, ties to the smaller index. -inf never wins against
// an empty slot (index -1 is only a placeholder and compares as worst).
SPECDEC_HD bool topk_better(float z, int64_t idx, float best_z, int64_t best_idx) {
  return z > best_z || (z == best_z && idx < best_idx);
}

// log(1 - exp(a)) for a <= 0 (Maechler 2012): -expm1 near 0, log1p(-exp) in the tail.
SPECDEC_HD float log1mexp(float a) {
#if defined(__CUDA_ARCH__)
  return a > -0.693147180559945f ? logf(-expm1f(a)) : log1pf(-expf(a));
#else
  return a > -0.693147180559945f ? std::log(-std::expm1(a)) : std::log1p(-std::exp(a));
#endif
}

// -log(exp(-G) - exp(-Z) + exp(-Gt)): a Gumbel of location Gt truncated at the parent's score G,
// given the maximum Z of the siblings (docs/algorithms.md §3), in the stable form
//   t = G - Gt + log1mexp(Gt - Z),  G' = G - max(t, 0) - log1p(exp(-|t|)),
// and exactly G for the best sibling (Gt >= Z).
SPECDEC_HD float truncated_score(float G, float Z, float Gt) {
  if (Gt >= Z) return G;
  const float t = G - Gt + log1mexp(Gt - Z);
#if defined(__CUDA_ARCH__)
  return G - fmaxf(t, 0.f) - log1pf(expf(-fabsf(t)));
#else
  return G - std::fmax(t, 0.f) - std::log1p(std::exp(-std::fabs(t)));
#endif
}

}  // namespace specdec
