"""Fused tree attention (docs/algorithms.md §5): verify a whole tree through a target without a dense mask."""

from __future__ import annotations

import math

import torch

from .. import _backend
from ..contract._common import require_device, require_tensor

#: The most tree nodes one call takes (one tile of the kernels; the tree tile is [N, N]).
TREE_ATTENTION_MAX_NODES = 64
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _check_tree_attention(q, k_cache, v_cache, cache_seqlens, k_tree, v_tree, tree_mask, scale, check: bool,
                          float64: bool = False):
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
    if D < 1 or D > 256:
        raise ValueError(f"head dim (q.shape[3]) must be in [1, 256], got {D}")
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
    if check and B:
        bad = (cache_seqlens < 0) | (cache_seqlens > L)
        if bool(bad.any()):
            b = int(bad.nonzero()[0, 0])
            raise ValueError(f"cache_seqlens[{b}] = {int(cache_seqlens[b])} is outside [0, L = {L}]")
        i = torch.arange(N, device=q.device)
        diag = (tree_mask[:, i, i // 32].to(torch.int64) >> (i % 32)) & 1
        if bool((diag == 0).any()):
            b, n = (int(x) for x in (diag == 0).nonzero()[0])
            raise ValueError(f"tree_mask[{b}] does not let node {n} see itself (every row must have its "
                             "own bit: build it with tree_attention_mask)")
    return B, Hq, N, D, Hkv, L, float(scale)


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
    B, Hq, N, D, Hkv, L, scale = _check_tree_attention(q, k_cache, v_cache, cache_seqlens, k_tree, v_tree,
                                                       tree_mask, scale, check)
    backend = _backend.select("tree_attention", q.device)
    if backend == "reference":
        from ..reference.attention import tree_attention as ref

        return ref(q, k_cache, v_cache, cache_seqlens, k_tree, v_tree, tree_mask, scale=scale, check=False)
    if backend == "triton":
        from ..triton.attention import tree_attention as tri

        return tri(q, k_cache, v_cache, cache_seqlens, k_tree, v_tree, tree_mask, scale)
    if q.device.type == "cuda":
        # no hand-written CUDA kernel for this op: Triton serves CUDA tensors under every backend
        from ..triton.attention import tree_attention as tri

        return tri(q, k_cache, v_cache, cache_seqlens, k_tree, v_tree, tree_mask, scale)
    return _tree_attention_cpu(q, k_cache, v_cache, cache_seqlens, k_tree, v_tree, tree_mask, scale)


# torch's fused CPU flash attention (private ATen op, present since torch 2.1): it returns the
# log-sum-exp along with the output, which is what merging the prefix with the tree part needs.
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _tree_attention_cpu(q, k_cache, v_cache, cache_seqlens, k_tree, v_tree, tree_mask, scale: float,
                        chunk: int = 2048) -> torch.Tensor:
    """The cpu backend: the prefix through torch's fused flash attention, the tree tile in float32,
    merged by their log-sum-exps.

    The prefix needs no mask (every node sees all of it), so the G query heads of a KV head are
    stacked into one [G * N, D] query block and the fused kernel reads each KV entry once per KV
    head: no repeat of the cache for GQA and no [N, L + N] mask or score matrix. The [N, N] tree
    tile is small: it is computed for the whole batch at once (a few ops, not a Python loop: at short
    prefixes per-op overhead is what this backend spends its time on). 16-bit inputs stay 16-bit
    through the fused kernel (it accumulates in float32; its output is rounded once to the input
    dtype before the merge). Without the fused op: a blocked online softmax over BLAS matmuls
    (``chunk`` keys at a time).
    """
    from ..reference.attention import unpack_bits

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
