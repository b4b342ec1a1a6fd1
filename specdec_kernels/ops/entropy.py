"""Draft entropy and the AdaEDL early-stopping rule (docs/algorithms.md §6): the public ops."""

from __future__ import annotations

import math

import torch

from .. import _backend
from ..contract._common import raise_first, require_float, require_tensor, row_param


def _prepare(logits, temperature, check: bool):
    require_tensor(logits, "logits")
    require_float(logits, "logits")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must be [R, V] (or [..., V]) with V >= 1, got {list(logits.shape)}")
    lead = tuple(logits.shape[:-1])
    V = logits.shape[-1]
    R = math.prod(lead)
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be > 0 and finite, got {temperature}")
    elif isinstance(temperature, bool):
        raise ValueError(f"temperature must be a float or a float tensor, got {temperature!r}")
    temp = row_param(temperature, R, lead, logits.device, torch.float32, "temperature")
    flat = logits.reshape(R, V)
    if check and R > 0:
        flags = torch.stack([
            torch.isnan(flat).any() | (flat == float("inf")).any(),
            (flat == float("-inf")).all(-1).any(),
            ~(torch.isfinite(temp) & (temp > 0)).all(),
        ])
        raise_first(flags, [
            "logits must not contain NaN or +inf",
            "logits has a row where every entry is -inf (its distribution is undefined)",
            "temperature must be > 0 and finite in every row",
        ])
    return flat, temp, lead


def _stop_args(threshold, gamma, h: torch.Tensor) -> torch.Tensor:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (
            math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a float > 0, got {gamma!r}")
    if isinstance(threshold, torch.Tensor):
        if not threshold.dtype.is_floating_point:
            raise ValueError(f"threshold tensor must be a float tensor, got {threshold.dtype}")
        if threshold.device != h.device:
            raise ValueError(f"threshold tensor must be on {h.device}, got {threshold.device}")
        if threshold.dim() != 0 and tuple(threshold.shape) != tuple(h.shape) and not (
                threshold.dim() == 1 and threshold.shape[0] == h.numel()):
            raise ValueError(f"threshold tensor must have shape [] or [R] = {list(h.shape)}, "
                             f"got {list(threshold.shape)}")
        return threshold.reshape(h.shape) if threshold.dim() else threshold
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
        raise ValueError(f"threshold must be a float or a float tensor, got {threshold!r}")
    return torch.full_like(h, float(threshold))


def draft_entropy(logits: torch.Tensor, *, temperature: float | torch.Tensor = 1.0,
                  check: bool = True) -> torch.Tensor:
    """Entropy in nats of softmax(logits / temperature), one fused pass per row.

    The pass keeps a running maximum m, Z = sum exp(s - m) and A = sum exp(s - m) (s - m) (online
    softmax); H = log Z - A / Z. Nothing of size V is written.

    Args:
        logits: Shape: (R, V) or (..., V), float32/float16/bfloat16. -inf masks a token (it
            contributes 0); a row needs at least one finite logit.
        temperature: > 0; a float, or a tensor of shape (), (R,) or the leading shape.
        check: reject NaN/+inf logits, all -inf rows and bad temperatures (one device sync).

    Returns:
        float32 of the leading shape (R,): H >= 0; V = 1 gives 0.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> sk.draft_entropy(torch.zeros(2, 4))           # uniform over 4: log 4
        tensor([1.3863, 1.3863])
    """
    backend = _backend.select("draft_entropy", require_tensor(logits, "logits").device)
    # The cpu kernel checks the logits itself, for free: bad rows are those whose entropy is NaN.
    flat, temp, lead = _prepare(logits, temperature, check and backend != "cpu")
    if backend == "reference":
        from ..reference.entropy import draft_entropy as ref

        return ref(flat, temperature=temp, check=False).reshape(lead)
    flat = flat if flat.stride(-1) == 1 else flat.contiguous()
    if backend == "triton":
        from ..triton.entropy import draft_entropy as tri

        return tri(flat, temp).reshape(lead)
    return torch.ops.specdec.draft_entropy(flat, temp, check and backend == "cpu").reshape(lead)


def adaedl_stop(logits: torch.Tensor, threshold: float | torch.Tensor, *, gamma: float = 0.2,
                temperature: float | torch.Tensor = 1.0, check: bool = True) -> torch.Tensor:
    """AdaEDL's stop rule: stop drafting when the acceptance lower bound 1 - sqrt(gamma * H) falls
    below the threshold (docs/algorithms.md §6).

    Args:
        logits: the draft's next-token logits. Shape: (R, V) or (..., V).
        threshold: lambda, a float or a float tensor of shape () or (R,) (per request).
        gamma: gamma_H of the bound (0.2 in the paper).
        temperature: the draft's sampling temperature (a float or per-row tensor, > 0).
        check: as for :func:`draft_entropy`.

    Returns:
        bool of the leading shape: True where drafting should stop.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> sk.adaedl_stop(torch.tensor([[9., 0., 0.], [0., 0., 0.]]), 0.6)   # bounds 0.98 / 0.53
        tensor([False,  True])
    """
    h = draft_entropy(logits, temperature=temperature, check=check)
    lam = _stop_args(threshold, gamma, h)
    return (1.0 - torch.sqrt(gamma * h.double())) < lam.double()
