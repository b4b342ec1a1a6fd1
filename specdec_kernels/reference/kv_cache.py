"""Plain-PyTorch ground truth for KV-cache compaction: a loop over rows and accepted nodes."""

from __future__ import annotations

import torch


def compact_tree_kv(kv: torch.Tensor, accepted_nodes: torch.Tensor, prefix_len: int | torch.Tensor, *,
                    num_accepted: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Out-of-place reference of :func:`specdec_kernels.compact_tree_kv` for one [B, H, S, D]
    tensor: returns (the compacted copy, the new lengths)."""
    out = kv.clone()
    B, N = accepted_nodes.shape
    prefix = [int(prefix_len)] * B if not isinstance(prefix_len, torch.Tensor) or prefix_len.dim() == 0 \
        else [int(v) for v in prefix_len]
    lengths = torch.zeros(B, dtype=torch.long)
    for b in range(B):
        n = int((accepted_nodes[b] >= 0).sum()) if num_accepted is None else int(num_accepted[b])
        for j in range(n):
            out[b, :, prefix[b] + 1 + j] = kv[b, :, prefix[b] + int(accepted_nodes[b, j])]
        lengths[b] = prefix[b] + 1 + n
    return out, lengths.to(kv.device)
