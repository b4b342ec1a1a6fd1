"""The bytes an op call MUST move, per op: the floor that an effective bandwidth (bytes / time) is
measured against. Counts derive from the call's actual result where the traffic depends on it
(how far verification got), so a kernel is never credited for bytes it did not need.

``dtype`` is the dtype of the float inputs (a name of ``DTYPES`` or a torch dtype); token, index
and seed tensors are int64 (8 bytes), probabilities and scores written are float32.
"""

from __future__ import annotations

import torch

import specdec_kernels as sk

from .inputs import DType, as_dtype


def elt(dtype: DType) -> int:
    """Bytes of one element of ``dtype``."""
    return torch.empty((), dtype=as_dtype(dtype)).element_size()


def chain_bytes(num_accepted: torch.Tensor, K: int, V: int, dtype: DType, draft_probs: bool) -> int:
    """Bytes verify_chain must move, from its actual result.

    Per request with n accepted drafts: the drafts read until the first rejection (min(n+1, K)
    int64), seed and offset (2 int64), two scalars p(x), q(x) per accepted draft (one without
    draft_probs), then ONE full row: the rejected row of p, plus the same row of q when the
    residual max(0, p - q) needs it, or the bonus row of p when everything was accepted; finally
    the outputs (K+1 tokens and num_accepted, int64).
    """
    e = elt(dtype)
    total = 0
    for n in num_accepted.tolist():
        total += min(n + 1, K) * 8 + 2 * 8
        total += n * (2 if draft_probs else 1) * e
        rows = 2 if (draft_probs and n < K) else 1
        total += rows * V * e
        total += (K + 1) * 8 + 8
    return total


def greedy_bytes(num_accepted: torch.Tensor, K: int, V: int, dtype: DType) -> int:
    """Bytes verify_chain_greedy must move: an argmax needs the full row, so the n+1 rows up to the
    first mismatch (or the bonus row), the drafts compared (min(n+1, K)), and the outputs."""
    e = elt(dtype)
    return sum((n + 1) * V * e + min(n + 1, K) * 8 + (K + 1) * 8 + 8 for n in num_accepted.tolist())


def tree_bytes(out: sk.TreeResult, parents: torch.Tensor, V: int, dtype: DType, draft_probs: bool) -> int:
    """Bytes tree verification must move, from its actual result (a lower bound for every method).

    Per request: the tree (parents and tokens, int64), seed and offset, the scalars p(x) (and q(x))
    of each child tested on the accepted path, ONE full row for the final token (the row of p
    where it stopped, plus that row of q for a correction from the residual; the bonus at a leaf
    needs p only), and the outputs (2N + 1 int64). The residual-mass passes RSD needs after a
    rejection followed by a sibling are extra work of the method, not counted.
    """
    e = elt(dtype)
    B, N = parents.shape
    par = parents.cpu()
    nacc = out.num_accepted.cpu().tolist()
    nodes = out.accepted_nodes.cpu()
    total = 0
    for b in range(B):
        n = nacc[b]
        last = int(nodes[b, n - 1]) if n > 0 else 0
        path = [0] + nodes[b, :n].tolist()
        tested = sum(int((par[b] == v).sum()) for v in path)
        has_kids = bool((par[b] == last).any())
        total += 2 * N * 8 + 2 * 8 + tested * (2 if draft_probs else 1) * e
        total += (2 if (draft_probs and has_kids) else 1) * V * e
        total += (2 * N + 1) * 8
    return total


def tree_greedy_bytes(out: sk.TreeResult, N: int, V: int, dtype: DType) -> int:
    """Greedy tree verification: the argmax of every row on the accepted path (n + 1 rows), the
    tree (parents and tokens), and the outputs."""
    e = elt(dtype)
    return sum((n + 1) * V * e + 2 * N * 8 + (2 * N + 1) * 8 for n in out.num_accepted.tolist())


def row_k_bytes(rows: int, V: int, k: int, dtype: DType, outputs: int) -> int:
    """Sampling without replacement (gumbel_topk, stochastic_beam_step): every row read once;
    ``outputs`` bytes written, the [*, k] output tensors (tokens int64, log_probs and scores
    float32; parents int64 for SBS). ``k`` is part of the call's shape only: the rows dominate."""
    return rows * V * elt(dtype) + outputs


def sampling_bytes(rows: int, V: int, dtype: DType) -> int:
    """sampling_probs: the logits read once, the float32 probabilities written once."""
    return rows * V * (elt(dtype) + 4)


def entropy_bytes(rows: int, V: int, dtype: DType) -> int:
    """draft_entropy: the logits read once, one float32 per row written."""
    return rows * V * elt(dtype) + rows * 4


def tvdpp_bytes(N: int, V: int, dtype: DType, reads: int = 1) -> int:
    """tvdpp_loss forward + backward over N positions: the logits (``dtype``) and the teacher
    (float32) read ``reads`` times, the gradient written once. ``reads=1`` is the floor (a fused
    forward + backward keeps a row's statistics while the row is in cache); ``reads=2`` counts
    the forward's and the backward's read, as separate kernels must."""
    e = elt(dtype)
    return N * V * (reads * (e + 4) + e)


def attention_bytes(B: int, Hq: int, Hkv: int, queries: int, keys: int, D: int, dtype: DType) -> int:
    """Attention of ``queries`` tokens per head over ``keys`` keys: K and V read once (Hkv heads),
    q read and the output written once (Hq heads), all of ``dtype``. tree_attention over a prefix
    of L and N nodes: queries=N, keys=L+N; plain decode attention: queries=1, keys=L+1."""
    e = elt(dtype)
    return 2 * B * Hkv * keys * D * e + 2 * B * Hq * queries * D * e
