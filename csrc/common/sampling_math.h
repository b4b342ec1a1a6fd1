// Arithmetic shared by every backend's chain/tree verification, written once so that the CPU and
// CUDA kernels agree with the reference and Triton to the bit (see README "Randomness").
#pragma once
#include <cmath>
#include <cstdint>

#include "philox.h"

namespace specdec {

// Accept a drafted token with probability min(1, p / q). Written as a product instead of a ratio:
// no division, q == 0 needs no special case (0 < p accepts, p == q == 0 rejects), and a product of
// two floats is correctly rounded on every backend, so the decision is bit-identical everywhere.
SPECDEC_HD bool accept_draft(float u, float p, float q) { return u * q < p; }

// Exponential race: x* = argmax_x r(x) / E_x with E_x = -log(u_x) i.i.d. Exp(1) has law
// r / sum(r), for unnormalised r >= 0, in one pass and with no prefix sum. The result depends on
// each element alone, never on the order of a reduction, so parallel and sequential backends agree
// (up to the last-ulp differences of their log implementations, which decide only near-ties).
SPECDEC_HD float race_key(float r, float u) {
#if defined(__CUDA_ARCH__)
  return r > 0.f ? __fdiv_rn(r, -logf(u)) : 0.f;
#else
  return r > 0.f ? r / -std::log(u) : 0.f;
#endif
}

// Winner of a race: larger key wins; equal keys go to the smaller index.
SPECDEC_HD bool race_better(float key, int64_t idx, float best_key, int64_t best_idx) {
  return key > best_key || (key == best_key && idx < best_idx);
}

// Block verification (docs/algorithms.md §9). The spec, with every rounding, is the docstring of
// specdec_kernels/reference/chain.py; the Triton kernel implements the same formulas. Each
// float64 expression below rounds once whatever the compiler does: its products of two floats are
// exact in double, so a contracted FMA gives the same bits as the separate operations.

// Running weight w_i = min(1, w_{i-1} p / q) from draft i's scalars (1 when w_{i-1} p >= q > 0 or
// q == 0 < w_{i-1} p; 0 when both are 0, which rule="token" rejects too).
SPECDEC_HD float block_weight(float w_prev, float p, float q) {
  const double num = static_cast<double>(w_prev) * static_cast<double>(p);
  const double qd = static_cast<double>(q);
#if defined(__CUDA_ARCH__)
  if (num < qd) return static_cast<float>(__ddiv_rn(num, qd));
#else
  if (num < qd) return static_cast<float>(num / qd);
#endif
  return num > 0.0 ? 1.f : 0.f;
}

// tau = n (every draft accepted): eta_n < w_n written as fl32(eta q) < fl32(w_{n-1} p), which for
// n = 1 (w_0 = 1) is accept_draft: K = 1 decides exactly as rule="token".
SPECDEC_HD bool block_accept_all(float eta, float q, float w_prev, float p) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(eta, q) < __fmul_rn(w_prev, p);
#else
  return eta * q < w_prev * p;
#endif
}

// r(v) = fl32(max(0, w p(v) - q(v))), the weighted residual whose mass is m_i and whose race gives
// the correction after a partial acceptance.
SPECDEC_HD float block_residual(float p, float q, float w) {
  const double v = static_cast<double>(w) * static_cast<double>(p) - static_cast<double>(q);
  return v > 0.0 ? static_cast<float>(v) : 0.f;
}

// m_i for deterministic drafts (q_i one-hot at the next draft, whose target probability is
// p_next): w (1 - p_next), with 1 - p_next rounded to float so the product is exact.
SPECDEC_HD double block_onehot_mass(float w, float p_next) {
  return static_cast<double>(w) * static_cast<double>(1.f - p_next);
}

// Accept position i (stop the downward scan): eta < h = m / (m + 1 - w), without a division.
SPECDEC_HD bool block_accept(float eta, double m, float w) {
  const double den = m + (1.0 - static_cast<double>(w));
  return !(den > 0.0) || static_cast<double>(eta) * den < m;
}

}  // namespace specdec
