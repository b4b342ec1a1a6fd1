"""Contract of fused tree attention (docs/algorithms.md §5).

Canonical arguments (the C++ schema, once csrc/registration.cpp defines it; no ``check``: no
compiled kernel validates values):

    tree_attention(q [B, Hq, N, D], k_cache [B, Hkv, L, D], v_cache [B, Hkv, L, D],
        cache_seqlens [B] int32/int64, k_tree [B, Hkv, N, D], v_tree [B, Hkv, N, D],
        tree_mask [B, N, ceil(N/32)] int32, scale float) -> [B, Hq, N, D] in q's dtype

Node i of request b attends to the first ``cache_seqlens[b]`` cache entries and to the tree nodes
whose bit is set in row i of its packed mask (bit j % 32 of word j // 32). float32/float16/bfloat16
(the reference also takes float64).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._common import raise_first, require_device, require_tensor

#: The most tree nodes one call takes (one tile of the kernels; the tree tile is [N, N]).
TREE_ATTENTION_MAX_NODES = 64

#: The largest head dimension the kernels take.
TREE_ATTENTION_MAX_HEAD_DIM = 256

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class TreeAttentionArgs(NamedTuple):
    """Canonical arguments of tree_attention."""

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    cache_seqlens: torch.Tensor
    k_tree: torch.Tensor
    v_tree: torch.Tensor
    tree_mask: torch.Tensor
    scale: float


def tree_attention_args(q, k_cache, v_cache, cache_seqlens, k_tree, v_tree, tree_mask, scale=None, *,
                        float64: bool = False) -> TreeAttentionArgs:
    """Check shapes, dtypes and devices (always) and resolve ``scale`` (default 1 / sqrt(D)).
    ``float64``: also take float64 tensors (the reference)."""
    names = ("q", "k_cache", "v_cache", "k_tree", "v_tree")
    ts = (q, k_cache, v_cache, k_tree, v_tree)
    for t, nm in zip(ts, names, strict=True):
        require_tensor(t, nm)
        if t.dim() != 4:
            raise ValueError(f"{nm} must be 4-D [B, H, S, D], got shape {list(t.shape)}")
        if t.dtype not in _FLOATS and not (float64 and t.dtype == torch.float64):
            raise ValueError(f"{nm} must be float32, float16 or bfloat16, got {t.dtype}")
        if t.dtype != q.dtype:
            raise ValueError(f"{nm} must have q's dtype {q.dtype}, got {t.dtype}")
        require_device(t, q, nm, "q")
    B, Hq, N, D = q.shape
    if not 1 <= N <= TREE_ATTENTION_MAX_NODES:
        raise ValueError(f"q must hold 1..{TREE_ATTENTION_MAX_NODES} tree nodes (q.shape[2]), got {N}; "
                         "verify larger trees in several calls or with tree_attention_bias")
    if D < 1 or D > TREE_ATTENTION_MAX_HEAD_DIM:
        raise ValueError(f"head dim (q.shape[3]) must be in [1, {TREE_ATTENTION_MAX_HEAD_DIM}], got {D}")
    Hkv, L = k_cache.shape[1], k_cache.shape[2]
    for t, nm in ((k_cache, "k_cache"), (v_cache, "v_cache")):
        if t.shape[0] != B or t.shape[1] != Hkv or t.shape[2] != L or t.shape[3] != D:
            raise ValueError(f"{nm} must be [B, Hkv, L, D] = [{B}, {Hkv}, {L}, {D}], got {list(t.shape)}")
    for t, nm in ((k_tree, "k_tree"), (v_tree, "v_tree")):
        if list(t.shape) != [B, Hkv, N, D]:
            raise ValueError(f"{nm} must be [B, Hkv, N, D] = [{B}, {Hkv}, {N}, {D}], got {list(t.shape)}")
    if Hkv < 1 or Hq % Hkv:
        raise ValueError(f"q's heads ({Hq}) must be a multiple of the KV heads ({Hkv}) "
                         "(grouped-query attention)")
    require_tensor(cache_seqlens, "cache_seqlens")
    if cache_seqlens.dtype not in (torch.int32, torch.int64) or list(cache_seqlens.shape) != [B]:
        raise ValueError(f"cache_seqlens must be an int32/int64 tensor [B] = [{B}], got "
                         f"{cache_seqlens.dtype} {list(cache_seqlens.shape)}")
    require_device(cache_seqlens, q, "cache_seqlens", "q")
    require_tensor(tree_mask, "tree_mask")
    W = (N + 31) // 32
    if tree_mask.dtype != torch.int32 or list(tree_mask.shape) != [B, N, W]:
        raise ValueError(f"tree_mask must be the packed int32 mask [B, N, ceil(N/32)] = [{B}, {N}, {W}] "
                         f"(tree_attention_mask(parents, packed=True)), got {tree_mask.dtype} "
                         f"{list(tree_mask.shape)}")
    require_device(tree_mask, q, "tree_mask", "q")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    elif (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale)
          or scale <= 0):
        raise ValueError(f"scale must be a finite float > 0 or None, got {scale!r}")
    return TreeAttentionArgs(q, k_cache, v_cache, cache_seqlens, k_tree, v_tree, tree_mask, float(scale))


def check_tree_attention_values(q, k_cache, v_cache, cache_seqlens, k_tree, v_tree, tree_mask, scale) -> None:
    """The check=True pass (one device sync): cache_seqlens in [0, L], every node sees itself."""
    B, _, N, _ = q.shape
    if B == 0:
        return
    L = k_cache.shape[2]
    bad = (cache_seqlens < 0) | (cache_seqlens > L)
    i = torch.arange(N, device=q.device)
    blind = ((tree_mask[:, i, i // 32].to(torch.int64) >> (i % 32)) & 1) == 0

    def seqlen_msg():
        b = int(bad.nonzero()[0, 0])
        return f"cache_seqlens[{b}] = {int(cache_seqlens[b])} is outside [0, L = {L}]"

    def blind_msg():
        b, n = (int(x) for x in blind.nonzero()[0])
        return (f"tree_mask[{b}] does not let node {n} see itself (every row must have its own bit: build "
                "it with tree_attention_mask)")

    raise_first([bad.any(), blind.any()], [seqlen_msg, blind_msg])


def tree_attention_fake(q, *_args):
    """Output shape of tree_attention, for torch.compile and CUDA graphs."""
    return q.new_empty(q.shape)
