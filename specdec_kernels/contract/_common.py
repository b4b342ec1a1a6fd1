"""The contract floor's shared pieces: result types, argument checks, seed/offset normalisation."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .limits import PROB_SUM_TOL, PROB_SUM_TOL_HALF  # noqa: F401  (re-exported)

SeedLike = int | torch.Tensor | None
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_SEED = 2**63


class ChainResult(NamedTuple):
    """Result of chain verification.

    Fields:
        tokens: int64 [B, K+1]. ``tokens[b, :n]`` are the accepted drafts, ``tokens[b, n]`` the
            correction (or the bonus token when every draft was accepted), the rest -1.
        num_accepted: int64 [B], ``n`` above: how many drafts were accepted. Each row emits
            ``num_accepted + 1`` tokens.
    """

    tokens: torch.Tensor
    num_accepted: torch.Tensor


class TreeResult(NamedTuple):
    """Result of tree verification (:func:`specdec_kernels.verify_tree`, ``verify_tree_greedy``).

    Fields:
        tokens: int64 [B, N]. ``tokens[b, :n]`` are the accepted drafted tokens along the accepted
            path (depth order), ``tokens[b, n]`` the correction (or the bonus token when the path
            ends at a leaf), the rest -1.
        num_accepted: int64 [B], ``n`` above. Each row emits ``num_accepted + 1`` tokens.
        accepted_nodes: int64 [B, N]: the node indices of the accepted drafted nodes in depth
            order (``accepted_nodes[b, :n]``; the root is not listed), then -1. Feed it to
            :func:`specdec_kernels.compact_tree_kv`.
    """

    tokens: torch.Tensor
    num_accepted: torch.Tensor
    accepted_nodes: torch.Tensor


class TopKSample(NamedTuple):
    """Result of :func:`specdec_kernels.gumbel_topk`: k distinct tokens per row, in draw order.

    Fields:
        tokens: int64 [R, k]: distinct tokens by descending perturbed score; -1 in the slots past
            the number of tokens with a finite logit (-inf masks a token).
        log_probs: float32 [R, k]: log softmax(logits / temperature) at those tokens; -inf in
            padding slots.
        scores: float32 [R, k]: the perturbed values log_probs + Gumbel noise, descending; -inf in
            padding slots.
    """

    tokens: torch.Tensor
    log_probs: torch.Tensor
    scores: torch.Tensor


class BeamStep(NamedTuple):
    """Result of :func:`specdec_kernels.stochastic_beam_step`: the kept expansions, best first.

    Fields:
        parents: int64 [B, width]: index of the expanded beam in [0, W); -1 in padding slots.
        tokens: int64 [B, width]: the appended token; -1 in padding slots.
        log_probs: float32 [B, width]: cumulative log q of the new sequence; -inf in padding.
        scores: float32 [B, width]: its truncated perturbed score G', descending; -inf in padding.
    """

    parents: torch.Tensor
    tokens: torch.Tensor
    log_probs: torch.Tensor
    scores: torch.Tensor


def require_tensor(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def require_float(t: torch.Tensor, name: str) -> None:
    if t.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


def require_device(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {t.device}")


def row_counts(num_draft, B: int, K: int, ref: torch.Tensor, name: str = "num_draft"):
    """Validate the shape/dtype of a ragged-length tensor and return it as int64 (or None)."""
    if num_draft is None:
        return None
    require_tensor(num_draft, name)
    if num_draft.dim() != 1 or num_draft.shape[0] != B:
        raise ValueError(f"{name} must have shape [B] = [{B}], got {list(num_draft.shape)}")
    if num_draft.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 or int64, got {num_draft.dtype}")
    require_device(num_draft, ref, name, "the probabilities")
    return num_draft.to(torch.long)


def _int_in_range(v: int, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name} must be an int or an int64 tensor, got {type(v).__name__}")
    if not 0 <= v < _MAX_SEED:
        raise ValueError(f"{name} must be in [0, 2**63), got {v}")
    return v


def _per_row(v, B: int, device: torch.device, name: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        if v.dtype != torch.int64:
            raise ValueError(f"{name} tensor must be int64, got {v.dtype}")
        if v.device != device:
            raise ValueError(f"{name} tensor must be on {device}, got {v.device}")
        if v.dim() == 0:
            return v.expand(B)
        if v.dim() != 1 or v.shape[0] != B:
            raise ValueError(f"{name} tensor must have shape [] or [B] = [{B}], got {list(v.shape)}")
        return v
    return torch.full((B,), _int_in_range(v, name), dtype=torch.int64, device=device)


def rng_rows(seed: SeedLike, offset, B: int, device: torch.device,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(seed [B], offset [B], row_streams) as the C++ ops take them.

    An int seed (or None, which draws one from ``generator`` / torch's default generator) gives
    row b its own Philox stream b; a seed tensor gives each row the stream of its own seed, so a
    request's draws do not depend on its position in the batch.
    """
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator,
                                 device=generator.device if generator is not None else "cpu"))
    elif generator is not None:
        raise ValueError("pass either seed or generator, not both")
    row_streams = not isinstance(seed, torch.Tensor)
    return _per_row(seed, B, device, "seed"), _per_row(offset, B, device, "offset"), row_streams


def row_stream_ids(B: int, row_streams: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """The Philox stream of each row: the row itself when one int seed covers the batch, else 0 (every
    request brings its own seed, so its draws do not depend on its position in the batch). The
    kernels' twins: row_draw_key in csrc/common/philox.h and specdec_kernels/triton/_philox.py."""
    if row_streams:
        return torch.arange(B, device=device)
    return torch.zeros(B, dtype=torch.long, device=device)


def row_param(v, R: int, lead: tuple[int, ...], device, dtype, name: str) -> torch.Tensor:
    """A per-row parameter (Python scalar or tensor of shape [], [R] or ``lead``) as a contiguous
    [R] tensor of ``dtype`` on ``device``."""
    if isinstance(v, torch.Tensor):
        if v.device != device:
            raise ValueError(f"{name} tensor must be on {device}, got {v.device}")
        if v.dim() == 0:
            v = v.reshape(1).expand(R)
        elif tuple(v.shape) == lead or (v.dim() == 1 and v.shape[0] == R):
            v = v.reshape(R)
        else:
            raise ValueError(
                f"{name} tensor must have shape [], [R] = [{R}] or {list(lead)}, got {list(v.shape)}")
        if dtype.is_floating_point and not v.dtype.is_floating_point:
            raise ValueError(f"{name} tensor must be a float tensor, got {v.dtype}")
        if not dtype.is_floating_point and (v.dtype.is_floating_point or v.dtype == torch.bool):
            raise ValueError(f"{name} tensor must be an integer tensor, got {v.dtype}")
        return v.to(dtype).contiguous()
    return torch.full((R,), v, dtype=dtype, device=device)


def prob_sum_tol(dtype: torch.dtype) -> float:
    """The tolerance of the sum-to-1 check for probability rows of ``dtype``."""
    return PROB_SUM_TOL_HALF if dtype in (torch.float16, torch.bfloat16) else PROB_SUM_TOL


def prob_sum_rule(dtype: torch.dtype) -> str:
    """The sum-to-1 rule as the check messages state it, e.g. ``"within 1e-03 for float32"``."""
    return f"within {prob_sum_tol(dtype):.0e} for {str(dtype).removeprefix('torch.')}"


def raise_first(flags, messages: list) -> None:
    """One device sync for several value checks: raise ValueError for the first flag set.

    ``flags``: a bool tensor, or a list of 0-d bool tensors. A message may be a callable that
    builds it (e.g. naming the first bad node), called only when its flag is set.
    """
    if isinstance(flags, (list, tuple)):
        if not flags:
            return
        flags = torch.stack([f.reshape(()) for f in flags])
    if flags.numel() == 0:
        return
    host = flags.cpu().tolist()
    for bad, msg in zip(host, messages, strict=True):
        if bad:
            raise ValueError(msg() if callable(msg) else msg)
