// Host-side argument checks shared by the CPU and CUDA implementations. The Python wrappers in
// specdec_kernels/ops/ run friendlier checks first; these guard direct torch.ops.specdec calls so
// that no input can make a kernel read out of bounds.
//
// Defined once, in checks.cpp (host compiler only): TORCH_CHECK messages instantiate c10::str
// templates, and the same instantiation emitted by both nvcc and g++ translation units is one
// weak symbol that the linker resolves to either copy. Keeping every message in one g++ unit
// leaves nothing to mix (a segfault while raising such an error was seen with torch 2.11).
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <utility>

// Dispatch over the probability/logit dtypes the ops accept (float64 is rejected by the checks,
// so it is not instantiated).
#define SPECDEC_DISPATCH_PROBS(TYPE, NAME, ...)                                 \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)     \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace specdec {

struct ChainDims {
  int64_t B, K, V;
};

void check_row_param(const at::Tensor& t, int64_t n, at::ScalarType dtype, const char* name,
                     const at::Tensor& ref);

void check_probs_dtype(const at::Tensor& t, const char* name);

// draft_tokens [B, K] int64, target [B, K+1, V], draft_probs [B, K, V] of target's dtype,
// num_draft [B] int64; all on one device. Returns (B, K, V).
ChainDims check_chain_args(const at::Tensor& draft_tokens, const at::Tensor& target,
                           const std::optional<at::Tensor>& draft_probs,
                           const std::optional<at::Tensor>& num_draft, const char* target_name);

// verify_chain's per-row RNG tensors, seed and offset: int64 [B] on the device of the probabilities.
void check_chain_rng(const at::Tensor& seed, const at::Tensor& offset, int64_t B, const at::Tensor& ref);

// logits [R, V] of an accepted dtype, temperature/top_p float32 [R], top_k int64 [R]. Returns R.
int64_t check_sampling_args(const at::Tensor& logits, const at::Tensor& temperature,
                            const at::Tensor& top_k, const at::Tensor& top_p);

// draft_entropy: logits [R, V] of an accepted dtype with V >= 1, temperature float32 [R]. Returns R.
int64_t check_entropy_args(const at::Tensor& logits, const at::Tensor& temperature);

// divergence_forward/backward: student_logits and teacher_probs [N, V] (accepted dtypes, one device),
// kind 0 (total variation) or 1 (forward KL).
void check_divergence_args(const at::Tensor& z, const at::Tensor& p, int64_t kind);
// stats float32 [N, 4], coef float32 [N] on the device of z.
void check_divergence_stats(const at::Tensor& stats, const at::Tensor& coef, int64_t N, const at::Tensor& z);

// gumbel_topk: logits [R, V] (accepted dtype), temperature float32 [R], 1 <= k <= V, seed/offset
// int64 [R]. Returns (R, V).
std::pair<int64_t, int64_t> check_gumbel_args(const at::Tensor& logits, const at::Tensor& temperature,
                                              int64_t k, const at::Tensor& seed, const at::Tensor& offset);

struct BeamDims {
  int64_t B, W, V;
};

// stochastic_beam_step: logits [B, W, V], beam_log_probs/beam_scores float32 [B, W], beam_mask
// bool [B, W], width >= 1, W * V < 2^32, temperature float32 [B], seed/offset int64 [B].
BeamDims check_beam_args(const at::Tensor& logits, const at::Tensor& beam_log_probs,
                         const at::Tensor& beam_scores, const std::optional<at::Tensor>& beam_mask,
                         int64_t width, const at::Tensor& temperature, const at::Tensor& seed,
                         const at::Tensor& offset);

struct TreeDims {
  int64_t B, N, V;
};

// parents [B, N] int64 with N >= 1, num_nodes [B] int64. Returns (B, N, 0).
TreeDims check_tree_args(const at::Tensor& parents, const std::optional<at::Tensor>& num_nodes);

// verify_tree / verify_tree_greedy: tokens [B, N] int64 like parents, target [B, N, V] of an accepted
// dtype, draft_probs [B, N, V] of target's dtype, num_nodes [B] int64; all on one device.
TreeDims check_tree_verify_args(const at::Tensor& tokens, const at::Tensor& parents,
                                const at::Tensor& target, const std::optional<at::Tensor>& draft_probs,
                                const std::optional<at::Tensor>& num_nodes, const char* target_name);

// A backend limit on k / width (the CUDA kernels keep candidates in registers).
void check_max_k(int64_t k, int64_t limit, const char* name, const char* op);

// A grid-size limit of a CUDA kernel (gridDim.y / .z are below 65536).
void check_grid_limit(int64_t value, int64_t limit, const char* what, const char* op);

// check=True value checks of the CPU kernels (the Python wrappers skip their own for the cpu
// backend). Each raises ValueError (c10::ValueError) with the message the Python check gives.
// Structure, on the host before the kernel: num_draft in [0, K], drafted tokens in [0, V).
void check_chain_structure(const at::Tensor& draft_tokens, const std::optional<at::Tensor>& num_draft,
                           int64_t K, int64_t V);
// The tolerance of the sum-to-1 check of probability rows, |sum(row) - 1| <= tol, by their dtype
// (float32: 1e-3, float16/bfloat16: 1e-2): PROB_SUM_TOL / PROB_SUM_TOL_HALF of
// specdec_kernels/contract/limits.py, which states why (setup.py passes them as macros).
double prob_sum_tolerance(at::ScalarType dtype);
// Per-request findings of a kernel's pass, reported for the first request that has one. kTargetSum
// and kDraftSum (a row read whole that does not sum to 1) report the sum found, sums[b]; dtype is
// that of the probabilities.
enum ChainValueError : int8_t {
  kChainOk = 0, kTargetBad, kTargetZeroMass, kDraftBad, kLogitsNaN, kTargetSum, kDraftSum
};
void raise_chain_value_error(const int8_t* err, int64_t B, const double* sums = nullptr,
                             at::ScalarType dtype = at::kFloat);
// Tree structure (num_nodes, root, parent order), drafted tokens in [0, V), and (distinct) no two
// drafted siblings with the same token.
void check_tree_structure(const at::Tensor& tokens, const at::Tensor& parents,
                          const std::optional<at::Tensor>& num_nodes, int64_t V, bool distinct);
struct TreeValueError {
  int8_t code = 0;  // ChainValueError codes; kLogitsNaN for verify_tree_greedy
  int64_t node = 0;
  double sum = 0.0;  // kTargetSum / kDraftSum: the sum found
};
void raise_tree_value_error(const TreeValueError* err, int64_t B, const char* target_name,
                            at::ScalarType dtype);
// Logits of the row ops (sampling_probs, draft_entropy, gumbel_topk, stochastic_beam_step), found
// by the kernels' first pass over each row: 0 = fine, kRowNaN = NaN or +inf (or, for the Gumbel
// ops, a scaled logit x / T that overflows), kRowMasked = every entry -inf (an error where
// masked_msg is given). The first row with a finding raises its message.
enum RowLogitError : int8_t { kRowOk = 0, kRowNaN = 1, kRowMasked = 2 };
void raise_logits_error(const int8_t* err, int64_t R, const char* nan_msg, const char* masked_msg);
// Per-row parameters: temperature > 0 and finite; top_k >= 0; top_p in (0, 1].
void check_temperature_values(const at::Tensor& temperature, const char* msg);
void check_sampling_params(const at::Tensor& top_k, const at::Tensor& top_p);
// stochastic_beam_step: beam_log_probs and beam_scores finite for live beams.
void check_beam_values(const at::Tensor& beam_log_probs, const at::Tensor& beam_scores,
                       const std::optional<at::Tensor>& beam_mask);

// Kernels index the vocabulary with unit stride; other dimensions may be strided.
inline at::Tensor unit_last_stride(const at::Tensor& t) {
  return t.stride(-1) == 1 ? t : t.contiguous();
}

}  // namespace specdec
