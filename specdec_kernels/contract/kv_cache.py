"""Contract of KV-cache compaction after tree verification (docs/algorithms.md §5).

    compact_tree_kv(kv: tensors [B, H, S, D], accepted_nodes [B, N] int64, prefix_len [B] int64,
        num_accepted [B] int64 | None) -> lengths [B] int64, the tensors moved in place

For each row b and ``j < n_b`` (``num_accepted``, or the count of ``accepted_nodes >= 0``), slot
``prefix_len[b] + 1 + j`` receives slot ``prefix_len[b] + accepted_nodes[b, j]``; the root stays at
``prefix_len[b]``. The op works on tensors only: Hugging Face caches (finding their layers' tensors,
cropping) are specdec's business (``specdec.models.compact_tree_cache``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ._common import raise_first, require_device, require_tensor
from .tree import prefix_rows

#: Where a Hugging Face cache is compacted instead (python/specdec/models.py).
HF_CACHE_COMPACTION = "specdec.models.compact_tree_cache"


class CompactTreeKVArgs(NamedTuple):
    """Canonical arguments of compact_tree_kv."""

    kv: list[torch.Tensor]
    accepted_nodes: torch.Tensor
    prefix_len: torch.Tensor
    num_accepted: torch.Tensor | None


def _not_tensors(name: str, want: str, got) -> ValueError:
    return ValueError(
        f"{name} must be {want}, got {type(got).__name__}; a Hugging Face Cache (DynamicCache etc., or a "
        f"legacy tuple of (keys, values) per layer) is compacted by specdec's cache wrapper "
        f"{HF_CACHE_COMPACTION} (SequenceCache uses it), not by specdec_kernels")


def kv_tensors(kv) -> tuple[list[torch.Tensor], list[str]]:
    """The tensors of ``kv`` (a tensor or a sequence of tensors) and their names for messages."""
    if isinstance(kv, torch.Tensor):
        return [kv], ["kv"]
    if not isinstance(kv, Sequence) or isinstance(kv, (str, bytes)):
        raise _not_tensors("kv", "a tensor [B, H, S, D] or a sequence of them", kv)
    tensors = list(kv)
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise _not_tensors(f"kv[{i}]", "a torch.Tensor [B, H, S, D]", t)
    return tensors, [f"kv[{i}]" for i in range(len(tensors))]


def compact_tree_kv_args(kv, accepted_nodes, prefix_len, num_accepted=None) -> CompactTreeKVArgs:
    """Check shapes, dtypes and devices (always) and normalise to the canonical arguments."""
    tensors, names = kv_tensors(kv)
    for t, nm in zip(tensors, names, strict=True):
        if t.dim() != 4:
            raise ValueError(f"{nm} must be [B, H, S, D], got shape {list(t.shape)}")
    require_tensor(accepted_nodes, "accepted_nodes")
    if accepted_nodes.dim() != 2 or accepted_nodes.dtype != torch.int64:
        raise ValueError(f"accepted_nodes must be int64 [B, N] (TreeResult.accepted_nodes), got "
                         f"{accepted_nodes.dtype} {list(accepted_nodes.shape)}")
    B = accepted_nodes.shape[0]
    if tensors and tensors[0].shape[0] != B:
        raise ValueError(f"the cache has batch size {tensors[0].shape[0]} but accepted_nodes has B = {B}")
    prefix = prefix_rows(prefix_len, B, accepted_nodes.device)
    if num_accepted is not None:
        require_tensor(num_accepted, "num_accepted")
        if list(num_accepted.shape) != [B] or num_accepted.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"num_accepted must be int [B] = [{B}], got {num_accepted.dtype} "
                             f"{list(num_accepted.shape)}")
        require_device(num_accepted, accepted_nodes, "num_accepted", "accepted_nodes")
        num_accepted = num_accepted.to(torch.int64)
    for t, nm in zip(tensors, names, strict=True):
        if t.device != accepted_nodes.device:
            raise ValueError(f"{nm} must be on the device of accepted_nodes ({accepted_nodes.device}), "
                             f"got {t.device}")
    return CompactTreeKVArgs(tensors, accepted_nodes, prefix, num_accepted)


def accepted_counts(accepted_nodes: torch.Tensor, num_accepted: torch.Tensor | None) -> torch.Tensor:
    """n [B]: ``num_accepted``, or the count of ``accepted_nodes >= 0``."""
    return num_accepted if num_accepted is not None else (accepted_nodes >= 0).sum(-1)


def check_compact_tree_kv_values(kv, accepted_nodes, prefix_len, num_accepted) -> None:
    """The check=True pass (one device sync): n in [0, N-1], a path of increasing nodes in (0, N)
    before the -1 padding, and every tensor long enough for ``prefix_len + N`` slots."""
    B, N = accepted_nodes.shape
    if B == 0:
        return
    S = min(t.shape[2] for t in kv) if kv else None
    n = accepted_counts(accepted_nodes, num_accepted)
    j = torch.arange(N, device=accepted_nodes.device)
    live = j[None, :] < n[:, None]
    prev = torch.cat([torch.zeros(B, 1, dtype=torch.long, device=accepted_nodes.device),
                      accepted_nodes[:, :-1]], 1)
    flags = torch.stack([
        ((n < 0) | (n > N - 1)).any(),
        (live & ((accepted_nodes <= prev) | (accepted_nodes >= N))).any(),
        ((prefix_len + N > S).any() if S is not None else torch.zeros((), dtype=torch.bool,
                                                                     device=prefix_len.device)),
    ])
    msgs = [f"num_accepted must be in [0, N-1] = [0, {N - 1}]",
            "accepted_nodes must list increasing node indices in (0, N) before its -1 padding "
            "(a path from the root, as TreeResult.accepted_nodes)",
            f"the cache is too short: prefix_len + N must be <= its length {S}"]
    raise_first(flags, msgs)
