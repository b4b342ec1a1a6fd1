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

}  // namespace specdec
