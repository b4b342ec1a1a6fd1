// Definitions of checks.h; see there why they live in exactly one host-compiled unit.
#include "checks.h"

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

void check_grid_limit(int64_t value, int64_t limit, const char* what, const char* op) {
  TORCH_CHECK(value < limit, op, " on CUDA supports ", what, " < ", limit, ", got ", value);
}

}  // namespace specdec
