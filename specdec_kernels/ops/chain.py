"""Chain speculative-sampling verification (docs/algorithms.md §1): the public ops."""

from __future__ import annotations

import torch

from .. import _backend
from ._common import (
    ChainResult,
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

#: Philox draws one verify_chain call consumes: it uses offsets ``offset`` and ``offset + 1``.
VERIFY_CHAIN_OFFSET_STRIDE = 2

#: The verification rules of :func:`verify_chain` (docs/algorithms.md §1 and §9).
VERIFY_CHAIN_RULES = ("token", "block")


def _check_rule(rule) -> str:
    if not isinstance(rule, str) or rule not in VERIFY_CHAIN_RULES:
        raise ValueError(f"rule must be one of {', '.join(map(repr, VERIFY_CHAIN_RULES))}, got {rule!r}")
    return rule


def _check_chain_shapes(draft_tokens, target, target_name: str, draft_probs=None):
    require_tensor(draft_tokens, "draft_tokens")
    require_tensor(target, target_name)
    if draft_tokens.dim() != 2:
        raise ValueError(f"draft_tokens must be [B, K], got shape {list(draft_tokens.shape)}")
    if draft_tokens.dtype != torch.int64:
        raise ValueError(f"draft_tokens must be int64 (torch.long), got {draft_tokens.dtype}")
    B, K = draft_tokens.shape
    if target.dim() != 3 or target.shape[0] != B or target.shape[1] != K + 1:
        raise ValueError(
            f"{target_name} must be [B, K+1, V] = [{B}, {K + 1}, V] to match draft_tokens [B, K] = "
            f"[{B}, {K}], got {list(target.shape)}"
        )
    require_float(target, target_name)
    if target.shape[2] < 1:
        raise ValueError(f"{target_name} must have V >= 1, got V = {target.shape[2]}")
    require_device(draft_tokens, target, "draft_tokens", target_name)
    V = target.shape[2]
    if draft_probs is not None:
        require_tensor(draft_probs, "draft_probs")
        if list(draft_probs.shape) != [B, K, V]:
            raise ValueError(
                f"draft_probs must be [B, K, V] = [{B}, {K}, {V}], got {list(draft_probs.shape)}")
        require_float(draft_probs, "draft_probs")
        if draft_probs.dtype != target.dtype:
            raise ValueError(f"draft_probs must have the dtype of {target_name} ({target.dtype}), "
                             f"got {draft_probs.dtype}")
        require_device(draft_probs, target, "draft_probs", target_name)
    return B, K, V


def _value_flags(draft_tokens, num_draft, K: int, V: int):
    """Flags and messages for num_draft range and draft token range (positions < num_draft)."""
    B = draft_tokens.shape[0]
    pos = torch.arange(K, device=draft_tokens.device)
    if num_draft is None:
        used = torch.ones(B, K, dtype=torch.bool, device=draft_tokens.device)
        bad_n = torch.zeros((), dtype=torch.bool, device=draft_tokens.device)
    else:
        used = pos[None, :] < num_draft[:, None]
        bad_n = ((num_draft < 0) | (num_draft > K)).any()
    bad_tok = (used & ((draft_tokens < 0) | (draft_tokens >= V))).any()
    return [bad_n, bad_tok], [
        f"num_draft must be in [0, K] = [0, {K}]",
        f"draft_tokens must be in [0, V) = [0, {V}) at positions < num_draft (-1 padding is allowed after)",
    ], used


def _prob_flags(t: torch.Tensor, used: torch.Tensor, name: str, need_mass: bool):
    x = t.float()
    finite = torch.isfinite(x)
    bad = (~finite | (x < 0)).any(-1) & used
    flags = [bad.any()]
    msgs = [f"{name} must be finite and non-negative (found NaN, inf or a negative value)"]
    total = x.sum(-1)  # float32, whatever the dtype of the rows
    if need_mass:
        flags.append(((total <= 0) & used).any())
        msgs.append(f"{name} has a row with zero total mass")
    off = ((total - 1).abs() > prob_sum_tol(t.dtype)) & used
    flags.append(off.any())
    msgs.append(lambda: f"{name} rows must sum to 1 ({prob_sum_rule(t.dtype)}); found a row summing to "
                        f"{float(total[off][0]):.6g}")
    return flags, msgs


def _check_verify_chain(draft_tokens, target_probs, draft_probs, num_draft, check: bool):
    B, K, V = _check_chain_shapes(draft_tokens, target_probs, "target_probs", draft_probs)
    nd = row_counts(num_draft, B, K, target_probs)
    if check and B > 0:
        flags, msgs, used = _value_flags(draft_tokens, nd, K, V)
        n = nd if nd is not None else torch.full((B,), K, device=target_probs.device)
        used_t = torch.arange(K + 1, device=target_probs.device)[None, :] <= n.clamp(0, K)[:, None]
        f, m = _prob_flags(target_probs, used_t, "target_probs", need_mass=True)
        flags += f
        msgs += m
        if draft_probs is not None:
            f, m = _prob_flags(draft_probs, used, "draft_probs", need_mass=False)
            flags += f
            msgs += m
        raise_first(torch.stack([f.reshape(()) for f in flags]), msgs)
    return B, K, V, nd


def _check_verify_chain_greedy(draft_tokens, target_logits, num_draft, check: bool):
    B, K, V = _check_chain_shapes(draft_tokens, target_logits, "target_logits")
    nd = row_counts(num_draft, B, K, target_logits)
    if check and B > 0:
        flags, msgs, _ = _value_flags(draft_tokens, nd, K, V)
        flags.append(torch.isnan(target_logits).any())
        msgs.append("target_logits must not contain NaN")
        raise_first(torch.stack([f.reshape(()) for f in flags]), msgs)
    return B, K, V, nd


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
    _check_rule(rule)
    dev = require_tensor(target_probs, "target_probs").device
    backend = _backend.select("verify_chain", dev)
    # The cpu kernel checks the values it reads itself, in its own pass (csrc/common/checks.cpp).
    B, K, V, nd = _check_verify_chain(draft_tokens, target_probs, draft_probs, num_draft,
                                      check and backend != "cpu")
    seeds, offsets, row_streams = rng_rows(seed, offset, B, target_probs.device, generator)
    if backend == "reference":
        from ..reference.chain import verify_chain as ref

        return ref(draft_tokens, target_probs, draft_probs, num_draft=nd,
                   seed=seeds if not row_streams else int(seeds[0]) if B else 0,
                   offset=offsets, rule=rule, check=False)
    if backend == "triton":
        from ..triton import chain as tri

        fn = tri.verify_chain if rule == "token" else tri.verify_chain_block
        return ChainResult(*fn(draft_tokens, target_probs, draft_probs, nd, seeds, offsets, row_streams))
    op = torch.ops.specdec.verify_chain if rule == "token" else torch.ops.specdec.verify_chain_block
    return ChainResult(*op(draft_tokens, target_probs, draft_probs, nd, seeds, offsets, row_streams,
                           check and backend == "cpu"))


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
    dev = require_tensor(target_logits, "target_logits").device
    backend = _backend.select("verify_chain_greedy", dev)
    B, K, V, nd = _check_verify_chain_greedy(draft_tokens, target_logits, num_draft,
                                             check and backend != "cpu")
    if backend == "reference":
        from ..reference.chain import verify_chain_greedy as ref

        return ref(draft_tokens, target_logits, num_draft=nd, check=False)
    if backend == "triton":
        from ..triton.chain import verify_chain_greedy as tri

        return ChainResult(*tri(draft_tokens, target_logits, nd))
    return ChainResult(*torch.ops.specdec.verify_chain_greedy(draft_tokens, target_logits, nd,
                                                              check and backend == "cpu"))
