"""Tree speculative decoding (docs/algorithms.md §4-5): masks, positions, exact verification: the
public ops.

The tree format shared by every tree op (``parents``, ``num_nodes``, ``tokens``, draw order, cache
slots) is part of the contract: see the docstring of ``specdec_kernels/contract/tree.py``. The
arithmetic of verify_tree (identical on every backend) is specified in
``specdec_kernels/reference/tree.py``.
"""

from __future__ import annotations

import torch

from ..contract import tree as contract
from ..contract._common import SeedLike, TreeResult
from ..contract.tree import VERIFY_TREE_OFFSET_STRIDE  # noqa: F401  (re-exported)
from . import _dispatch
from ._dispatch import COMPILED, Op

_dispatch.register(Op("verify_tree", fake=contract.tree_fake, check_values=contract.check_verify_tree_values,
                      reference="reference.tree:op_verify_tree", triton="triton.tree:verify_tree",
                      select_as="verify_tree", device_arg=2))
# No C++ CUDA kernel for rule "block": CUDA tensors get the Triton launcher under every backend.
_dispatch.register(Op("verify_tree_block", fake=contract.tree_fake,
                      check_values=contract.check_verify_tree_values,
                      reference="reference.tree:op_verify_tree_block", triton="triton.tree:verify_tree_block",
                      cpu=COMPILED, cuda=None, select_as="verify_tree", device_arg=2))
_dispatch.register(Op("verify_tree_greedy", fake=contract.tree_fake,
                      check_values=contract.check_verify_tree_greedy_values,
                      reference="reference.tree:op_verify_tree_greedy",
                      triton="triton.tree:verify_tree_greedy", device_arg=2))
# No ``check`` in these schemas: the tree's value check runs in the contract's args functions, for
# every backend (the cpu kernels do not check).
_dispatch.register(Op("tree_attention_mask", fake=contract.tree_attention_mask_fake,
                      reference="reference.tree:op_tree_attention_mask",
                      triton="triton.tree:tree_attention_mask", has_check=False, device_arg=0))
_dispatch.register(Op("tree_position_ids", fake=contract.tree_position_ids_fake,
                      reference="reference.tree:op_tree_position_ids",
                      triton="triton.tree:tree_position_ids", has_check=False, device_arg=0))


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
    args = contract.tree_attention_mask_args(parents, num_nodes, packed, check)
    return _dispatch.call("tree_attention_mask", args)


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
    args = contract.tree_position_ids_args(parents, prefix_len, num_nodes, check)
    return _dispatch.call("tree_position_ids", args)


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
    B, N = contract.tree_attention_bias_args(parents, prefix_len, num_nodes, prefix_mask, dtype)
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
        parents: Shape: (B, N), int64, tree format of ``specdec_kernels.contract.tree``.
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
    op = contract.VERIFY_TREE_OPS[contract.check_rule(rule)]
    args = contract.verify_tree_args(tokens, parents, target_probs, draft_probs, num_nodes, replacement, seed,
                                     offset, generator)
    return TreeResult(*_dispatch.call(op, args, check))


def verify_tree_greedy(tokens: torch.Tensor, parents: torch.Tensor, target_logits: torch.Tensor, *,
                       num_nodes: torch.Tensor | None = None, check: bool = True) -> TreeResult:
    """Greedy (temperature 0) tree verification: follow the child whose token is the argmax.

    At each node the argmax of its target row is computed (ties to the smallest token id); the
    first child (lowest index) carrying that token is accepted and descended into; where none
    does, or at a leaf, the argmax is emitted.

    Args:
        tokens: Shape: (B, N), int64; ``tokens[:, 0]`` ignored.
        parents: Shape: (B, N), int64, tree format of ``specdec_kernels.contract.tree``.
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
    args = contract.verify_tree_greedy_args(tokens, parents, target_logits, num_nodes)
    return TreeResult(*_dispatch.call("verify_tree_greedy", args, check))
