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

#include "../common/checks.h"

namespace specdec {
namespace {

at::Tensor draft_entropy_cpu(const at::Tensor& logits_in, const at::Tensor& temperature) {
  const int64_t R = check_entropy_args(logits_in, temperature);
  const at::Tensor logits = unit_last_stride(logits_in);
  const int64_t V = logits.size(1);
  at::Tensor out = at::empty({R}, logits.options().dtype(at::kFloat));
  if (R == 0) return out;
  const float* temp = temperature.data_ptr<float>();
  const int64_t ts = temperature.stride(0);
  float* h = out.data_ptr<float>();
  SPECDEC_DISPATCH_PROBS(logits.scalar_type(), "draft_entropy_cpu", [&] {
    const scalar_t* L = logits.data_ptr<scalar_t>();
    const int64_t sr = logits.stride(0);
    at::parallel_for(0, R, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const scalar_t* row = L + r * sr;
        const float t = temp[r * ts];
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
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) { m.impl("draft_entropy", &draft_entropy_cpu); }

}  // namespace specdec
