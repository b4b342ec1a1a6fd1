"""Fused tree attention (docs/algorithms.md §5): verify a whole tree through a target without a dense mask."""

from __future__ import annotations

import torch

from ..contract import attention as contract
from ..contract.attention import TREE_ATTENTION_MAX_NODES  # noqa: F401  (re-exported)
from . import _dispatch
from ._dispatch import Op

# No C++ kernel: CPU tensors run a composite of torch ops (the "cpu" backend), CUDA tensors the
# Triton kernel (on the "cuda" backend too).
_dispatch.register(Op("tree_attention", fake=contract.tree_attention_fake,
                      check_values=contract.check_tree_attention_values,
                      reference="reference.attention:op_tree_attention",
                      triton="triton.attention:tree_attention",
                      cpu="reference.attention:tree_attention_cpu", cuda=None, has_check=False, device_arg=0))


def tree_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    k_tree: torch.Tensor,
    v_tree: torch.Tensor,
    tree_mask: torch.Tensor,
    *,
    scale: float | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Attention of every tree node over the committed prefix plus its own ancestors, in one call.

    Node i of request b attends to the first ``cache_seqlens[b]`` cache entries and to the tree
    nodes j whose bit is set in its packed mask row (ancestors and itself, as
    :func:`tree_attention_mask` builds it), with softmax(q k^T * scale) v. No dense
    [N, L + N] mask is built: the prefix needs none, the tree part reads the bits. Verifying a tree
    this way costs what plain decode attention costs over the same prefix, plus one [N, N] tile.

    Args:
        q: the tree nodes' queries. Shape: (B, Hq, N, D), float32/float16/bfloat16; 1 <= N <= 64
            (``TREE_ATTENTION_MAX_NODES``), D <= 256.
        k_cache, v_cache: the committed prefix, Hugging Face cache layout. Shape: (B, Hkv, L, D),
            q's dtype; Hq a multiple of Hkv (grouped-query attention). Entries at or beyond
            ``cache_seqlens[b]`` are never read (L up to 32k and beyond; long prefixes are split
            across programs, flash-decoding style).
        cache_seqlens: the valid prefix length of each request. Shape: (B,), int32/int64, values in
            [0, L].
        k_tree, v_tree: the tree nodes' keys and values. Shape: (B, Hkv, N, D), q's dtype.
        tree_mask: ``tree_attention_mask(parents, packed=True)``. Shape: (B, N, ceil(N/32)), int32:
            bit j % 32 of word j // 32 of row i = node j visible to node i.
        scale: softmax scale; default 1 / sqrt(D).
        check: validate cache_seqlens and that every node sees itself (one device sync).

    Returns:
        (B, Hq, N, D) in q's dtype. Arithmetic in float32 (16-bit products accumulate in float32).

    Example:
        >>> import torch, specdec_kernels as sk
        >>> parents = torch.tensor([[-1, 0, 0, 1]])
        >>> mask = sk.tree_attention_mask(parents, packed=True)
        >>> q, kt, vt = torch.randn(1, 4, 4, 16), torch.randn(1, 2, 4, 16), torch.randn(1, 2, 4, 16)
        >>> kc, vc = torch.randn(1, 2, 10, 16), torch.randn(1, 2, 10, 16)
        >>> sk.tree_attention(q, kc, vc, torch.tensor([7]), kt, vt, mask).shape
        torch.Size([1, 4, 4, 16])
    """
    args = contract.tree_attention_args(q, k_cache, v_cache, cache_seqlens, k_tree, v_tree, tree_mask, scale)
    return _dispatch.call("tree_attention", args, check)
