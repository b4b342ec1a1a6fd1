"""Contract of the chain verification ops (docs/algorithms.md §1 and §9).

Canonical arguments (the C++ schemas in csrc/registration.cpp, without the trailing ``check``):

    verify_chain / verify_chain_block(draft_tokens [B, K] int64, target_probs [B, K+1, V],
        draft_probs [B, K, V] | None, num_draft [B] int64 | None, seed [B] int64,
        offset [B] int64, row_streams bool) -> (tokens [B, K+1] int64, num_accepted [B] int64)
    verify_chain_greedy(draft_tokens, target_logits [B, K+1, V], num_draft | None)
        -> (tokens, num_accepted)

Draw plan: a call uses Philox draws ``offset`` (slot 0: the acceptance uniforms, one per
position) and ``offset + 1`` (slot 1: the race over the vocabulary) of the row's stream, whatever
the rule; the stream of row b is b when ``row_streams`` else 0 (``rng.row_stream``).
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

#: Philox draws one verify_chain call consumes: it uses offsets ``offset`` and ``offset + 1``.
VERIFY_CHAIN_OFFSET_STRIDE = 2

#: The verification rules of :func:`specdec_kernels.verify_chain` (docs/algorithms.md §1 and §9).
VERIFY_CHAIN_RULES = ("token", "block")

#: The registered op of each rule.
VERIFY_CHAIN_OPS = {"token": "verify_chain", "block": "verify_chain_block"}


class VerifyChainArgs(NamedTuple):
    """Canonical arguments of verify_chain and verify_chain_block."""

    draft_tokens: torch.Tensor
    target_probs: torch.Tensor
    draft_probs: torch.Tensor | None
    num_draft: torch.Tensor | None
    seed: torch.Tensor
    offset: torch.Tensor
    row_streams: bool


class VerifyChainGreedyArgs(NamedTuple):
    """Canonical arguments of verify_chain_greedy."""

    draft_tokens: torch.Tensor
    target_logits: torch.Tensor
    num_draft: torch.Tensor | None


def check_rule(rule) -> str:
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


def verify_chain_args(draft_tokens, target_probs, draft_probs=None, num_draft=None, seed: SeedLike = None,
                      offset=0, generator: torch.Generator | None = None) -> VerifyChainArgs:
    """Check shapes, dtypes and devices (always) and normalise to the canonical arguments."""
    B, K, _ = _check_chain_shapes(draft_tokens, target_probs, "target_probs", draft_probs)
    nd = row_counts(num_draft, B, K, target_probs)
    seeds, offsets, row_streams = rng_rows(seed, offset, B, target_probs.device, generator)
    return VerifyChainArgs(draft_tokens, target_probs, draft_probs, nd, seeds, offsets, row_streams)


def verify_chain_greedy_args(draft_tokens, target_logits, num_draft=None) -> VerifyChainGreedyArgs:
    B, K, _ = _check_chain_shapes(draft_tokens, target_logits, "target_logits")
    return VerifyChainGreedyArgs(draft_tokens, target_logits, row_counts(num_draft, B, K, target_logits))


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


def check_verify_chain_values(draft_tokens, target_probs, draft_probs, num_draft, *_rng) -> None:
    """The check=True pass over the values (one device sync); the cpu kernels do it themselves."""
    B, K = draft_tokens.shape
    if B == 0:
        return
    V = target_probs.shape[2]
    flags, msgs, used = _value_flags(draft_tokens, num_draft, K, V)
    n = num_draft if num_draft is not None else torch.full((B,), K, device=target_probs.device)
    used_t = torch.arange(K + 1, device=target_probs.device)[None, :] <= n.clamp(0, K)[:, None]
    f, m = _prob_flags(target_probs, used_t, "target_probs", need_mass=True)
    flags += f
    msgs += m
    if draft_probs is not None:
        f, m = _prob_flags(draft_probs, used, "draft_probs", need_mass=False)
        flags += f
        msgs += m
    raise_first(flags, msgs)


def check_verify_chain_greedy_values(draft_tokens, target_logits, num_draft) -> None:
    B, K = draft_tokens.shape
    if B == 0:
        return
    flags, msgs, _ = _value_flags(draft_tokens, num_draft, K, target_logits.shape[2])
    flags.append(torch.isnan(target_logits).any())
    msgs.append("target_logits must not contain NaN")
    raise_first(flags, msgs)


def chain_fake(draft_tokens, *_args, **_kwargs):
    """Output shapes of every chain op, for torch.compile and CUDA graphs."""
    B, K = draft_tokens.shape
    return draft_tokens.new_empty((B, K + 1)), draft_tokens.new_empty((B,))
