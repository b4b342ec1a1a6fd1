"""Contract of the tree ops (docs/algorithms.md §4-5 and §9): masks, positions, exact verification.

Tree format, shared by every tree op:

* ``parents``: int64 [B, N]. ``parents[b, 0] = -1``: node 0 is the root, the last committed token,
  whose target distribution proposes the first drafted level. ``0 <= parents[b, i] < i`` for
  ``1 <= i < num_nodes[b]`` (nodes are in topological order).
* ``num_nodes``: optional int [B] in [1, N] for ragged batches; nodes at or beyond it are padding
  and are never read, attended to or accepted. ``None`` = N for every row.
* Siblings appear in draw order: the lower index was drawn first.
* ``tokens``: int64 [B, N], the token at each node; ``tokens[b, 0]`` (the root) is ignored.
* In the target's forward pass node i sits at cache slot ``prefix + i``.

The arithmetic of verify_tree (identical on every backend) is specified in
``specdec_kernels/reference/tree.py``.

Canonical arguments (the C++ schemas in csrc/registration.cpp, without the trailing ``check``):

    verify_tree / verify_tree_block(tokens [B, N] int64, parents [B, N] int64,
        target_probs [B, N, V], draft_probs [B, N, V] | None, num_nodes [B] int64 | None,
        replacement bool, seed [B] int64, offset [B] int64, row_streams bool)
        -> (tokens [B, N] int64, num_accepted [B] int64, accepted_nodes [B, N] int64)
    verify_tree_greedy(tokens, parents, target_logits [B, N, V], num_nodes | None)
        -> (tokens, num_accepted, accepted_nodes)
    tree_attention_mask(parents, num_nodes | None, packed bool)
        -> bool [B, N, N], or packed int32 [B, N, ceil(N/32)]
    tree_position_ids(parents, prefix_len [B] int64, num_nodes | None) -> int64 [B, N]

Draw plan: a verify_tree call uses Philox draws ``offset`` (slot 0: node i's acceptance uniform at
element i - 1) and ``offset + 1`` (slot 1: the race over the vocabulary) of the row's stream,
whatever the rule; the stream of row b is b when ``row_streams`` else 0, as for verify_chain.

tree_attention_mask and tree_position_ids have no ``check`` in their schemas: their check=True
pass over the tree runs in :func:`tree_attention_mask_args` / :func:`tree_position_ids_args`, for
every backend.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._common import (
    SeedLike,
    prob_sum_rule,
    prob_sum_tol,
    raise_first,
    require_device,
    require_float,
    require_tensor,
    rng_rows,
    row_counts,
)
from .chain import check_rule  # noqa: F401  (the rules of verify_tree are verify_chain's)

#: Philox draws one verify_tree call consumes: ``offset`` and ``offset + 1``.
VERIFY_TREE_OFFSET_STRIDE = 2

#: The registered op of each rule of :func:`specdec_kernels.verify_tree`.
VERIFY_TREE_OPS = {"token": "verify_tree", "block": "verify_tree_block"}


class VerifyTreeArgs(NamedTuple):
    """Canonical arguments of verify_tree and verify_tree_block."""

    tokens: torch.Tensor
    parents: torch.Tensor
    target_probs: torch.Tensor
    draft_probs: torch.Tensor | None
    num_nodes: torch.Tensor | None
    replacement: bool
    seed: torch.Tensor
    offset: torch.Tensor
    row_streams: bool


class VerifyTreeGreedyArgs(NamedTuple):
    """Canonical arguments of verify_tree_greedy."""

    tokens: torch.Tensor
    parents: torch.Tensor
    target_logits: torch.Tensor
    num_nodes: torch.Tensor | None


class TreeAttentionMaskArgs(NamedTuple):
    """Canonical arguments of tree_attention_mask."""

    parents: torch.Tensor
    num_nodes: torch.Tensor | None
    packed: bool


class TreePositionIdsArgs(NamedTuple):
    """Canonical arguments of tree_position_ids."""

    parents: torch.Tensor
    prefix_len: torch.Tensor
    num_nodes: torch.Tensor | None


# ----------------------------------------------------------------------------------------------
# Shape checks and normalisation
# ----------------------------------------------------------------------------------------------


def check_parents(parents, num_nodes):
    """Check the shape/dtype of ``parents`` and ``num_nodes``: (B, N, num_nodes as int64 or None)."""
    require_tensor(parents, "parents")
    if parents.dim() != 2:
        raise ValueError(f"parents must be [B, N], got shape {list(parents.shape)}")
    if parents.dtype != torch.int64:
        raise ValueError(f"parents must be int64 (torch.long), got {parents.dtype}")
    B, N = parents.shape
    if N < 1:
        raise ValueError("parents must have N >= 1 (node 0 is the root)")
    if N >= 2**31:
        raise ValueError(f"parents must have N < 2^31, got {N}")
    nn = row_counts(num_nodes, B, N, parents, "num_nodes")
    return B, N, nn


def check_tree_only(parents, num_nodes, check: bool):
    """:func:`check_parents`, then (``check``) the tree's values: one device sync."""
    B, N, nn = check_parents(parents, num_nodes)
    if check and B > 0:
        flags, msgs, _ = _tree_flags(parents, nn, B, N)
        raise_first(flags, msgs)
    return B, N, nn


def prefix_rows(prefix_len, B: int, device) -> torch.Tensor:
    """prefix_len (int or int tensor [] / [B], >= 0) as int64 [B] on ``device``."""
    if isinstance(prefix_len, torch.Tensor):
        if prefix_len.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"prefix_len tensor must be int32 or int64, got {prefix_len.dtype}")
        if prefix_len.device != device:
            raise ValueError(f"prefix_len tensor must be on {device}, got {prefix_len.device}")
        if prefix_len.dim() == 0:
            prefix_len = prefix_len.reshape(1).expand(B)
        elif prefix_len.dim() != 1 or prefix_len.shape[0] != B:
            raise ValueError(f"prefix_len tensor must have shape [] or [B] = [{B}], "
                             f"got {list(prefix_len.shape)}")
        return prefix_len.to(torch.int64).contiguous()
    if isinstance(prefix_len, bool) or not isinstance(prefix_len, int):
        raise ValueError(f"prefix_len must be an int or an int tensor, got {type(prefix_len).__name__}")
    if prefix_len < 0:
        raise ValueError(f"prefix_len must be >= 0, got {prefix_len}")
    return torch.full((B,), prefix_len, dtype=torch.int64, device=device)


def _check_tree_inputs(tokens, parents, target, target_name: str, num_nodes, draft_probs=None):
    B, N, nn = check_parents(parents, num_nodes)
    require_tensor(tokens, "tokens")
    if list(tokens.shape) != [B, N]:
        raise ValueError(f"tokens must be [B, N] = [{B}, {N}] like parents, got {list(tokens.shape)}")
    if tokens.dtype != torch.int64:
        raise ValueError(f"tokens must be int64 (torch.long), got {tokens.dtype}")
    require_device(tokens, parents, "tokens", "parents")
    require_tensor(target, target_name)
    if target.dim() != 3 or target.shape[0] != B or target.shape[1] != N:
        raise ValueError(f"{target_name} must be [B, N, V] = [{B}, {N}, V] to match parents [B, N], "
                         f"got {list(target.shape)}")
    require_float(target, target_name)
    V = target.shape[2]
    if V < 1:
        raise ValueError(f"{target_name} must have V >= 1, got V = {V}")
    if V >= 2**31:
        raise ValueError(f"{target_name} must have V < 2^31, got {V}")
    require_device(target, parents, target_name, "parents")
    if draft_probs is not None:
        require_tensor(draft_probs, "draft_probs")
        if list(draft_probs.shape) != [B, N, V]:
            raise ValueError(f"draft_probs must be [B, N, V] = [{B}, {N}, {V}] like {target_name}, "
                             f"got {list(draft_probs.shape)}")
        require_float(draft_probs, "draft_probs")
        if draft_probs.dtype != target.dtype:
            raise ValueError(f"draft_probs must have the dtype of {target_name} ({target.dtype}), "
                             f"got {draft_probs.dtype}")
        require_device(draft_probs, parents, "draft_probs", "parents")
    return B, N, V, nn


def verify_tree_args(tokens, parents, target_probs, draft_probs=None, num_nodes=None, replacement=False,
                     seed: SeedLike = None, offset=0,
                     generator: torch.Generator | None = None) -> VerifyTreeArgs:
    """Check shapes, dtypes and devices (always) and normalise to the canonical arguments."""
    require_tensor(target_probs, "target_probs")  # first, as the backend is chosen by its device
    if not isinstance(replacement, bool):
        raise ValueError(f"replacement must be a bool, got {type(replacement).__name__}")
    B, _, _, nn = _check_tree_inputs(tokens, parents, target_probs, "target_probs", num_nodes, draft_probs)
    seeds, offsets, row_streams = rng_rows(seed, offset, B, target_probs.device, generator)
    return VerifyTreeArgs(tokens, parents, target_probs, draft_probs, nn, replacement, seeds, offsets,
                          row_streams)


def verify_tree_greedy_args(tokens, parents, target_logits, num_nodes=None) -> VerifyTreeGreedyArgs:
    require_tensor(target_logits, "target_logits")
    _, _, _, nn = _check_tree_inputs(tokens, parents, target_logits, "target_logits", num_nodes)
    return VerifyTreeGreedyArgs(tokens, parents, target_logits, nn)


def tree_attention_mask_args(parents, num_nodes=None, packed=False,
                             check: bool = True) -> TreeAttentionMaskArgs:
    """Shapes (always), then the tree's values when ``check`` (every backend: the schema has no
    ``check``), then ``packed``."""
    _, _, nn = check_tree_only(parents, num_nodes, check)
    if not isinstance(packed, bool):
        raise ValueError(f"packed must be a bool, got {type(packed).__name__}")
    return TreeAttentionMaskArgs(parents, nn, packed)


def tree_position_ids_args(parents, prefix_len, num_nodes=None, check: bool = True) -> TreePositionIdsArgs:
    """Shapes (always), the tree's values and a tensor ``prefix_len``'s sign when ``check`` (every
    backend: the schema has no ``check``)."""
    B, _, nn = check_tree_only(parents, num_nodes, check)
    prefix = prefix_rows(prefix_len, B, parents.device)
    if check and isinstance(prefix_len, torch.Tensor) and B > 0 and bool((prefix < 0).any()):
        raise ValueError("prefix_len must be >= 0 (found a negative value in the tensor)")
    return TreePositionIdsArgs(parents, prefix, nn)


def tree_attention_bias_args(parents, prefix_len, num_nodes, prefix_mask, dtype) -> tuple[int, int]:
    """The argument checks of :func:`specdec_kernels.tree_attention_bias` (built in Python from
    tree_attention_mask, which checks the tree itself): (B, N)."""
    if isinstance(prefix_len, bool) or not isinstance(prefix_len, int) or prefix_len < 0:
        raise ValueError(f"prefix_len must be an int >= 0, got {prefix_len!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    check_parents(parents, num_nodes)
    B, N = parents.shape
    if prefix_mask is not None:
        require_tensor(prefix_mask, "prefix_mask")
        if list(prefix_mask.shape) != [B, prefix_len]:
            raise ValueError(
                f"prefix_mask must be [B, P] = [{B}, {prefix_len}], got {list(prefix_mask.shape)}")
        if prefix_mask.dtype.is_floating_point or prefix_mask.is_complex():
            raise ValueError(f"prefix_mask must be bool or integer (1 = attend), got {prefix_mask.dtype}")
        require_device(prefix_mask, parents, "prefix_mask", "parents")
    return B, N


# ----------------------------------------------------------------------------------------------
# Value checks (check=True)
# ----------------------------------------------------------------------------------------------


def _valid_nodes(nn, B: int, N: int, device) -> torch.Tensor:
    idx = torch.arange(N, device=device)
    if nn is None:
        return idx[None, :].expand(B, N) < N
    return idx[None, :] < nn.clamp(1, N)[:, None]


def _first(mask: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(v) for v in mask.nonzero()[0].tolist())


def _tree_flags(parents, nn, B: int, N: int):
    """(flags, message builders) of the tree-validity checks; messages name the first bad node."""
    dev = parents.device
    valid = _valid_nodes(nn, B, N, dev)
    idx = torch.arange(N, device=dev)
    bad_root = parents[:, 0] != -1
    bad_parent = valid & (idx[None, :] >= 1) & ((parents < 0) | (parents >= idx[None, :]))
    flags = [bad_root.any(), bad_parent.any()]

    def root_msg():
        (b,) = _first(bad_root)
        return (f"parents[{b}, 0] = {int(parents[b, 0])}: the root (node 0) must have parent -1")

    def parent_msg():
        b, i = _first(bad_parent)
        return (f"parents[{b}, {i}] = {int(parents[b, i])} is not a valid parent of node {i}: need "
                f"0 <= parent < {i} (nodes are in topological order; padding goes after num_nodes)")

    if nn is not None:
        bad_n = (nn < 1) | (nn > N)
        flags.insert(0, bad_n.any())

        def n_msg():
            (b,) = _first(bad_n)
            return f"num_nodes[{b}] = {int(nn[b])} must be in [1, N] = [1, {N}] (node 0 is the root)"

        return flags, [n_msg, root_msg, parent_msg], valid
    return flags, [root_msg, parent_msg], valid


def _token_flags(tokens, parents, valid, V: int, distinct: bool):
    N = tokens.shape[1]
    drafted = valid.clone()
    drafted[:, 0] = False
    bad_tok = drafted & ((tokens < 0) | (tokens >= V))
    flags = [bad_tok.any()]

    def tok_msg():
        b, i = _first(bad_tok)
        return (f"tokens[{b}, {i}] = {int(tokens[b, i])} at node {i} must be in [0, V) = [0, {V}) "
                f"(only tokens[:, 0], the root, and padding nodes are ignored)")

    msgs = [tok_msg]
    if distinct and N > 1:
        # Node j duplicates an EARLIER sibling i < j: same parent, same token, both drafted.
        same = ((parents[:, :, None] == parents[:, None, :]) & (tokens[:, :, None] == tokens[:, None, :])
                & drafted[:, :, None] & drafted[:, None, :])
        earlier = torch.ones(N, N, dtype=torch.bool, device=tokens.device).tril(-1)  # [j, i]: i < j
        dup = (same & earlier).any(-1)
        flags.append(dup.any())

        def dup_msg():
            b, j = _first(dup)
            i = _first(same[b, j] & earlier[j])[0]
            return (f"tokens[{b}, {j}] = tokens[{b}, {i}] = {int(tokens[b, j])}: nodes {i} and {j} are "
                    f"siblings (parent {int(parents[b, j])}) with the same token; siblings drawn "
                    f"without replacement are distinct (pass replacement=True for i.i.d. siblings)")

        msgs.append(dup_msg)
    return flags, msgs


def _prob_flags(t, valid, name: str, need_mass: bool):
    x = t.float()
    bad = (~torch.isfinite(x) | (x < 0) | (x > 1)).any(-1) & valid
    flags = [bad.any()]

    def bad_msg():
        b, n = _first(bad)
        return (f"{name}[{b}, {n}] (node {n}) must be a probability row: finite values in [0, 1] "
                f"(found NaN, inf, a negative value or a value above 1)")

    msgs = [bad_msg]
    total = x.sum(-1)  # float32, whatever the dtype of the rows
    if need_mass:
        zero = (total <= 0) & valid
        flags.append(zero.any())

        def zero_msg():
            b, n = _first(zero)
            return f"{name}[{b}, {n}] (node {n}) has zero total mass"

        msgs.append(zero_msg)
    off = ((total - 1).abs() > prob_sum_tol(t.dtype)) & valid
    flags.append(off.any())

    def sum_msg():
        b, n = _first(off)
        return (f"{name}[{b}, {n}] (node {n}) must sum to 1 ({prob_sum_rule(t.dtype)}); it sums to "
                f"{float(total[b, n]):.6g}")

    msgs.append(sum_msg)
    return flags, msgs


def check_verify_tree_values(tokens, parents, target_probs, draft_probs, num_nodes, replacement,
                             *_rng) -> None:
    """The check=True pass over the values (one device sync); the cpu kernels do it themselves."""
    B, N = parents.shape
    if B == 0:
        return
    V = target_probs.shape[2]
    flags, msgs, valid = _tree_flags(parents, num_nodes, B, N)
    f, m = _token_flags(tokens, parents, valid, V, distinct=not replacement)
    flags += f
    msgs += m
    f, m = _prob_flags(target_probs, valid, "target_probs", need_mass=True)
    flags += f
    msgs += m
    if draft_probs is not None:
        # Only rows of nodes with children are read (a leaf's draft row proposes nothing).
        drafted = valid.clone()
        drafted[:, 0] = False
        node_ids = torch.arange(N, device=parents.device)
        internal = ((parents[:, :, None] == node_ids) & drafted[:, :, None]).any(1)
        f, m = _prob_flags(draft_probs, internal & valid, "draft_probs", need_mass=False)
        flags += f
        msgs += m
    raise_first(flags, msgs)


def check_verify_tree_greedy_values(tokens, parents, target_logits, num_nodes) -> None:
    B, N = parents.shape
    if B == 0:
        return
    V = target_logits.shape[2]
    flags, msgs, valid = _tree_flags(parents, num_nodes, B, N)
    f, m = _token_flags(tokens, parents, valid, V, distinct=False)
    flags += f
    msgs += m
    nan = torch.isnan(target_logits).any(-1) & valid
    flags.append(nan.any())

    def nan_msg():
        b, n = _first(nan)
        return f"target_logits[{b}, {n}] (node {n}) must not contain NaN"

    msgs.append(nan_msg)
    raise_first(flags, msgs)


# ----------------------------------------------------------------------------------------------
# Fakes (output shapes for torch.compile and CUDA graphs)
# ----------------------------------------------------------------------------------------------


def tree_fake(tokens, *_args, **_kwargs):
    """Output shapes of verify_tree, verify_tree_block and verify_tree_greedy."""
    B, N = tokens.shape
    return tokens.new_empty((B, N)), tokens.new_empty((B,)), tokens.new_empty((B, N))


def tree_attention_mask_fake(parents, num_nodes, packed):
    B, N = parents.shape
    if packed:
        return parents.new_empty((B, N, (N + 31) // 32), dtype=torch.int32)
    return parents.new_empty((B, N, N), dtype=torch.bool)


def tree_position_ids_fake(parents, prefix_len, num_nodes):
    return parents.new_empty(parents.shape)
