"""KV-cache compaction after tree verification (docs/algorithms.md §5): keep the accepted path only.

During verification tree node i occupies cache slot ``prefix + i`` (node 0, the root, at
``prefix``). Once :func:`specdec_kernels.verify_tree` has chosen a path, the key/value entries of
its accepted nodes must sit right after the root, in depth order, so that the next forward pass
sees an ordinary contiguous sequence.

The op works on tensors (its contract: ``specdec_kernels/contract/kv_cache.py``); a Hugging Face
cache is compacted by specdec (``specdec.models.compact_tree_cache``), which finds its layers'
tensors, calls this op and crops the cache. One implementation serves every device and backend (a
gather and a scatter per tensor), so the op is not in the dispatch table; the spec is the loop of
``specdec_kernels/reference/kv_cache.py``.
"""

from __future__ import annotations

import torch

from ..contract import kv_cache as contract


def _moves(accepted_nodes: torch.Tensor, num_accepted, prefix: torch.Tensor):
    """(source slots, destination slots) [B, N-1] and n [B]. Entries j >= n copy a slot onto
    itself, which keeps the whole move one gather and one scatter with no data-dependent shapes."""
    B, N = accepted_nodes.shape
    j = torch.arange(max(N - 1, 0), device=accepted_nodes.device)
    n = contract.accepted_counts(accepted_nodes, num_accepted)
    dst = prefix[:, None] + 1 + j[None, :]
    src = torch.where(j[None, :] < n[:, None], prefix[:, None] + accepted_nodes[:, : N - 1], dst)
    return src, dst, n


def _compact_tensor(t: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> None:
    B, H, _, D = t.shape
    if src.shape[1] == 0:
        return
    # Gather every source first, then scatter: sources and destinations of different j may overlap.
    idx_src = src[:, None, :, None].expand(B, H, src.shape[1], D)
    idx_dst = dst[:, None, :, None].expand(B, H, dst.shape[1], D)
    t.scatter_(2, idx_dst, t.gather(2, idx_src))


def compact_tree_kv(
    kv,
    accepted_nodes: torch.Tensor,
    prefix_len: int | torch.Tensor,
    *,
    num_accepted: torch.Tensor | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Move the accepted path's key/value entries to contiguous slots right after the root.

    For each request b and ``j < num_accepted[b]``, slot ``prefix_len[b] + 1 + j`` receives slot
    ``prefix_len[b] + accepted_nodes[b, j]`` (the root stays at ``prefix_len[b]``). Safe in place:
    all sources are read before any destination is written.

    Args:
        kv: what to compact, in place: a tensor of shape (B, H, S, D) (keys or values), or a
            sequence of such tensors (e.g. every layer's keys and values). Anything else raises
            ValueError: a Hugging Face ``Cache`` is compacted (and cropped) by specdec's cache
            wrapper, ``specdec.models.compact_tree_cache``, which finds its layers' tensors and
            calls this op on them.
        accepted_nodes: ``TreeResult.accepted_nodes``. Shape: (B, N), int64: increasing node
            indices of the accepted path, then -1.
        prefix_len: int, or int tensor of shape () or (B,): the slot of the root.
        num_accepted: Shape: (B,), int, or None (counted from ``accepted_nodes >= 0``).
        check: validate accepted_nodes / num_accepted and the tensors' length (one device sync).

    Returns:
        int64 (B,): the valid length of each row afterwards, ``prefix_len + 1 + num_accepted``.
        Slots past a row's length are left as they were: crop or mask them (attention mask) in the
        next forward.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> k = torch.arange(6.).reshape(1, 1, 6, 1)              # prefix 2, tree of 4 nodes
        >>> sk.compact_tree_kv(k, torch.tensor([[2, 3, -1, -1]]), 2)
        tensor([5])
        >>> k.flatten()
        tensor([0., 1., 2., 4., 5., 5.])
    """
    args = contract.compact_tree_kv_args(kv, accepted_nodes, prefix_len, num_accepted)
    if check:
        contract.check_compact_tree_kv_values(*args)
    src, dst, n = _moves(args.accepted_nodes, args.num_accepted, args.prefix_len)
    for t in args.kv:
        _compact_tensor(t, src, dst)
    return args.prefix_len + 1 + n
