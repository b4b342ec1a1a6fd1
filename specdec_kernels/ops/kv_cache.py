"""KV-cache compaction after tree verification (docs/algorithms.md §5): keep the accepted path only.

During verification tree node i occupies cache slot ``prefix + i`` (node 0, the root, at
``prefix``). Once :func:`specdec_kernels.verify_tree` has chosen a path, the key/value entries of
its accepted nodes must sit right after the root, in depth order, so that the next forward pass
sees an ordinary contiguous sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..contract._common import raise_first, require_device, require_tensor


def _moves(accepted_nodes: torch.Tensor, num_accepted, prefix: torch.Tensor):
    """(source slots, destination slots) [B, N-1] and n [B]. Entries j >= n copy a slot onto
    itself, which keeps the whole move one gather and one scatter with no data-dependent shapes."""
    B, N = accepted_nodes.shape
    j = torch.arange(max(N - 1, 0), device=accepted_nodes.device)
    n = num_accepted if num_accepted is not None else (accepted_nodes >= 0).sum(-1)
    dst = prefix[:, None] + 1 + j[None, :]
    src = torch.where(j[None, :] < n[:, None], prefix[:, None] + accepted_nodes[:, : N - 1], dst)
    return src, dst, n


def _check(accepted_nodes, num_accepted, prefix_len, B_kv: int | None, S: int | None, check: bool):
    from .tree import _prefix_rows

    require_tensor(accepted_nodes, "accepted_nodes")
    if accepted_nodes.dim() != 2 or accepted_nodes.dtype != torch.int64:
        raise ValueError(f"accepted_nodes must be int64 [B, N] (TreeResult.accepted_nodes), got "
                         f"{accepted_nodes.dtype} {list(accepted_nodes.shape)}")
    B, N = accepted_nodes.shape
    if B_kv is not None and B_kv != B:
        raise ValueError(f"the cache has batch size {B_kv} but accepted_nodes has B = {B}")
    prefix = _prefix_rows(prefix_len, B, accepted_nodes.device)
    if num_accepted is not None:
        require_tensor(num_accepted, "num_accepted")
        if list(num_accepted.shape) != [B] or num_accepted.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"num_accepted must be int [B] = [{B}], got {num_accepted.dtype} "
                             f"{list(num_accepted.shape)}")
        require_device(num_accepted, accepted_nodes, "num_accepted", "accepted_nodes")
        num_accepted = num_accepted.to(torch.int64)
    if check and B > 0:
        n = num_accepted if num_accepted is not None else (accepted_nodes >= 0).sum(-1)
        j = torch.arange(N, device=accepted_nodes.device)
        live = j[None, :] < n[:, None]
        prev = torch.cat([torch.zeros(B, 1, dtype=torch.long, device=accepted_nodes.device),
                          accepted_nodes[:, :-1]], 1)
        flags = torch.stack([
            ((n < 0) | (n > N - 1)).any(),
            (live & ((accepted_nodes <= prev) | (accepted_nodes >= N))).any(),
            ((prefix + N > S).any() if S is not None else torch.zeros((), dtype=torch.bool,
                                                                         device=prefix.device)),
        ])
        msgs = [f"num_accepted must be in [0, N-1] = [0, {N - 1}]",
                "accepted_nodes must list increasing node indices in (0, N) before its -1 padding "
                "(a path from the root, as TreeResult.accepted_nodes)",
                f"the cache is too short: prefix_len + N must be <= its length {S}"]
        raise_first(flags, msgs)
    return prefix, num_accepted


def _compact_tensor(t: torch.Tensor, src, dst, name: str) -> None:
    if t.dim() != 4:
        raise ValueError(f"{name} must be [B, H, S, D], got shape {list(t.shape)}")
    if t.device != src.device:
        raise ValueError(f"{name} must be on the device of accepted_nodes ({src.device}), got {t.device}")
    B, H, _, D = t.shape
    if src.shape[1] == 0:
        return
    # Gather every source first, then scatter: sources and destinations of different j may overlap.
    idx_src = src[:, None, :, None].expand(B, H, src.shape[1], D)
    idx_dst = dst[:, None, :, None].expand(B, H, dst.shape[1], D)
    t.scatter_(2, idx_dst, t.gather(2, idx_src))


def _cache_layers(cache) -> list[tuple[object, str, str]] | None:
    """(owner, key attribute, value attribute) per layer of a Hugging Face Cache, or None."""
    layers = getattr(cache, "layers", None)
    if layers is not None and all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers):
        return [(layer, "keys", "values") for layer in layers]  # transformers >= 4.56 / 5.x
    if hasattr(cache, "key_cache") and hasattr(cache, "value_cache"):
        return None
    raise ValueError("kv must be a tensor [B, H, S, D], a sequence of them, or a Hugging Face Cache "
                     f"(with .layers or .key_cache/.value_cache), got {type(cache).__name__}")


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
        kv: what to compact, in place: a tensor of shape (B, H, S, D) (keys or values), a sequence
            of such tensors (e.g. every layer's keys and values), or a Hugging Face ``Cache``
            (``DynamicCache`` etc.: ``.layers[i].keys/.values`` or ``.key_cache/.value_cache``).
            A Cache is then cropped to ``prefix_len + 1 + max(num_accepted)`` slots.
        accepted_nodes: ``TreeResult.accepted_nodes``. Shape: (B, N), int64: increasing node
            indices of the accepted path, then -1.
        prefix_len: int, or int tensor of shape () or (B,): the slot of the root. A Cache needs
            an int (its rows share one length).
        num_accepted: Shape: (B,), int, or None (counted from ``accepted_nodes >= 0``).
        check: validate accepted_nodes / num_accepted and the cache length (one device sync).

    Returns:
        int64 (B,): the valid length of each row afterwards, ``prefix_len + 1 + num_accepted``.
        With a batched Cache, rows shorter than the longest keep stale entries past their length:
        mask them (attention mask) in the next forward.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> k = torch.arange(6.).reshape(1, 1, 6, 1)              # prefix 2, tree of 4 nodes
        >>> sk.compact_tree_kv(k, torch.tensor([[2, 3, -1, -1]]), 2)
        tensor([5])
        >>> k.flatten()
        tensor([0., 1., 2., 4., 5., 5.])
    """
    if isinstance(kv, torch.Tensor):
        tensors, names, cache = [kv], ["kv"], None
    elif isinstance(kv, Sequence) and not isinstance(kv, (str, bytes)):
        tensors = list(kv)
        names = [f"kv[{i}]" for i in range(len(tensors))]
        cache = None
        for t, nm in zip(tensors, names, strict=True):
            require_tensor(t, nm)
    else:
        cache = kv
        if not isinstance(prefix_len, int) or isinstance(prefix_len, bool):
            raise ValueError("prefix_len must be an int for a Hugging Face Cache (its rows share one length)")
        owners = _cache_layers(cache)
        tensors, names = [], []
        if owners is None:
            pairs = list(zip(cache.key_cache, cache.value_cache, strict=True))
        else:
            pairs = [(getattr(o, ka), getattr(o, va)) for o, ka, va in owners]
        for i, (k, v) in enumerate(pairs):
            if k is None or (isinstance(k, torch.Tensor) and k.numel() == 0):
                continue  # a layer that holds nothing yet (lazy init) has nothing to move
            tensors += [k, v]
            names += [f"layer {i} keys", f"layer {i} values"]
    for t, nm in zip(tensors, names, strict=True):
        if t.dim() != 4:
            raise ValueError(f"{nm} must be [B, H, S, D], got shape {list(t.shape)}")
    B_kv = tensors[0].shape[0] if tensors else None
    S = min(t.shape[2] for t in tensors) if tensors else None
    prefix, num_accepted = _check(accepted_nodes, num_accepted, prefix_len, B_kv, S, check)
    src, dst, n = _moves(accepted_nodes, num_accepted, prefix)
    for t, nm in zip(tensors, names, strict=True):
        _compact_tensor(t, src, dst, nm)
    lengths = prefix + 1 + n
    if cache is not None and tensors:
        keep = int(lengths.max()) if lengths.numel() else int(prefix_len) + 1
        # Portable crop: transformers 5.x takes the number of tokens to remove as a negative n,
        # 4.x keeps n tokens but also accepts a negative n meaning "remove |n|".
        extra = int(cache.get_seq_length()) - keep
        if extra > 0:
            cache.crop(-extra)
    return lengths
