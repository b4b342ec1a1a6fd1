// The exponential race over a row on the CPU, shared by the chain and tree kernels: the winner of
// r(v) / -log(u_v) over v in [0, V), ties to the smaller index, -1 when r is all zero. r is given as
// a callable so each caller's residual (p, max(0, p - q), p without a token, the tree's closed-form
// residual) is computed on the fly and never stored.
#pragma once
#include <algorithm>
#include <cstdint>

#include "../common/philox.h"
#include "../common/sampling_math.h"

namespace specdec {

template <typename R>
int64_t race_over(R r_of, int64_t V, const DrawKey& key) {
  float best = 0.f;
  int64_t best_idx = -1;
  for (int64_t base = 0; base < V; base += 4) {
    const int64_t n = std::min<int64_t>(4, V - base);
    float r[4] = {0.f, 0.f, 0.f, 0.f};
    bool any = false;
    for (int64_t j = 0; j < n; ++j) {
      r[j] = r_of(base + j);
      any |= r[j] > 0.f;
    }
    if (!any) continue;  // a Philox block costs ~40 multiplies: skip blocks that cannot win
    const Philox4 w = draw_block(key, static_cast<uint32_t>(base >> 2));
    for (int64_t j = 0; j < n; ++j) {
      const float k = race_key(r[j], word_to_uniform(pick_word(w, static_cast<uint32_t>(j))));
      if (k > best) {  // ascending scan: ties keep the smaller index
        best = k;
        best_idx = base + j;
      }
    }
  }
  return best_idx;
}

}  // namespace specdec
