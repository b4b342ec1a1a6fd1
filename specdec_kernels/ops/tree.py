"""Tree speculative decoding (docs/algorithms.md §4-5): masks, positions, exact verification, KV compaction.

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
"""

from __future__ import annotations

import torch

from .. import _backend
from ..contract._common import (
    SeedLike,
    TreeResult,
    prob_sum_rule,
    prob_sum_tol,
    raise_first,
    require_device,
    require_float,
    require_tensor,
    rng_rows,
    row_counts,
)
from ..contract.chain import check_rule as _check_rule

#: Philox draws one verify_tree call consumes: ``offset`` and ``offset + 1``.
VERIFY_TREE_OFFSET_STRIDE = 2


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------


def _check_parents(parents, num_nodes):
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


def _check_tree_only(parents, num_nodes, check: bool):
    B, N, nn = _check_parents(parents, num_nodes)
    if check and B > 0:
        flags, msgs, _ = _tree_flags(parents, nn, B, N)
        raise_first(flags, msgs)
    return B, N, nn


def _check_tree_inputs(tokens, parents, target, target_name: str, num_nodes, draft_probs=None):
    B, N, nn = _check_parents(parents, num_nodes)
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


def _check_verify_tree(tokens, parents, target_probs, draft_probs, num_nodes, replacement, check: bool):
    if not isinstance(replacement, bool):
        raise ValueError(f"replacement must be a bool, got {type(replacement).__name__}")
    B, N, V, nn = _check_tree_inputs(tokens, parents, target_probs, "target_probs", num_nodes,
                                     draft_probs)
    if check and B > 0:
        flags, msgs, valid = _tree_flags(parents, nn, B, N)
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
    return B, N, V, nn


def _check_verify_tree_greedy(tokens, parents, target_logits, num_nodes, check: bool):
    B, N, V, nn = _check_tree_inputs(tokens, parents, target_logits, "target_logits", num_nodes)
    if check and B > 0:
        flags, msgs, valid = _tree_flags(parents, nn, B, N)
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
    return B, N, V, nn


def _prefix_rows(prefix_len, B: int, device) -> torch.Tensor:
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


# ----------------------------------------------------------------------------------------------
# Masks and positions
# ----------------------------------------------------------------------------------------------


def tree_attention_mask(parents: torch.Tensor, *, num_nodes: torch.Tensor | None = None,
                        packed: bool = False, check: bool = True) -> torch.Tensor:
    """Which tree nodes each node attends to: itself and its ancestors.

    Args:
        parents: Shape: (B, N), int64, in the tree format of this module.
        num_nodes: Shape: (B,), int32/int64 in [1, N], or None (= N). Padding rows (i >=
            num_nodes[b]) see only themselves, so softmax over them stays finite.
        packed: return bit-packed words instead of booleans.
        check: validate the tree (one device sync); with False an invalid parent link simply ends
            the ancestor walk (never a hang or an out-of-bounds read).

    Returns:
        packed=False: bool (B, N, N), ``mask[b, i, j]`` = node j is node i or one of its ancestors.
        packed=True: int32 (B, N, ceil(N/32)), bit ``j % 32`` of word ``j // 32`` (little-endian
        bit order; bit 31 makes the word negative) = ``mask[b, i, j]``.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> sk.tree_attention_mask(torch.tensor([[-1, 0, 0, 1]])).int()[0]
        tensor([[1, 0, 0, 0],
                [1, 1, 0, 0],
                [1, 0, 1, 0],
                [1, 1, 0, 1]], dtype=torch.int32)
    """
    B, N, nn = _check_tree_only(parents, num_nodes, check)
    if not isinstance(packed, bool):
        raise ValueError(f"packed must be a bool, got {type(packed).__name__}")
    backend = _backend.select("tree_attention_mask", parents.device)
    if backend == "reference":
        from ..reference.tree import tree_attention_mask as ref

        return ref(parents, num_nodes=nn, packed=packed, check=False)
    if backend == "triton":
        from ..triton.tree import tree_attention_mask as tri

        return tri(parents, nn, packed)
    return torch.ops.specdec.tree_attention_mask(parents, nn, packed)


def tree_position_ids(parents: torch.Tensor, prefix_len: int | torch.Tensor, *,
                      num_nodes: torch.Tensor | None = None, check: bool = True) -> torch.Tensor:
    """Position ids of the tree nodes: ``prefix_len[b] + depth(i)`` (the root has depth 0).

    Args:
        parents: Shape: (B, N), int64, tree format of this module.
        prefix_len: int, or int tensor of shape () or (B,): the committed tokens before the root
            (the root's own position id is prefix_len). With left padding pass the real lengths.
        num_nodes: Shape: (B,) or None. Padding nodes get depth 0 (``prefix_len[b]``).
        check: validate the tree (one device sync).

    Returns:
        int64 (B, N).

    Example:
        >>> import torch, specdec_kernels as sk
        >>> sk.tree_position_ids(torch.tensor([[-1, 0, 0, 1]]), 10)
        tensor([[10, 11, 11, 12]])
    """
    B, N, nn = _check_tree_only(parents, num_nodes, check)
    prefix = _prefix_rows(prefix_len, B, parents.device)
    if check and isinstance(prefix_len, torch.Tensor) and B > 0 and bool((prefix < 0).any()):
        raise ValueError("prefix_len must be >= 0 (found a negative value in the tensor)")
    backend = _backend.select("tree_position_ids", parents.device)
    if backend == "reference":
        from ..reference.tree import tree_position_ids as ref

        return ref(parents, prefix, num_nodes=nn, check=False)
    if backend == "triton":
        from ..triton.tree import tree_position_ids as tri

        return tri(parents, prefix, nn)
    return torch.ops.specdec.tree_position_ids(parents, prefix, nn)


def tree_attention_bias(parents: torch.Tensor, prefix_len: int, *,
                        num_nodes: torch.Tensor | None = None,
                        prefix_mask: torch.Tensor | None = None,
                        dtype: torch.dtype = torch.float32, check: bool = True) -> torch.Tensor:
    """The full additive attention mask for verifying a tree in ONE forward of any Hugging Face model.

    Pass it as ``attention_mask`` (4-D masks are used as given by transformers' eager and SDPA
    attention) together with ``position_ids = tree_position_ids(...)`` and the tree's tokens as
    ``input_ids``, with the prefix already in the KV cache.

    Args:
        parents: Shape: (B, N), int64, tree format of this module.
        prefix_len: int P, the cache length before the tree (every row has P cached slots).
        num_nodes: Shape: (B,) or None.
        prefix_mask: Shape: (B, P), bool or integer (1 = attend), the 2-D padding mask of the
            prefix (left padding); None = every prefix slot is visible.
        dtype: the model's dtype; masked entries get ``torch.finfo(dtype).min``.
        check: validate the tree (one device sync).

    Returns:
        (B, 1, N, P + N) of ``dtype``: 0 where visible, the dtype's minimum elsewhere. Column
        ``P + j`` is tree node j; node i sees the (unmasked) prefix, its ancestors and itself.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> m = sk.tree_attention_bias(torch.tensor([[-1, 0, 0]]), 2)
        >>> (m[0, 0] == 0).int()
        tensor([[1, 1, 1, 0, 0],
                [1, 1, 1, 1, 0],
                [1, 1, 1, 0, 1]], dtype=torch.int32)
    """
    if isinstance(prefix_len, bool) or not isinstance(prefix_len, int) or prefix_len < 0:
        raise ValueError(f"prefix_len must be an int >= 0, got {prefix_len!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    _check_parents(parents, num_nodes)
    B, N = parents.shape
    if prefix_mask is not None:
        require_tensor(prefix_mask, "prefix_mask")
        if list(prefix_mask.shape) != [B, prefix_len]:
            raise ValueError(
                f"prefix_mask must be [B, P] = [{B}, {prefix_len}], got {list(prefix_mask.shape)}")
        if prefix_mask.dtype.is_floating_point or prefix_mask.is_complex():
            raise ValueError(f"prefix_mask must be bool or integer (1 = attend), got {prefix_mask.dtype}")
        require_device(prefix_mask, parents, "prefix_mask", "parents")
    tree = tree_attention_mask(parents, num_nodes=num_nodes, check=check)
    if prefix_mask is None:
        visible_prefix = torch.ones(B, N, prefix_len, dtype=torch.bool, device=parents.device)
    else:
        visible_prefix = (prefix_mask != 0)[:, None, :].expand(B, N, prefix_len)
    visible = torch.cat([visible_prefix, tree], dim=-1)
    bias = torch.zeros(B, 1, N, prefix_len + N, dtype=dtype, device=parents.device)
    return bias.masked_fill_(~visible[:, None], torch.finfo(dtype).min)


# ----------------------------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------------------------


def verify_tree(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None = None,
    *,
    num_nodes: torch.Tensor | None = None,
    replacement: bool = False,
    seed: SeedLike = None,
    offset: int | torch.Tensor = 0,
    rule: str = "token",
    check: bool = True,
    generator: torch.Generator | None = None,
) -> TreeResult:
    """Exact tree verification: recursive rejection sampling (RSD, rule "token") or Traversal
    Verification (rule "block"); the emitted tokens follow p either way.

    From the root, the children of the current node are tested in draw order against the residual
    of the earlier rejections; the first accepted child is descended into. When every child is
    rejected a correction is drawn from the final residual; at a leaf a bonus token is drawn from
    p. With ``replacement=False`` (siblings drawn without replacement, e.g. Gumbel-Top-k or
    Stochastic Beam Search) child k is tested against q conditioned on excluding the earlier
    siblings, which is what makes such trees exact AND accept more; ``replacement=True`` is the
    i.i.d. (SpecInfer-style multi-draft) rule. The residual is never materialised: each pass over
    V recomputes it from p and q, so no [B, N, V] temporary and no scratch row exist.

    rule="block" (docs/algorithms.md §9, "Trees"): Traversal Verification (Weng et al. 2025), the
    tree form of block verification. The tree is walked leaves first (post-order, children in draw
    order); each node carries a weight, the probability that its remaining subtree is accepted, and
    a leaf is accepted with probability its weight; a deleted subtree moves its parent's residual
    and weight on. On a chain it is ``verify_chain(rule="block")``'s rule. In expectation it accepts
    at least as many tokens as rule "token" on i.i.d. and without-replacement trees (+0.5% to +3.5%
    tokens per round on the enumerated tiny trees; nothing for one-hot drafts, where both rules
    accept a path with probability p(path)); on Stochastic Beam Search trees it is exact but not
    always ahead (by at most 0.2% there). It reads about twice the rows: one row pair per deleted
    subtree whose parent's weight must move on. Arithmetic: specdec_kernels/reference/tree.py.

    Args:
        tokens: the drafted token at each node. Shape: (B, N), int64; ``tokens[:, 0]`` ignored.
        parents: Shape: (B, N), int64, tree format of ``specdec_kernels.ops.tree``.
        target_probs: ``target_probs[b, n]`` = the target's next-token law after the path ending
            at node n (one forward over the tree gives all of them). Shape: (B, N, V),
            float32/float16/bfloat16 (arithmetic in float32/float64). Rows sum to 1.
        draft_probs: ``draft_probs[b, n]`` = the law node n's children were drawn from (rows of
            leaves are never read). Shape: (B, N, V), dtype of target_probs. None: deterministic
            drafts (one-hot q: top-k of a drafter, n-gram trees); each child x is then accepted
            with probability r(x) / sum(r) of the current residual, which is also exact.
        num_nodes: Shape: (B,), int32/int64 in [1, N], or None (= N). Padding nodes are never read.
        replacement: False (default): siblings were drawn without replacement and must be distinct
            (checked). True: i.i.d. siblings, duplicates allowed. Ignored for one-hot drafts,
            whose rule is the same either way (a duplicate is simply rejected).
        seed, offset, generator: randomness as in :func:`specdec_kernels.verify_chain`; a call uses
            the Philox draws ``offset`` and ``offset + 1`` (``VERIFY_TREE_OFFSET_STRIDE``), whatever
            the rule.
        rule: "token" (default, recursive rejection sampling) or "block" (Traversal Verification).
        check: validate the tree (root -1, parents precede children, ragged counts), tokens in
            range, distinct siblings when ``replacement=False``, probability rows (finite, in
            [0, 1], target rows with mass, rows summing to 1: ``|sum - 1|`` at most 1e-3 for
            float32 rows, 1e-2 for float16/bfloat16 rows, summed in float32 or wider). One
            device sync on CUDA; the cpu backend checks the tree in C++ and every probability its
            walk reads as it reads it (the sum of a row it reads in full; rows of nodes off the
            walk cannot change the result and are not scanned). Errors name the node.

    Returns:
        TreeResult(tokens, num_accepted, accepted_nodes): see :class:`specdec_kernels.TreeResult`.
        tokens (B, N) int64: accepted drafted tokens in depth order, then the correction or bonus,
        then -1; num_accepted (B,) int64; accepted_nodes (B, N) int64: their node indices, then -1.

    Raises:
        ValueError: naming the argument (and the node) for a wrong shape, dtype, device or value.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> parents = torch.tensor([[-1, 0, 0, 1, 1]])              # root, 2 children, 2 grandchildren
        >>> tokens = torch.tensor([[0, 3, 5, 1, 2]])
        >>> p = torch.softmax(torch.randn(1, 5, 8), -1)
        >>> q = torch.softmax(torch.randn(1, 5, 8), -1)
        >>> out = sk.verify_tree(tokens, parents, p, q, seed=0)
        >>> out.tokens.shape, int(out.num_accepted[0]) <= 2
        (torch.Size([1, 5]), True)
    """
    _check_rule(rule)
    backend = _backend.select("verify_tree", require_tensor(target_probs, "target_probs").device)
    # The cpu kernel checks the tree in C++ and the probabilities as its walk reads them.
    B, N, V, nn = _check_verify_tree(tokens, parents, target_probs, draft_probs, num_nodes,
                                     replacement, check and backend != "cpu")
    seeds, offsets, row_streams = rng_rows(seed, offset, B, target_probs.device, generator)
    if backend == "reference":
        from ..reference.tree import verify_tree as ref

        return ref(tokens, parents, target_probs, draft_probs, num_nodes=nn, replacement=replacement,
                   seed=seeds if not row_streams else int(seeds[0]) if B else 0, offset=offsets,
                   rule=rule, check=False)
    # rule "block" has no CUDA kernel: the cuda backend runs the Triton one on CUDA tensors.
    if backend == "triton" or (backend == "cuda" and rule == "block"):
        from ..triton import tree as tri

        fn = tri.verify_tree if rule == "token" else tri.verify_tree_block
        return TreeResult(*fn(tokens, parents, target_probs, draft_probs, nn, replacement, seeds,
                              offsets, row_streams))
    op = torch.ops.specdec.verify_tree if rule == "token" else torch.ops.specdec.verify_tree_block
    return TreeResult(*op(tokens, parents, target_probs, draft_probs, nn, replacement, seeds, offsets,
                          row_streams, check and backend == "cpu"))


def verify_tree_greedy(tokens: torch.Tensor, parents: torch.Tensor, target_logits: torch.Tensor, *,
                       num_nodes: torch.Tensor | None = None, check: bool = True) -> TreeResult:
    """Greedy (temperature 0) tree verification: follow the child whose token is the argmax.

    At each node the argmax of its target row is computed (ties to the smallest token id); the
    first child (lowest index) carrying that token is accepted and descended into; where none
    does, or at a leaf, the argmax is emitted.

    Args:
        tokens: Shape: (B, N), int64; ``tokens[:, 0]`` ignored.
        parents: Shape: (B, N), int64, tree format of ``specdec_kernels.ops.tree``.
        target_logits: logits (or probabilities: only the argmax matters). Shape: (B, N, V),
            float32/float16/bfloat16.
        num_nodes: Shape: (B,) or None.
        check: validate the tree, token ranges, and reject NaN logits (one device sync; the cpu
            backend checks the rows its walk reads, as it reads them).

    Returns:
        TreeResult(tokens, num_accepted, accepted_nodes) as in :func:`verify_tree`.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> logits = torch.eye(4)[[1, 3, 0, 2]][None]    # argmax per node: 1, 3, 0, 2
        >>> out = sk.verify_tree_greedy(torch.tensor([[0, 2, 1, 3]]), torch.tensor([[-1, 0, 0, 2]]), logits)
        >>> out.tokens, out.num_accepted, out.accepted_nodes
        (tensor([[ 1,  0, -1, -1]]), tensor([1]), tensor([[ 2, -1, -1, -1]]))
    """
    backend = _backend.select("verify_tree_greedy", require_tensor(target_logits, "target_logits").device)
    B, N, V, nn = _check_verify_tree_greedy(tokens, parents, target_logits, num_nodes,
                                            check and backend != "cpu")
    if backend == "reference":
        from ..reference.tree import verify_tree_greedy as ref

        return ref(tokens, parents, target_logits, num_nodes=nn, check=False)
    if backend == "triton":
        from ..triton.tree import verify_tree_greedy as tri

        return TreeResult(*tri(tokens, parents, target_logits, nn))
    return TreeResult(*torch.ops.specdec.verify_tree_greedy(tokens, parents, target_logits, nn,
                                                            check and backend == "cpu"))
