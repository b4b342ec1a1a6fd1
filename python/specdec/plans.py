"""Pure, batched tensor functions of a speculative round, for any engine (no model, no cache object).

* :func:`append_children`: grow B draft trees by one level from the drafter's outputs (children
  per node from top-k / Gumbel-Top-k / i.i.d. draws, or a Stochastic Beam Search step's
  expansions), in the tree format of specdec_kernels (node 0 = root, parents before children).
* :func:`kv_keep_plan`: after verification, which tentative KV entries each row keeps (the
  accepted path's nodes that have entries) and where they go, for
  :func:`specdec_kernels.compact_tree_kv` or any other KV layout.

They take and return tensors only; nothing synchronises the device.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Trees(NamedTuple):
    """B padded draft trees: tokens/parents [B, N] (-1 past ``num_nodes[b]``), num_nodes [B] int64."""

    tokens: torch.Tensor
    parents: torch.Tensor
    num_nodes: torch.Tensor


def roots(root_tokens: torch.Tensor) -> Trees:
    """B one-node trees (just the roots, the last committed tokens [B])."""
    t = root_tokens.to(torch.long).reshape(-1, 1)
    return Trees(t.clone(), torch.full_like(t, -1), torch.ones(t.shape[0], dtype=torch.long, device=t.device))


def append_children(trees: Trees, child_tokens: torch.Tensor, child_parents: torch.Tensor) -> Trees:
    """Append new nodes to each tree, in the order given.

    Args:
        trees: the trees so far.
        child_tokens: [B, M] int64, the candidate children of each row; entries < 0 are skipped
            (no child: a row with fewer candidates, a dead beam, a token without probability).
        child_parents: [B, M] int64, the parent node of each candidate (existing nodes).

    Returns:
        The grown trees; row b's new nodes are ``num_nodes[b] ..`` in candidate order, so children
        of one parent keep their draw order (what without-replacement verification reads).
    """
    if child_tokens.shape != child_parents.shape or child_tokens.dim() != 2:
        raise ValueError("child_tokens and child_parents must both be [B, M]")
    B, M = child_tokens.shape
    if trees.tokens.shape[0] != B:
        raise ValueError(f"child_tokens has {B} rows but there are {trees.tokens.shape[0]} trees")
    valid = child_tokens >= 0
    count = valid.sum(1)
    new_num = trees.num_nodes + count
    N = int(new_num.max()) if B else trees.tokens.shape[1]
    N = max(N, trees.tokens.shape[1])
    dev = trees.tokens.device
    tokens = torch.full((B, N + 1), -1, dtype=torch.long, device=dev)  # column N: dump for skipped
    parents = torch.full((B, N + 1), -1, dtype=torch.long, device=dev)
    tokens[:, : trees.tokens.shape[1]] = trees.tokens
    parents[:, : trees.parents.shape[1]] = trees.parents
    dest = trees.num_nodes[:, None] + valid.cumsum(1) - 1
    dest = torch.where(valid, dest, torch.full_like(dest, N))
    tokens.scatter_(1, dest, child_tokens)
    parents.scatter_(1, dest, child_parents)
    return Trees(tokens[:, :N], parents[:, :N], new_num)


def level_children(kids: torch.Tensor, level_start: torch.Tensor, level_size: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates of a level in the layout :func:`append_children` takes.

    ``kids`` [B, L, k]: up to k children for each of the L node slots of the level (row b's level
    is nodes ``level_start[b] .. level_start[b] + level_size[b] - 1``; slots past ``level_size[b]``
    and entries < 0 are skipped). Returns (child_tokens, child_parents), both [B, L * k].
    """
    B, L, k = kids.shape
    slot = torch.arange(L, device=kids.device)
    live = slot[None, :] < level_size[:, None]
    toks = torch.where(live[:, :, None], kids, torch.full_like(kids, -1))
    par = (level_start[:, None] + slot[None, :])[:, :, None].expand(B, L, k)
    return toks.reshape(B, L * k), par.reshape(B, L * k)


class KeepPlan(NamedTuple):
    """Which tentative entries each row keeps after verification.

    nodes [B, N]: the accepted path's nodes that have KV entries (depth order), then -1; the
    entry of node j sits at ``root + j`` and moves to ``root + 1 + i`` for the i-th kept node.
    num_kept [B]: how many. moves [B] bool: the kept nodes are not already 1..num_kept (a tree
    path off the first branch): only those rows need :func:`specdec_kernels.compact_tree_kv`.
    length [B]: the row's KV length afterwards, ``root + 1 + num_kept``.
    """

    nodes: torch.Tensor
    num_kept: torch.Tensor
    moves: torch.Tensor
    length: torch.Tensor


def kv_keep_plan(accepted_nodes: torch.Tensor, num_accepted: torch.Tensor, forwarded: torch.Tensor,
                 root: torch.Tensor) -> KeepPlan:
    """The KV plan after verification.

    Args:
        accepted_nodes: [B, N] int64, the accepted path's node indices in depth order, then -1
            (``TreeResult.accepted_nodes``; for a chain, 1..n).
        num_accepted: [B], accepted nodes per row.
        forwarded: [B], nodes ``1..forwarded[b]`` have KV entries (a drafter forwards all but its
            last level or token; the target forwards every node).
        root: [B], the slot of each row's root.

    Returns:
        :class:`KeepPlan`. Accepted nodes increase along the path, so the ones with entries are a
        prefix of it; the accepted tokens after them are not in the cache and must be forwarded
        with the next round's pending tokens.
    """
    B, N = accepted_nodes.shape
    col = torch.arange(N, device=accepted_nodes.device)
    on_path = col[None, :] < num_accepted[:, None]
    cached = on_path & (accepted_nodes <= forwarded[:, None]) & (accepted_nodes >= 1)
    num_kept = cached.sum(1)
    nodes = torch.where(cached, accepted_nodes, torch.full_like(accepted_nodes, -1))
    moves = (cached & (accepted_nodes != col[None, :] + 1)).any(1)
    return KeepPlan(nodes, num_kept, moves, root + 1 + num_kept)
