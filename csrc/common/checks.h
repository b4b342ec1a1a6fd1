// Host-side argument checks shared by the CPU and CUDA implementations. The Python wrappers in
// specdec_kernels/ops/ run friendlier checks first; these guard direct torch.ops.specdec calls so
// that no input can make a kernel read out of bounds.
#pragma once
#include <ATen/ATen.h>

#include <optional>

// Dispatch over the probability/logit dtypes the ops accept (float64 is rejected by the checks,
// so it is not instantiated).
#define SPECDEC_DISPATCH_PROBS(TYPE, NAME, ...)                  \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace specdec {

struct ChainDims {
  int64_t B, K, V;
};

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), name, " must be on ", ref.device(), ", got ", t.device());
}

inline void check_row_param(const at::Tensor& t, int64_t n, at::ScalarType dtype, const char* name,
                            const at::Tensor& ref) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == n, name, " must have shape [", n, "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
  check_same_device(t, ref, name);
}

inline void check_probs_dtype(const at::Tensor& t, const char* name) {
  const auto d = t.scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kHalf || d == at::kBFloat16, name,
              " must be float32, float16 or bfloat16, got ", d);
}

inline ChainDims check_chain_args(const at::Tensor& draft_tokens, const at::Tensor& target,
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
    check_probs_dtype(q, "draft_probs");
    check_same_device(q, target, "draft_probs");
  }
  if (num_draft.has_value()) check_row_param(*num_draft, B, at::kLong, "num_draft", target);
  return {B, K, V};
}

// Kernels index the vocabulary with unit stride; other dimensions may be strided.
inline at::Tensor unit_last_stride(const at::Tensor& t) {
  return t.stride(-1) == 1 ? t : t.contiguous();
}

}  // namespace specdec
