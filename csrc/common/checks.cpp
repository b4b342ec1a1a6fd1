// Definitions of checks.h; see there why they live in exactly one host-compiled unit.
#include "checks.h"

#include <cmath>
#include <cstdio>
#include <string>

namespace specdec {

static void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), name, " must be on ", ref.device(), ", got ", t.device());
}

void check_row_param(const at::Tensor& t, int64_t n, at::ScalarType dtype, const char* name,
                     const at::Tensor& ref) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, name, " must have shape [", n, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  check_same_device(t, ref, name);
}

void check_probs_dtype(const at::Tensor& t, const char* name) {
  const auto d = t.scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kHalf || d == at::kBFloat16, name,
              " must be float32, float16 or bfloat16, got ", d);
}

ChainDims check_chain_args(const at::Tensor& draft_tokens, const at::Tensor& target,
                           const std::optional<at::Tensor>& draft_probs,
                           const std::optional<at::Tensor>& num_draft, const char* target_name) {
  TORCH_CHECK(draft_tokens.dim() == 2, "draft_tokens must be [B, K], got ", draft_tokens.sizes());
  TORCH_CHECK(draft_tokens.scalar_type() == at::kLong, "draft_tokens must be int64, got ",
              draft_tokens.scalar_type());
  const int64_t B = draft_tokens.size(0), K = draft_tokens.size(1);
  TORCH_CHECK(target.dim() == 3 && target.size(0) == B && target.size(1) == K + 1, target_name,
              " must be [B, K+1, V] = [", B, ", ", K + 1, ", V], got ", target.sizes());
  check_probs_dtype(target, target_name);
  check_same_device(draft_tokens, target, "draft_tokens");
  const int64_t V = target.size(2);
  TORCH_CHECK(V >= 1, target_name, " must have V >= 1");
  TORCH_CHECK(V < (int64_t(1) << 31), target_name, " must have V < 2^31, got ", V);
  if (draft_probs.has_value()) {
    const auto& q = *draft_probs;
    TORCH_CHECK(q.dim() == 3 && q.size(0) == B && q.size(1) == K && q.size(2) == V,
                "draft_probs must be [B, K, V] = [", B, ", ", K, ", ", V, "], got ", q.sizes());
    TORCH_CHECK(q.scalar_type() == target.scalar_type(), "draft_probs must have the dtype of ",
                target_name, " (", target.scalar_type(), "), got ", q.scalar_type());
    check_same_device(q, target, "draft_probs");
  }
  if (num_draft.has_value()) check_row_param(*num_draft, B, at::kLong, "num_draft", target);
  return {B, K, V};
}

void check_chain_rng(const at::Tensor& seed, const at::Tensor& offset, int64_t B, const at::Tensor& ref) {
  check_row_param(seed, B, at::kLong, "seed", ref);
  check_row_param(offset, B, at::kLong, "offset", ref);
}

int64_t check_sampling_args(const at::Tensor& logits, const at::Tensor& temperature,
                            const at::Tensor& top_k, const at::Tensor& top_p) {
  TORCH_CHECK(logits.dim() == 2, "logits must be [R, V], got ", logits.sizes());
  check_probs_dtype(logits, "logits");
  const int64_t R = logits.size(0);
  TORCH_CHECK(logits.size(1) < (int64_t(1) << 31), "logits must have V < 2^31");
  TORCH_CHECK(R < (int64_t(1) << 31), "logits must have R < 2^31");
  check_row_param(temperature, R, at::kFloat, "temperature", logits);
  check_row_param(top_k, R, at::kLong, "top_k", logits);
  check_row_param(top_p, R, at::kFloat, "top_p", logits);
  return R;
}

int64_t check_entropy_args(const at::Tensor& logits, const at::Tensor& temperature) {
  TORCH_CHECK(logits.dim() == 2, "logits must be [R, V], got ", logits.sizes());
  check_probs_dtype(logits, "logits");
  TORCH_CHECK(logits.size(1) >= 1 && logits.size(1) < (int64_t(1) << 31), "logits must have 1 <= V < 2^31");
  TORCH_CHECK(logits.size(0) < (int64_t(1) << 31), "logits must have R < 2^31");
  check_row_param(temperature, logits.size(0), at::kFloat, "temperature", logits);
  return logits.size(0);
}

void check_divergence_args(const at::Tensor& z, const at::Tensor& p, int64_t kind) {
  TORCH_CHECK(z.dim() == 2, "student_logits must be [N, V], got ", z.sizes());
  TORCH_CHECK(p.sizes() == z.sizes(), "teacher_probs must have the shape of student_logits ", z.sizes(), ", got ",
              p.sizes());
  check_probs_dtype(z, "student_logits");
  check_probs_dtype(p, "teacher_probs");
  check_same_device(p, z, "teacher_probs");
  TORCH_CHECK(z.size(1) >= 1 && z.size(1) < (int64_t(1) << 31), "student_logits must have 1 <= V < 2^31");
  TORCH_CHECK(kind == 0 || kind == 1, "kind must be 0 (total variation) or 1 (KL), got ", kind);
}

void check_divergence_stats(const at::Tensor& stats, const at::Tensor& coef, int64_t N, const at::Tensor& z) {
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == N && stats.size(1) == 4, "stats must be [N, 4] = [", N,
              ", 4], got ", stats.sizes());
  TORCH_CHECK(stats.scalar_type() == at::kFloat, "stats must be float32, got ", stats.scalar_type());
  check_same_device(stats, z, "stats");
  check_row_param(coef, N, at::kFloat, "coef", z);
}

std::pair<int64_t, int64_t> check_gumbel_args(const at::Tensor& logits, const at::Tensor& temperature,
                                              int64_t k, const at::Tensor& seed, const at::Tensor& offset) {
  TORCH_CHECK(logits.dim() == 2, "logits must be [R, V], got ", logits.sizes());
  check_probs_dtype(logits, "logits");
  const int64_t R = logits.size(0), V = logits.size(1);
  TORCH_CHECK(V >= 1 && V < (int64_t(1) << 31), "logits must have 1 <= V < 2^31, got V = ", V);
  TORCH_CHECK(R < (int64_t(1) << 31), "logits must have R < 2^31");
  TORCH_CHECK(k >= 1 && k <= V, "k must be in [1, V] = [1, ", V, "], got ", k);
  check_row_param(temperature, R, at::kFloat, "temperature", logits);
  check_row_param(seed, R, at::kLong, "seed", logits);
  check_row_param(offset, R, at::kLong, "offset", logits);
  return {R, V};
}

BeamDims check_beam_args(const at::Tensor& logits, const at::Tensor& beam_log_probs,
                         const at::Tensor& beam_scores, const std::optional<at::Tensor>& beam_mask,
                         int64_t width, const at::Tensor& temperature, const at::Tensor& seed,
                         const at::Tensor& offset) {
  TORCH_CHECK(logits.dim() == 3, "logits must be [B, W, V], got ", logits.sizes());
  check_probs_dtype(logits, "logits");
  const int64_t B = logits.size(0), W = logits.size(1), V = logits.size(2);
  TORCH_CHECK(W >= 1 && V >= 1, "logits must have W >= 1 and V >= 1, got ", logits.sizes());
  TORCH_CHECK(W * V < (int64_t(1) << 32), "logits must have W * V < 2^32, got ", W * V);
  TORCH_CHECK(B < (int64_t(1) << 31), "logits must have B < 2^31");
  TORCH_CHECK(width >= 1, "width must be >= 1, got ", width);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{beam_log_probs, "beam_log_probs"},
                                std::pair<const at::Tensor&, const char*>{beam_scores, "beam_scores"}}) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == B && t.size(1) == W, name, " must be [B, W] = [", B, ", ", W,
                "], got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
    check_same_device(t, logits, name);
  }
  if (beam_mask.has_value()) {
    const auto& m = *beam_mask;
    TORCH_CHECK(m.dim() == 2 && m.size(0) == B && m.size(1) == W, "beam_mask must be [B, W] = [", B, ", ", W,
                "], got ", m.sizes());
    TORCH_CHECK(m.scalar_type() == at::kBool, "beam_mask must be bool, got ", m.scalar_type());
    check_same_device(m, logits, "beam_mask");
  }
  check_row_param(temperature, B, at::kFloat, "temperature", logits);
  check_row_param(seed, B, at::kLong, "seed", logits);
  check_row_param(offset, B, at::kLong, "offset", logits);
  return {B, W, V};
}

TreeDims check_tree_args(const at::Tensor& parents, const std::optional<at::Tensor>& num_nodes) {
  TORCH_CHECK(parents.dim() == 2, "parents must be [B, N], got ", parents.sizes());
  TORCH_CHECK(parents.scalar_type() == at::kLong, "parents must be int64, got ", parents.scalar_type());
  const int64_t B = parents.size(0), N = parents.size(1);
  TORCH_CHECK(N >= 1 && N < (int64_t(1) << 31), "parents must have 1 <= N < 2^31, got N = ", N);
  TORCH_CHECK(B < (int64_t(1) << 31), "parents must have B < 2^31");
  if (num_nodes.has_value()) check_row_param(*num_nodes, B, at::kLong, "num_nodes", parents);
  return {B, N, 0};
}

TreeDims check_tree_verify_args(const at::Tensor& tokens, const at::Tensor& parents,
                                const at::Tensor& target, const std::optional<at::Tensor>& draft_probs,
                                const std::optional<at::Tensor>& num_nodes, const char* target_name) {
  TreeDims d = check_tree_args(parents, num_nodes);
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(0) == d.B && tokens.size(1) == d.N,
              "tokens must be [B, N] = [", d.B, ", ", d.N, "], got ", tokens.sizes());
  TORCH_CHECK(tokens.scalar_type() == at::kLong, "tokens must be int64, got ", tokens.scalar_type());
  check_same_device(tokens, parents, "tokens");
  TORCH_CHECK(target.dim() == 3 && target.size(0) == d.B && target.size(1) == d.N, target_name,
              " must be [B, N, V] = [", d.B, ", ", d.N, ", V], got ", target.sizes());
  check_probs_dtype(target, target_name);
  check_same_device(target, parents, target_name);
  d.V = target.size(2);
  TORCH_CHECK(d.V >= 1 && d.V < (int64_t(1) << 31), target_name, " must have 1 <= V < 2^31, got V = ", d.V);
  if (draft_probs.has_value()) {
    const auto& q = *draft_probs;
    TORCH_CHECK(q.dim() == 3 && q.size(0) == d.B && q.size(1) == d.N && q.size(2) == d.V,
                "draft_probs must be [B, N, V] = [", d.B, ", ", d.N, ", ", d.V, "], got ", q.sizes());
    TORCH_CHECK(q.scalar_type() == target.scalar_type(), "draft_probs must have the dtype of ",
                target_name, " (", target.scalar_type(), "), got ", q.scalar_type());
    check_same_device(q, parents, "draft_probs");
  }
  return d;
}

void check_max_k(int64_t k, int64_t limit, const char* name, const char* op) {
  TORCH_CHECK(k <= limit, op, " on CUDA supports ", name, " <= ", limit, ", got ", k,
              " (the Python op routes larger values to Triton)");
}

void check_grid_limit(int64_t value, int64_t limit, const char* what, const char* op) {
  TORCH_CHECK(value < limit, op, " on CUDA supports ", what, " < ", limit, ", got ", value);
}

// ---------------------------------------------------------------------------------------------
// check=True value checks of the CPU kernels. The messages are those of the Python checks in
// specdec_kernels/ops/ (tests match them on every backend).

void check_chain_structure(const at::Tensor& draft_tokens, const std::optional<at::Tensor>& num_draft,
                           int64_t K, int64_t V) {
  const int64_t B = draft_tokens.size(0);
  const auto dt = draft_tokens.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    if (num_draft.has_value()) {
      const int64_t n = num_draft->data_ptr<int64_t>()[b * num_draft->stride(0)];
      TORCH_CHECK_VALUE(n >= 0 && n <= K, "num_draft must be in [0, K] = [0, ", K, "]");
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = num_draft.has_value() ? num_draft->data_ptr<int64_t>()[b * num_draft->stride(0)] : K;
    for (int64_t a = 0; a < n; ++a) {
      TORCH_CHECK_VALUE(dt[b][a] >= 0 && dt[b][a] < V, "draft_tokens must be in [0, V) = [0, ", V,
                        ") at positions < num_draft (-1 padding is allowed after)");
    }
  }
}

#if !defined(SPECDEC_PROB_SUM_TOL) || !defined(SPECDEC_PROB_SUM_TOL_HALF)
#error "SPECDEC_PROB_SUM_TOL* come from specdec_kernels/contract/limits.py (setup.py passes them)"
#endif
double prob_sum_tolerance(at::ScalarType dtype) {
  return dtype == at::kHalf || dtype == at::kBFloat16 ? SPECDEC_PROB_SUM_TOL_HALF : SPECDEC_PROB_SUM_TOL;
}

// The sum-to-1 rule as the Python messages state it (contract/_common.py prob_sum_rule), e.g.
// "within 1e-03 for float32", and a sum formatted as Python's f"{s:.6g}".
static std::string prob_sum_rule(at::ScalarType dtype) {
  char tol[16];
  std::snprintf(tol, sizeof(tol), "%.0e", prob_sum_tolerance(dtype));
  const char* name = dtype == at::kHalf ? "float16" : dtype == at::kBFloat16 ? "bfloat16"
                     : dtype == at::kDouble ? "float64" : "float32";
  return std::string("within ") + tol + " for " + name;
}

static std::string g6(double x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.6g", x);
  return buf;
}

void raise_chain_value_error(const int8_t* err, int64_t B, const double* sums, at::ScalarType dtype) {
  for (int64_t b = 0; b < B; ++b) {
    switch (err[b]) {
      case kTargetBad:
        TORCH_CHECK_VALUE(false, "target_probs must be finite and non-negative (found NaN, inf or a negative value)");
      case kTargetZeroMass:
        TORCH_CHECK_VALUE(false, "target_probs has a row with zero total mass");
      case kTargetSum:
        TORCH_CHECK_VALUE(false, "target_probs rows must sum to 1 (", prob_sum_rule(dtype),
                          "); found a row summing to ", g6(sums ? sums[b] : 0.0));
      case kDraftBad:
        TORCH_CHECK_VALUE(false, "draft_probs must be finite and non-negative (found NaN, inf or a negative value)");
      case kDraftSum:
        TORCH_CHECK_VALUE(false, "draft_probs rows must sum to 1 (", prob_sum_rule(dtype),
                          "); found a row summing to ", g6(sums ? sums[b] : 0.0));
      case kLogitsNaN:
        TORCH_CHECK_VALUE(false, "target_logits must not contain NaN");
      default:
        break;
    }
  }
}

void check_tree_structure(const at::Tensor& tokens, const at::Tensor& parents,
                          const std::optional<at::Tensor>& num_nodes, int64_t V, bool distinct) {
  const int64_t B = parents.size(0), N = parents.size(1);
  const auto par = parents.accessor<int64_t, 2>();
  const auto tok = tokens.accessor<int64_t, 2>();
  const int64_t* nn = num_nodes.has_value() ? num_nodes->data_ptr<int64_t>() : nullptr;
  const int64_t nn_stride = num_nodes.has_value() ? num_nodes->stride(0) : 0;
  auto count = [&](int64_t b) { return nn ? nn[b * nn_stride] : N; };
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(count(b) >= 1 && count(b) <= N, "num_nodes[", b, "] = ", count(b),
                      " must be in [1, N] = [1, ", N, "] (node 0 is the root)");
  }
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(par[b][0] == -1, "parents[", b, ", 0] = ", par[b][0],
                      ": the root (node 0) must have parent -1");
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 1; i < count(b); ++i) {
      TORCH_CHECK_VALUE(par[b][i] >= 0 && par[b][i] < i, "parents[", b, ", ", i, "] = ", par[b][i],
                        " is not a valid parent of node ", i, ": need 0 <= parent < ", i,
                        " (nodes are in topological order; padding goes after num_nodes)");
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 1; i < count(b); ++i) {
      TORCH_CHECK_VALUE(tok[b][i] >= 0 && tok[b][i] < V, "tokens[", b, ", ", i, "] = ", tok[b][i], " at node ", i,
                        " must be in [0, V) = [0, ", V, ") (only tokens[:, 0], the root, and padding nodes are ignored)");
    }
  }
  if (!distinct) return;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 2; j < count(b); ++j) {
      for (int64_t i = 1; i < j; ++i) {
        TORCH_CHECK_VALUE(!(par[b][i] == par[b][j] && tok[b][i] == tok[b][j]), "tokens[", b, ", ", j,
                          "] = tokens[", b, ", ", i, "] = ", tok[b][j], ": nodes ", i, " and ", j,
                          " are siblings (parent ", par[b][j], ") with the same token; siblings drawn "
                          "without replacement are distinct (pass replacement=True for i.i.d. siblings)");
      }
    }
  }
}

void raise_tree_value_error(const TreeValueError* err, int64_t B, const char* target_name,
                            at::ScalarType dtype) {
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = err[b].node;
    switch (err[b].code) {
      case kTargetBad:
        TORCH_CHECK_VALUE(false, target_name, "[", b, ", ", n, "] (node ", n,
                          ") must be a probability row: finite values in [0, 1] (found NaN, inf, a "
                          "negative value or a value above 1)");
      case kTargetZeroMass:
        TORCH_CHECK_VALUE(false, target_name, "[", b, ", ", n, "] (node ", n, ") has zero total mass");
      case kTargetSum:
        TORCH_CHECK_VALUE(false, target_name, "[", b, ", ", n, "] (node ", n, ") must sum to 1 (",
                          prob_sum_rule(dtype), "); it sums to ", g6(err[b].sum));
      case kDraftSum:
        TORCH_CHECK_VALUE(false, "draft_probs[", b, ", ", n, "] (node ", n, ") must sum to 1 (",
                          prob_sum_rule(dtype), "); it sums to ", g6(err[b].sum));
      case kDraftBad:
        TORCH_CHECK_VALUE(false, "draft_probs[", b, ", ", n, "] (node ", n,
                          ") must be a probability row: finite values in [0, 1] (found NaN, inf, a "
                          "negative value or a value above 1)");
      case kLogitsNaN:
        TORCH_CHECK_VALUE(false, target_name, "[", b, ", ", n, "] (node ", n, ") must not contain NaN");
      default:
        break;
    }
  }
}

void raise_logits_error(const int8_t* err, int64_t R, const char* nan_msg, const char* masked_msg) {
  for (int64_t r = 0; r < R; ++r) TORCH_CHECK_VALUE(err[r] != kRowNaN, nan_msg);
  if (masked_msg == nullptr) return;
  for (int64_t r = 0; r < R; ++r) TORCH_CHECK_VALUE(err[r] != kRowMasked, masked_msg);
}

void check_temperature_values(const at::Tensor& temperature, const char* msg) {
  const float* t = temperature.data_ptr<float>();
  for (int64_t r = 0; r < temperature.size(0); ++r) {
    const float x = t[r * temperature.stride(0)];
    TORCH_CHECK_VALUE(x > 0.f && x <= 3.40282347e+38f, msg);
  }
}

void check_sampling_params(const at::Tensor& top_k, const at::Tensor& top_p) {
  const int64_t* k = top_k.data_ptr<int64_t>();
  const float* p = top_p.data_ptr<float>();
  for (int64_t r = 0; r < top_k.size(0); ++r) {
    TORCH_CHECK_VALUE(k[r * top_k.stride(0)] >= 0, "top_k must be >= 0 in every row (0 = off)");
  }
  for (int64_t r = 0; r < top_p.size(0); ++r) {
    const float x = p[r * top_p.stride(0)];
    TORCH_CHECK_VALUE(x > 0.f && x <= 1.f, "top_p must be in (0, 1] in every row (1.0 = off)");
  }
}

void check_beam_values(const at::Tensor& beam_log_probs, const at::Tensor& beam_scores,
                       const std::optional<at::Tensor>& beam_mask) {
  const auto phi = beam_log_probs.accessor<float, 2>();
  const auto G = beam_scores.accessor<float, 2>();
  const int64_t B = beam_log_probs.size(0), W = beam_log_probs.size(1);
  auto live = [&](int64_t b, int64_t w) {
    return !beam_mask.has_value() ||
           beam_mask->data_ptr<bool>()[b * beam_mask->stride(0) + w * beam_mask->stride(1)];
  };
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t w = 0; w < W; ++w) {
      TORCH_CHECK_VALUE(!live(b, w) || std::isfinite(phi[b][w]),
                        "beam_log_probs must be finite for live beams (mask dead beams with beam_mask)");
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t w = 0; w < W; ++w) {
      TORCH_CHECK_VALUE(!live(b, w) || std::isfinite(G[b][w]),
                        "beam_scores must be finite for live beams (mask dead beams with beam_mask)");
    }
  }
}

}  // namespace specdec
