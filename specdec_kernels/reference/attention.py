"""Plain-PyTorch ground truth of tree attention (docs/algorithms.md §5): every tree node attends to the
first ``cache_seqlens[b]`` cache entries and to the tree nodes its packed mask row allows.

Computed in float64 with a dense visibility matrix built from the bits: slow, obvious, the spec. A
row that sees nothing (only possible with a mask that hides a node from itself and an empty
prefix) outputs zeros, as every backend does.
"""

from __future__ import annotations

import torch


def unpack_bits(words: torch.Tensor, n: int) -> torch.Tensor:
    """int32 [..., W] -> bool [..., n]: bit j % 32 of word j // 32 (the inverse of pack_bits)."""
    bits = (words.to(torch.int64)[..., :, None] >> torch.arange(32, device=words.device)) & 1
    return bits.reshape(*words.shape[:-1], -1)[..., :n].bool()


def tree_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                   k_tree: torch.Tensor, v_tree: torch.Tensor, tree_mask: torch.Tensor, *,
                   scale: float | None = None, check: bool = True) -> torch.Tensor:
    """Reference of :func:`specdec_kernels.tree_attention` (also takes float64 inputs: the ground truth)."""
    from ..ops.attention import _check_tree_attention

    B, Hq, N, D, Hkv, L, scale = _check_tree_attention(q, k_cache, v_cache, cache_seqlens, k_tree, v_tree,
                                                       tree_mask, scale, check, float64=True)
    g = Hq // Hkv
    f = torch.float64
    prefix = torch.arange(L, device=q.device)[None, :] < cache_seqlens.to(q.device).long()[:, None]  # [B, L]
    # entries beyond a row's prefix are ignored whatever they hold (even NaN): zero them first
    hide = ~prefix[:, None, :, None]
    k = torch.cat([k_cache.to(f).masked_fill(hide, 0), k_tree.to(f)], 2).repeat_interleave(g, 1)
    v = torch.cat([v_cache.to(f).masked_fill(hide, 0), v_tree.to(f)], 2).repeat_interleave(g, 1)
    visible = torch.cat([prefix[:, None, :].expand(B, N, L), unpack_bits(tree_mask, N)], -1)  # [B, N, L+N]
    scores = (q.to(f) @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    m = scores.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(scores - m)
    denom = w.sum(-1, keepdim=True)
    out = (w @ v) / torch.where(denom > 0, denom, torch.ones_like(denom))
    return out.to(q.dtype)
