"""Helpers for testing and benchmarking specdec_kernels ops; used by the project's tests, benchmarks,
``python -m specdec_kernels`` and the GPU check (benchmarks/gpu_quick_check.py).

    import specdec_kernels as sk
    import specdec_kernels.testing as skt

    inp = skt.make_chain_inputs("cpu", B=8, K=5, V=32000)
    out = sk.verify_chain(inp.x, inp.p, inp.q, seed=inp.seed, offset=inp.offset)
    skt.check_chain(out, sk.reference.verify_chain(inp.x, inp.p, inp.q, seed=inp.seed,
                                                   offset=inp.offset), K=5, V=32000)
    print(skt.chain_bytes(out.num_accepted, 5, 32000, "float32", draft_probs=True) / 1e6, "MB")

Modules:
    inputs    realistic inputs per op family, deterministic given a seed, device and dtype
    compare   comparators against the reference, raising AssertionError with what differs
    traffic   the bytes an op call must move (the floor of effective-bandwidth figures)
    timing    device sync, CUDA-graph capture, median timings

Not imported by ``import specdec_kernels``: import this module explicitly. It needs only torch.
"""

from __future__ import annotations

from .compare import assert_same, check_chain, check_probs, check_samples, check_tree
from .inputs import (
    DTYPES,
    ChainInputs,
    TreeInputs,
    as_dtype,
    make_chain_inputs,
    make_logits,
    make_tree_inputs,
    to_device,
)
from .timing import capture_cuda_graph, graph_median_us, median_us, sync
from .traffic import (
    attention_bytes,
    chain_bytes,
    elt,
    entropy_bytes,
    greedy_bytes,
    row_k_bytes,
    sampling_bytes,
    tree_bytes,
    tree_greedy_bytes,
    tvdpp_bytes,
)

__all__ = [
    "DTYPES",
    "ChainInputs",
    "TreeInputs",
    "as_dtype",
    "assert_same",
    "attention_bytes",
    "capture_cuda_graph",
    "chain_bytes",
    "check_chain",
    "check_probs",
    "check_samples",
    "check_tree",
    "elt",
    "entropy_bytes",
    "graph_median_us",
    "greedy_bytes",
    "make_chain_inputs",
    "make_logits",
    "make_tree_inputs",
    "median_us",
    "row_k_bytes",
    "sampling_bytes",
    "sync",
    "to_device",
    "tree_bytes",
    "tree_greedy_bytes",
    "tvdpp_bytes",
]
