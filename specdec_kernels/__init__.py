"""specdec_kernels: exact speculative-decoding kernels for chains and trees.

Public ops (see each docstring for shapes and dtypes):
    verify_chain, verify_chain_greedy   chain verification (docs/algorithms.md §1)
    sampling_probs                      temperature / top-k / top-p -> probabilities
    gumbel_topk, stochastic_beam_step   sampling without replacement (docs/algorithms.md §2-3)
    verify_tree, verify_tree_greedy     exact tree verification (recursive rejection sampling, §4)
    tree_attention_mask, tree_position_ids, tree_attention_bias   tree attention inputs (§5)
    tree_attention                      fused attention of tree nodes over prefix + ancestors (§5)
    compact_tree_kv                     move the accepted path's KV entries after the prefix
    draft_entropy, adaedl_stop          entropy-based early draft stopping (AdaEDL, §6)
    policies                            draft-length policies: StaticLength, AdaEDL, MaxConfidence
    tvdpp_loss, tvd_loss, kl_loss       drafter distillation losses with fused kernels (TVD++, §7)
Every op has a plain-PyTorch reference under ``specdec_kernels.reference`` with the same signature.
Backends: reference, cpu (C++), triton, cuda (C++); see ``specdec_kernels.backends()``.
"""

from __future__ import annotations

from . import _backend
from ._backend import cpu_simd_level, use_backend, use_cpu_simd
from .contract._common import BeamStep, ChainResult, TopKSample, TreeResult
from .ops.attention import TREE_ATTENTION_MAX_NODES, tree_attention
from .ops.chain import VERIFY_CHAIN_OFFSET_STRIDE, VERIFY_CHAIN_RULES, verify_chain, verify_chain_greedy
from .ops.entropy import adaedl_stop, draft_entropy
from .ops.gumbel import GUMBEL_OFFSET_STRIDE, gumbel_topk, stochastic_beam_step
from .ops.kv_cache import compact_tree_kv
from .ops.losses import kl_loss, tvd_loss, tvdpp_loss
from .ops.sampling import sampling_probs
from .ops.tree import (
    VERIFY_TREE_OFFSET_STRIDE,
    tree_attention_bias,
    tree_attention_mask,
    tree_position_ids,
    verify_tree,
    verify_tree_greedy,
)

__version__ = "0.1.0"

# After the ops: the policies build on draft_entropy; sk.reference.<op> is the spec of each op,
# with the op's signature.
from . import policies, reference  # noqa: E402

if _backend.cpp_status()[0]:
    from .ops import _dispatch

    _dispatch.install()


def backends(device: str = "cpu") -> list[str]:
    """Backends that can run ops on tensors of ``device`` here."""
    return _backend.available(device)


__all__ = [
    "BeamStep",
    "ChainResult",
    "GUMBEL_OFFSET_STRIDE",
    "TopKSample",
    "TREE_ATTENTION_MAX_NODES",
    "TreeResult",
    "VERIFY_TREE_OFFSET_STRIDE",
    "adaedl_stop",
    "draft_entropy",
    "kl_loss",
    "tvd_loss",
    "tvdpp_loss",
    "compact_tree_kv",
    "tree_attention",
    "tree_attention_bias",
    "tree_attention_mask",
    "tree_position_ids",
    "verify_tree",
    "verify_tree_greedy",
    "gumbel_topk",
    "stochastic_beam_step",
    "VERIFY_CHAIN_OFFSET_STRIDE",
    "VERIFY_CHAIN_RULES",
    "backends",
    "cpu_simd_level",
    "policies",
    "reference",
    "sampling_probs",
    "use_backend",
    "use_cpu_simd",
    "verify_chain",
    "verify_chain_greedy",
]
