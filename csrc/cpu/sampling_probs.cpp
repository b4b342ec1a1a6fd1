// sampling_probs on the CPU: one row per task. Softmax in two passes; top-k by nth_element on a
// copy of the scaled logits; top-p by a mass-guided quickselect (expected O(V), no full sort).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/checks.h"

namespace specdec {
namespace {

// Smallest kept probability under top-p: keep x iff sum_{y: p_y > p_x} p_y < top_p. Partition
// around a pivot value; the mass strictly above decides which side holds the threshold.
float top_p_threshold(std::vector<float>& cand, float top_p) {
  double above = 0.0;  // mass of values known to be larger than every candidate
  float tau = std::numeric_limits<float>::infinity();
  size_t lo = 0, hi = cand.size();
  while (lo < hi) {
    const float pivot = cand[lo + (hi - lo) / 2];
    // three-way partition of [lo, hi): > pivot | == pivot | < pivot
    auto gt_end = std::partition(cand.begin() + lo, cand.begin() + hi, [&](float v) { return v > pivot; });
    auto eq_end = std::partition(gt_end, cand.begin() + hi, [&](float v) { return v == pivot; });
    double gt_mass = 0.0, eq_mass = 0.0;
    for (auto it = cand.begin() + lo; it != gt_end; ++it) gt_mass += *it;
    for (auto it = gt_end; it != eq_end; ++it) eq_mass += *it;
    if (above + gt_mass < top_p) {
      tau = pivot;  // pivot kept, so is everything larger; look below
      above += gt_mass + eq_mass;
      lo = static_cast<size_t>(eq_end - cand.begin());
    } else {
      hi = static_cast<size_t>(gt_end - cand.begin());  // pivot dropped; threshold is above it
    }
  }
  return tau;
}

template <typename T>
void filter_row(const T* in, float* out, int64_t V, float temp, int64_t top_k, float top_p,
                std::vector<float>& scratch) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t v = 0; v < V; ++v) {
    out[v] = static_cast<float>(in[v]) / temp;
    mx = std::max(mx, out[v]);
  }
  float kth = -std::numeric_limits<float>::infinity();
  if (top_k > 0 && top_k < V) {
    scratch.assign(out, out + V);
    std::nth_element(scratch.begin(), scratch.begin() + (top_k - 1), scratch.end(), std::greater<float>());
    kth = scratch[top_k - 1];
  }
  double sum = 0.0;
  for (int64_t v = 0; v < V; ++v) {
    const float e = out[v] >= kth ? std::exp(out[v] - mx) : 0.f;
    out[v] = e;
    sum += e;
  }
  float inv = static_cast<float>(1.0 / sum);
  for (int64_t v = 0; v < V; ++v) out[v] *= inv;
  if (top_p < 1.f) {
    scratch.clear();
    for (int64_t v = 0; v < V; ++v)
      if (out[v] > 0.f) scratch.push_back(out[v]);
    const float tau = top_p_threshold(scratch, top_p);
    sum = 0.0;
    for (int64_t v = 0; v < V; ++v) {
      if (out[v] < tau) out[v] = 0.f;
      sum += out[v];
    }
    inv = static_cast<float>(1.0 / sum);
    for (int64_t v = 0; v < V; ++v) out[v] *= inv;
  }
}

at::Tensor sampling_probs_cpu(const at::Tensor& logits_in, const at::Tensor& temperature,
                              const at::Tensor& top_k, const at::Tensor& top_p) {
  const int64_t R = check_sampling_args(logits_in, temperature, top_k, top_p), V = logits_in.size(1);
  const at::Tensor logits = logits_in.contiguous();
  at::Tensor out = at::empty({R, V}, logits.options().dtype(at::kFloat));
  if (R == 0 || V == 0) return out;
  const at::Tensor t = temperature.contiguous(), k = top_k.contiguous(), p = top_p.contiguous();
  const float* tp = t.data_ptr<float>();
  const int64_t* kp = k.data_ptr<int64_t>();
  const float* pp = p.data_ptr<float>();
  float* op = out.data_ptr<float>();
  SPECDEC_DISPATCH_PROBS(logits.scalar_type(), "sampling_probs_cpu", [&] {
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    at::parallel_for(0, R, 1, [&](int64_t r0, int64_t r1) {
      std::vector<float> scratch;
      for (int64_t r = r0; r < r1; ++r) filter_row(lp + r * V, op + r * V, V, tp[r], kp[r], pp[r], scratch);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) { m.impl("sampling_probs", &sampling_probs_cpu); }

}  // namespace specdec
