"""Plain-PyTorch ground truth of tree attention (docs/algorithms.md §5): every tree node attends to the
first ``cache_seqlens[b]`` cache entries and to the tree nodes its packed mask row allows.

Computed in float64 with a dense visibility matrix built from the bits: slow, obvious, the spec. A
row that sees nothing (only possible with a mask that hides a node from itself and an empty
prefix) outputs zeros, as every backend does.

Also here, at the bottom: :func:`tree_attention_cpu`, the cpu backend (tree_attention has no C++
kernel; that backend is a composite of torch ops, the fused flash attention among them).
"""

from __future__ import annotations

import torch

from ..contract import attention as contract


def unpack_bits(words: torch.Tensor, n: int) -> torch.Tensor:
    """int32 [..., W] -> bool [..., n]: bit j % 32 of word j // 32 (the inverse of pack_bits)."""
    bits = (words.to(torch.int64)[..., :, None] >> torch.arange(32, device=words.device)) & 1
    return bits.reshape(*words.shape[:-1], -1)[..., :n].bool()


def op_tree_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      cache_seqlens: torch.Tensor, k_tree: torch.Tensor, v_tree: torch.Tensor,
                      tree_mask: torch.Tensor, scale: float) -> torch.Tensor:
    """The reference on the canonical arguments (``contract.attention.TreeAttentionArgs``)."""
    B, Hq, N, _ = q.shape
    Hkv, L = k_cache.shape[1], k_cache.shape[2]
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


def tree_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                   k_tree: torch.Tensor, v_tree: torch.Tensor, tree_mask: torch.Tensor, *,
                   scale: float | None = None, check: bool = True) -> torch.Tensor:
    """Reference of :func:`specdec_kernels.tree_attention` (also takes float64 inputs: the ground truth)."""
    args = contract.tree_attention_args(q, k_cache, v_cache, cache_seqlens, k_tree, v_tree, tree_mask, scale,
                                        float64=True)
    if check:
        contract.check_tree_attention_values(*args)
    return op_tree_attention(*args)


# ----------------------------------------------------------------------------------------------
# The cpu backend (not a reference: the fast path on CPU tensors, tested against the above)
# ----------------------------------------------------------------------------------------------

# torch's fused CPU flash attention (private ATen op, present since torch 2.1): it returns the
# log-sum-exp along with the output, which is what merging the prefix with the tree part needs.
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def tree_attention_cpu(q, k_cache, v_cache, cache_seqlens, k_tree, v_tree, tree_mask, scale: float,
                       chunk: int = 2048) -> torch.Tensor:
    """The cpu backend of tree_attention (no C++ kernel: a composite of torch ops) on the canonical
    arguments: the prefix through torch's fused flash attention, the tree tile in float32, merged by
    their log-sum-exps.

    The prefix needs no mask (every node sees all of it), so the G query heads of a KV head are
    stacked into one [G * N, D] query block and the fused kernel reads each KV entry once per KV
    head: no repeat of the cache for GQA and no [N, L + N] mask or score matrix. The [N, N] tree
    tile is small: it is computed for the whole batch at once (a few ops, not a Python loop: at short
    prefixes per-op overhead is what this backend spends its time on). 16-bit inputs stay 16-bit
    through the fused kernel (it accumulates in float32; its output is rounded once to the input
    dtype before the merge). Without the fused op: a blocked online softmax over BLAS matmuls
    (``chunk`` keys at a time).
    """
    B, Hq, N, D = q.shape
    Hkv = k_cache.shape[1]
    G = Hq // Hkv
    f = torch.float32
    qn = q.reshape(B, Hkv, G * N, D)
    qb = qn.to(f) * scale
    s = (qb @ k_tree.to(f).transpose(-1, -2)).view(B, Hkv, G, N, N)
    s = s.masked_fill(~unpack_bits(tree_mask, N)[:, None, None], float("-inf")).view(B, Hkv, G * N, N)
    # finite when every node sees itself (check=True enforces it); the clamp keeps a bad mask under
    # check=False from turning a row into NaN through exp(-inf - -inf)
    m = s.amax(-1).clamp_min(-1e30)
    p = torch.exp(s - m[..., None])
    den = p.sum(-1)
    acc = p @ v_tree.to(f)  # [B, Hkv, G*N, D], unnormalised
    lens = cache_seqlens.tolist()
    if _FLASH_CPU is not None:
        lse_tree = m + torch.log(den)
        o_tree = acc / torch.where(den > 0, den, torch.ones_like(den))[..., None]
        groups = [(0, B, lens[0])] if len(set(lens)) == 1 else [(b, b + 1, lens[b]) for b in range(B)]
        outs = []
        for b0, b1, n in groups:
            if n == 0:
                outs.append(o_tree[b0:b1])
                continue
            o_pre, lse_pre = _FLASH_CPU(qn[b0:b1], k_cache[b0:b1, :, :n], v_cache[b0:b1, :, :n], 0.0, False,
                                        scale=scale)  # fmt: skip
            top = torch.maximum(lse_tree[b0:b1], lse_pre)
            w_pre, w_tree = torch.exp(lse_pre - top), torch.exp(lse_tree[b0:b1] - top)
            res = o_pre.to(f) * w_pre[..., None] + o_tree[b0:b1] * w_tree[..., None]
            outs.append(res / (w_pre + w_tree)[..., None])
        res = outs[0] if len(outs) == 1 else torch.cat(outs)
        return res.reshape(B, Hq, N, D).to(q.dtype)
    out = torch.empty_like(q)
    for b in range(B):
        mb, denb, accb = m[b], den[b], acc[b]
        for l0 in range(0, int(lens[b]), chunk):
            l1 = min(l0 + chunk, int(lens[b]))
            sb = qb[b] @ k_cache[b, :, l0:l1].to(f).transpose(-1, -2)
            m_new = torch.maximum(mb, sb.amax(-1))
            alpha = torch.exp(mb - m_new)
            pb = torch.exp(sb - m_new[..., None])
            denb = denb * alpha + pb.sum(-1)
            accb = accb * alpha[..., None] + pb @ v_cache[b, :, l0:l1].to(f)
            mb = m_new
        res = accb / torch.where(denb > 0, denb, torch.ones_like(denb))[..., None]
        out[b] = res.reshape(Hq, N, D).to(q.dtype)
    return out
