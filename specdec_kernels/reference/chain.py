"""Plain-PyTorch ground truth for chain verification (docs/algorithms.md §1).

Slow and obvious on purpose: a Python loop over requests and positions, float32 arithmetic exactly
as the kernels do it. Same signatures as the public ops in ``specdec_kernels.ops.chain``.
"""

from __future__ import annotations

import torch

from ..ops._common import ChainResult, SeedLike, chain_rng_rows
from ._philox import draw_uniform, race_keys


def sample_race(r: torch.Tensor, u: torch.Tensor) -> int:
    """Index drawn with law r / sum(r) by the exponential race; -1 when r is all zero."""
    keys = race_keys(r, u)
    if not bool((keys > 0).any()):
        return -1
    return int(torch.argmax(keys))  # first maximum: ties go to the smaller index


def verify_chain(
    draft_tokens: torch.Tensor,
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None = None,
    *,
    num_draft: torch.Tensor | None = None,
    seed: SeedLike = None,
    offset: int | torch.Tensor = 0,
    check: bool = True,
    generator: torch.Generator | None = None,
) -> ChainResult:
    """Reference of :func:`specdec_kernels.verify_chain` (same arguments, same result)."""
    from ..ops.chain import _check_verify_chain

    B, K, V, _ = _check_verify_chain(draft_tokens, target_probs, draft_probs, num_draft, check)
    seeds, offsets, streams = chain_rng_rows(seed, offset, B, target_probs.device, generator)
    tokens = torch.full((B, K + 1), -1, dtype=torch.long)
    num_accepted = torch.zeros(B, dtype=torch.long)
    P = target_probs.detach().cpu().float()
    Q = None if draft_probs is None else draft_probs.detach().cpu().float()
    drafts = draft_tokens.cpu()
    vocab = torch.arange(V)
    positions = torch.arange(max(K, 1))
    for b in range(B):
        n = K if num_draft is None else min(max(int(num_draft[b]), 0), K)
        s, o, st = seeds[b].cpu(), offsets[b].cpu(), streams[b].cpu()
        u_accept = draw_uniform(s, o, 0, st, positions)
        a = 0
        while a < n:
            x = int(drafts[b, a])
            if not 0 <= x < V:
                break
            p = P[b, a, x]
            q = Q[b, a, x] if Q is not None else torch.tensor(1.0)
            if not bool(u_accept[a] * q < p):  # float32 product, as every backend computes it
                break
            tokens[b, a] = x
            a += 1
        u_sample = draw_uniform(s, o, 1, st, vocab)
        if a == n:
            y = sample_race(P[b, a], u_sample)
        else:
            if Q is not None:
                r = torch.clamp(P[b, a] - Q[b, a], min=0.0)
            else:
                r = P[b, a].clone()
                x = int(drafts[b, a])
                if 0 <= x < V:  # an out-of-range draft (check=False) was rejected unread
                    r[x] = 0.0
            y = sample_race(r, u_sample)
            if y < 0:  # residual of zero mass: fall back to p
                y = sample_race(P[b, a], u_sample)
        tokens[b, a] = max(y, 0)
        num_accepted[b] = a
    dev = draft_tokens.device
    return ChainResult(tokens.to(dev), num_accepted.to(dev))


def verify_chain_greedy(
    draft_tokens: torch.Tensor,
    target_logits: torch.Tensor,
    *,
    num_draft: torch.Tensor | None = None,
    check: bool = True,
) -> ChainResult:
    """Reference of :func:`specdec_kernels.verify_chain_greedy`."""
    from ..ops.chain import _check_verify_chain_greedy

    _check_verify_chain_greedy(draft_tokens, target_logits, num_draft, check)
    B, K = draft_tokens.shape
    tokens = torch.full((B, K + 1), -1, dtype=torch.long)
    num_accepted = torch.zeros(B, dtype=torch.long)
    L = target_logits.detach().cpu().float()
    for b in range(B):
        n = K if num_draft is None else min(max(int(num_draft[b]), 0), K)
        a = 0
        while True:
            best = int(torch.argmax(L[b, a]))  # first maximum
            tokens[b, a] = best
            if a == n or int(draft_tokens[b, a]) != best:
                break
            a += 1
        num_accepted[b] = a
    dev = draft_tokens.device
    return ChainResult(tokens.to(dev), num_accepted.to(dev))
