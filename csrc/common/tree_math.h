// Arithmetic of tree verification (recursive rejection sampling) shared by the CPU and CUDA
// kernels. The spec, with the reasons for each choice, is the docstring of
// specdec_kernels/reference/tree.py; the Triton kernels implement the same formulas.
#pragma once
#include <cfloat>
#include <cstdint>

#include "philox.h"

namespace specdec {

// r(x) = fl32(max(0, p - scale * q)) evaluated in double. scale and q are floats, so scale * q is
// exact in double and a contracted FMA rounds exactly like the separate product and difference:
// every compiler and backend gets the same bits.
SPECDEC_HD float tree_residual(float p, float q, float scale) {
  const double v = static_cast<double>(p) - static_cast<double>(scale) * static_cast<double>(q);
  return v > 0.0 ? static_cast<float>(v) : 0.f;
}

// Exact sum of residual values in 2^-64 fixed point: hi = floor(r 2^32), lo = floor(r 2^64) -
// hi 2^32 are exact in double, and integer sums do not depend on the order of the reduction, so
// a sequential CPU loop and a parallel GPU tree reduction produce the same mass. For valid
// probabilities sum(hi) <= ~2^32 and sum(lo) < V 2^32: no overflow for V < 2^31.
SPECDEC_HD void fixed_point_add(float r, int64_t& hi, int64_t& lo) {
  const double r64 = r > 0.f ? static_cast<double>(r < 1.f ? r : 1.f) : 0.0;  // clamp: invalid input only
  const int64_t h = static_cast<int64_t>(r64 * 4294967296.0);
  hi += h;
  lo += static_cast<int64_t>(r64 * 18446744073709551616.0 - static_cast<double>(h) * 4294967296.0);
}

SPECDEC_HD double fixed_point_value(int64_t hi, int64_t lo) {
  // Both products are by powers of two (exact): the one rounding is the addition.
  return static_cast<double>(hi) * (1.0 / 4294967296.0) +
         static_cast<double>(lo) * (1.0 / 18446744073709551616.0);
}

// Accept child token x drawn from q (conditioned on the earlier siblings when without replacement:
// one_minus_q_sum = 1 - Q; with replacement it is 1): u < r(x) / mass / (q(x) / (1 - Q)) without a
// division. fl32(u * q) first, so that a one-child node decides exactly as verify_chain.
SPECDEC_HD bool tree_accept(float u, float q, float r, double mass, double one_minus_q_sum) {
#if defined(__CUDA_ARCH__)
  const float a = __fmul_rn(u, q);
#else
  const float a = u * q;
#endif
  return static_cast<double>(a) * mass < static_cast<double>(r) * one_minus_q_sum;
}

// Accept a deterministic (one-hot) child: u < r(x) / mass.
SPECDEC_HD bool tree_accept_onehot(float u, float r, double mass) {
  return static_cast<double>(u) * mass < static_cast<double>(r);
}

// Scale of the residual after rejecting a child: scale + mass / (1 - Q) (den = 1 with
// replacement), rounded to float and kept finite so that scale * q is never inf * 0.
SPECDEC_HD float tree_next_scale(float scale, double mass, double den) {
  if (!(den > 0.0)) return FLT_MAX;
  const double c = static_cast<double>(scale) + mass / den;
  return c < static_cast<double>(FLT_MAX) ? static_cast<float>(c) : FLT_MAX;
}

}  // namespace specdec
