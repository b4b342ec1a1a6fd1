// The one place where the specdec op schemas are declared; their canonical arguments are what
// specdec_kernels/contract/<family>.py normalises user arguments to. CPU kernels register their
// implementations in csrc/cpu/*.cpp, CUDA kernels in csrc/cuda/*.cu; the fakes (for torch.compile)
// come from the contract and the Triton launchers are registered as CUDA kernels where Triton is the
// chosen GPU implementation, both by specdec_kernels/ops/_dispatch.py.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(specdec, m) {
  // check: the CPU kernels validate the values they read and raise ValueError with the messages of
  // the Python checks (which the wrappers then skip); the CUDA kernels ignore it (the wrappers
  // check before calling them).
  // The CPU kernels' vector paths (csrc/cpu/simd.h): level 0 = scalar, 1 = AVX2, 2 = AVX2 with
  // AVX-512 Philox. -1 reports the current level, -2 the best the CPU supports; another level is
  // set (capped at what the CPU supports) and the level before is returned.
  m.def("cpu_simd(int level=-1) -> int");
  // Chain speculative sampling (docs/algorithms.md §1). seed/offset: int64 [B]; row_streams: when true
  // row b uses Philox stream b (one int seed for the batch), else stream 0 (a seed per request).
  m.def(
      "verify_chain(Tensor draft_tokens, Tensor target_probs, Tensor? draft_probs, "
      "Tensor? num_draft, Tensor seed, Tensor offset, bool row_streams, bool check=False) -> (Tensor, Tensor)");
  // Block verification (docs/algorithms.md §9): verify_chain's arguments and draws.
  m.def(
      "verify_chain_block(Tensor draft_tokens, Tensor target_probs, Tensor? draft_probs, "
      "Tensor? num_draft, Tensor seed, Tensor offset, bool row_streams, bool check=False) -> (Tensor, Tensor)");
  m.def(
      "verify_chain_greedy(Tensor draft_tokens, Tensor target_logits, Tensor? num_draft, bool check=False) "
      "-> (Tensor, Tensor)");
  // Temperature, top-k, top-p (in that order) per row; temperature/top_p float32 [R], top_k int64 [R].
  m.def("sampling_probs(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p, bool check=False) -> Tensor");
  // Sampling without replacement (docs/algorithms.md §2-3; arithmetic spec in
  // specdec_kernels/reference/gumbel.py). temperature float32 [R] / [B]; seed, offset int64 [R] / [B];
  // row_streams as for verify_chain. Returns (tokens, log_probs, scores) and
  // (parents, tokens, log_probs, scores).
  m.def(
      "gumbel_topk(Tensor logits, Tensor temperature, int k, Tensor seed, Tensor offset, bool row_streams, "
      "bool check=False) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "stochastic_beam_step(Tensor logits, Tensor beam_log_probs, Tensor beam_scores, Tensor? beam_mask, "
      "int width, Tensor temperature, Tensor seed, Tensor offset, bool row_streams, bool check=False) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // Trees (docs/algorithms.md §4-5; tree format in specdec_kernels/contract/tree.py, arithmetic spec in
  // specdec_kernels/reference/tree.py). parents/tokens int64 [B, N], num_nodes int64 [B];
  // seed/offset/row_streams as for verify_chain. Results: (tokens [B, N], num_accepted [B],
  // accepted_nodes [B, N]); the mask is bool [B, N, N] or, packed, int32 [B, N, ceil(N/32)];
  // position ids int64 [B, N] from prefix_len int64 [B].
  m.def(
      "verify_tree(Tensor tokens, Tensor parents, Tensor target_probs, Tensor? draft_probs, "
      "Tensor? num_nodes, bool replacement, Tensor seed, Tensor offset, bool row_streams, bool check=False) "
      "-> (Tensor, Tensor, Tensor)");
  // Traversal Verification (docs/algorithms.md §9, trees): verify_tree's arguments and draws. CPU only;
  // on CUDA tensors the Triton kernel runs.
  m.def(
      "verify_tree_block(Tensor tokens, Tensor parents, Tensor target_probs, Tensor? draft_probs, "
      "Tensor? num_nodes, bool replacement, Tensor seed, Tensor offset, bool row_streams, bool check=False) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "verify_tree_greedy(Tensor tokens, Tensor parents, Tensor target_logits, Tensor? num_nodes, "
      "bool check=False) -> (Tensor, Tensor, Tensor)");
  m.def("tree_attention_mask(Tensor parents, Tensor? num_nodes, bool packed) -> Tensor");
  m.def("tree_position_ids(Tensor parents, Tensor prefix_len, Tensor? num_nodes) -> Tensor");
  // Fused attention of tree nodes over their prefix and ancestors (docs/algorithms.md §5). q [B, Hq, N, D];
  // caches [B, Hkv, L, D]; cache_seqlens int [B]; tree K/V [B, Hkv, N, D]; tree_mask packed int32
  // [B, N, ceil(N/32)]. No C++ kernel: the cpu backend is a PyTorch composite and CUDA tensors run Triton
  // (specdec_kernels/ops/_dispatch.py registers them).
  m.def(
      "tree_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_seqlens, Tensor k_tree, "
      "Tensor v_tree, Tensor tree_mask, float scale) -> Tensor");
  // Entropy in nats of softmax(logits / T) per row (docs/algorithms.md §6): logits [R, V], temperature
  // float32 [R]; returns float32 [R].
  m.def("draft_entropy(Tensor logits, Tensor temperature, bool check=False) -> Tensor");
  // Distillation losses (docs/algorithms.md §7; spec in specdec_kernels/reference/losses.py). kind 0 =
  // total variation, 1 = forward KL. student_logits [N, V], teacher_probs [N, V]. Forward returns
  // float32 [N, 4] per-row stats (lse, value, a, c); backward takes them and a float32 [N] row
  // coefficient and returns the gradient [N, V] in the student's dtype.
  m.def("divergence_forward(Tensor student_logits, Tensor teacher_probs, int kind) -> Tensor");
  m.def(
      "divergence_backward(Tensor student_logits, Tensor teacher_probs, Tensor stats, Tensor coef, int kind) "
      "-> Tensor");
}

// A bare module so that `import specdec_kernels._C` loads the library and runs the registrations
// above; no pybind11 (it doubles the compile time and nothing here needs it).
static struct PyModuleDef specdec_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&specdec_module); }
