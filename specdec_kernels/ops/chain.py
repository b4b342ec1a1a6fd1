"""Chain speculative-sampling verification (docs/algorithms.md §1): the public ops."""

from __future__ import annotations

import torch

from ..contract import chain as contract
from ..contract._common import ChainResult, SeedLike
from ..contract.chain import VERIFY_CHAIN_OFFSET_STRIDE, VERIFY_CHAIN_RULES  # noqa: F401  (re-exported)
from . import _dispatch
from ._dispatch import Op

for _name in ("verify_chain", "verify_chain_block"):
    _dispatch.register(Op(_name, fake=contract.chain_fake, check_values=contract.check_verify_chain_values,
                          reference=f"reference.chain:op_{_name}", triton=f"triton.chain:{_name}",
                          select_as="verify_chain"))
_dispatch.register(Op("verify_chain_greedy", fake=contract.chain_fake,
                      check_values=contract.check_verify_chain_greedy_values,
                      reference="reference.chain:op_verify_chain_greedy",
                      triton="triton.chain:verify_chain_greedy"))


def verify_chain(
    draft_tokens: torch.Tensor,
    target_probs: torch.Tensor,
    draft_probs: torch.Tensor | None = None,
    *,
    num_draft: torch.Tensor | None = None,
    seed: SeedLike = None,
    offset: int | torch.Tensor = 0,
    rule: str = "token",
    check: bool = True,
    generator: torch.Generator | None = None,
) -> ChainResult:
    """Exact chain speculative sampling: accept a prefix of the drafts and emit one more token.

    rule="token" (docs/algorithms.md §1): draft ``x_i`` is accepted with probability
    ``min(1, p_i(x_i) / q_i(x_i))``; at the first rejection a correction is drawn from
    ``norm(max(0, p_i - q_i))``; when every draft is accepted a bonus token is drawn from ``p_K``.
    Only what is needed is read: two scalars per accepted position and a single full row (the
    rejected or bonus one); rows after the first rejection are never touched.

    rule="block" (docs/algorithms.md §9, block verification, Sun et al. 2024): the block of drafts
    is judged jointly, scanning from the last draft down, with a running weight ``w_i``; the
    correction after ``tau`` accepted drafts is drawn from ``norm(max(0, w_tau p_tau - q_tau))``.
    In expectation over the drafts it never accepts fewer tokens than "token" and it is optimal
    for one drafted chain (for one given draft it may accept fewer: the gain is an average). With
    deterministic drafts both rules accept ``x_1..x_i`` with probability ``p(x_1..x_i)``: no gain,
    and no extra reads. It reads the scalars, then a row pair only at the positions its downward
    scan has to weigh (``eta_i < w_i < 1``), then the one sampled row. With K = 1 both rules give
    the same result bit for bit. Greedy verification needs no block rule (block verification of
    one-hot targets is the argmax rule of :func:`verify_chain_greedy`).

    Both rules emit tokens with exactly the target's law.

    Args:
        draft_tokens: the drafted tokens. Shape: (B, K), int64. Positions ``>= num_draft[b]`` are
            ignored (pad them with -1).
        target_probs: target probabilities at the K drafted positions plus the bonus position.
            Shape: (B, K+1, V), float32/float16/bfloat16 (arithmetic in float32). Rows are
            probability distributions: finite, non-negative, summing to 1 (acceptance compares p
            with q directly, so p and q must share their normalisation).
        draft_probs: the draft distributions the tokens were drawn from. Shape: (B, K, V), same
            dtype as ``target_probs``. ``None`` means deterministic drafts (greedy drafter,
            n-gram, prompt lookup): q is one-hot at the drafted token, which is accepted with
            probability ``p_i(x_i)``; on rejection the correction is drawn from ``p_i`` without
            ``x_i``. Still exact.
        num_draft: drafts per request for ragged batches. Shape: (B,), int32/int64, values in
            [0, K]. ``target_probs[b, num_draft[b]]`` is then the bonus row. ``None`` = K for all.
        seed: int, int64 tensor of shape (B,) or (), or None (drawn from ``generator`` or torch's
            default generator). An int gives row b Philox stream b; a tensor gives every request
            the stream of its own seed, independent of its batch position. Values in [0, 2**63).
        offset: int or int64 tensor of shape () or (B,). A call uses the Philox draws ``offset``
            and ``offset + 1`` (``VERIFY_CHAIN_OFFSET_STRIDE``), whatever the rule: advance it by 2
            between calls that share a seed. Tensors make the op CUDA-graph safe (update them in
            place). The arithmetic and the use of each draw are specified in
            ``specdec_kernels/reference/chain.py``; every backend gives the same tokens.
        rule: "token" (default) or "block" (see above).
        check: validate values (token range, num_draft range, NaN/inf/negative probabilities,
            zero-mass rows, rows of ``target_probs`` or ``draft_probs`` that do not sum to 1:
            ``|sum - 1|`` above 1e-3 for float32 rows, 1e-2 for float16/bfloat16 rows, summed in
            float32 or wider). On CUDA this costs a pass over the inputs and one device sync; the
            cpu backend validates every probability it reads as it reads it (the tested drafts'
            scalars, the sampled row and its sum; rows it never reads cannot change the result
            and are not scanned), for a few percent of the call. Pass False on hot paths whose
            inputs you built yourself. Shapes, dtypes and devices are always checked.
        generator: used only to draw ``seed`` when it is None.

    Returns:
        ChainResult(tokens, num_accepted):
            tokens: (B, K+1) int64: accepted drafts, then the correction or bonus, then -1.
            num_accepted: (B,) int64: number of accepted drafts n; the row emits n + 1 tokens.

    Raises:
        ValueError: naming the argument, for a wrong shape, dtype, device or value.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> p = torch.softmax(torch.randn(2, 4, 32), -1)          # B=2, K=3, V=32
        >>> q = torch.softmax(torch.randn(2, 3, 32), -1)
        >>> x = torch.multinomial(q.reshape(-1, 32), 1).reshape(2, 3)
        >>> out = sk.verify_chain(x, p, q, seed=0)
        >>> out.tokens.shape, out.num_accepted.shape
        (torch.Size([2, 4]), torch.Size([2]))
    """
    op = contract.VERIFY_CHAIN_OPS[contract.check_rule(rule)]
    args = contract.verify_chain_args(draft_tokens, target_probs, draft_probs, num_draft, seed, offset,
                                      generator)
    return ChainResult(*_dispatch.call(op, args, check))


def verify_chain_greedy(
    draft_tokens: torch.Tensor,
    target_logits: torch.Tensor,
    *,
    num_draft: torch.Tensor | None = None,
    check: bool = True,
) -> ChainResult:
    """Greedy (temperature 0) chain verification: accept while each draft is the target's argmax.

    The first mismatching position emits the argmax instead; when every draft matches, the argmax
    of the bonus row is emitted. Argmax ties go to the smallest token id on every backend.

    Args:
        draft_tokens: Shape: (B, K), int64; positions ``>= num_draft[b]`` are ignored (pad with -1).
        target_logits: target logits (or probabilities: only the argmax matters).
            Shape: (B, K+1, V), float32/float16/bfloat16.
        num_draft: Shape: (B,), int32/int64 in [0, K], or None (= K).
        check: validate token and num_draft ranges and reject NaN logits (one device sync).

    Returns:
        ChainResult(tokens, num_accepted) as in :func:`verify_chain`.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> logits = torch.tensor([[[0., 5., 1.], [9., 0., 0.], [0., 0., 3.]]])  # B=1, K=2, V=3
        >>> sk.verify_chain_greedy(torch.tensor([[1, 2]]), logits)
        ChainResult(tokens=tensor([[1, 0, -1]]), num_accepted=tensor([1]))
    """
    args = contract.verify_chain_greedy_args(draft_tokens, target_logits, num_draft)
    return ChainResult(*_dispatch.call("verify_chain_greedy", args, check))
