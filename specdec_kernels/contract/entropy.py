"""Contract of draft_entropy and the AdaEDL stop rule (docs/algorithms.md §6).

Canonical arguments (the C++ schema in csrc/registration.cpp, without the trailing ``check``):

    draft_entropy(logits [R, V] float32/float16/bfloat16 with unit last stride,
        temperature [R] float32) -> entropy [R] float32

The public op takes logits of any leading shape (..., V) and a temperature as a Python scalar or
a tensor of shape (), (R,) or the leading shape; :func:`draft_entropy_args` flattens them to rows
and returns the leading shape to give the result back.

adaedl_stop has no kernel of its own: it is ``1 - sqrt(gamma * H) < threshold`` on draft_entropy's
result, with its extra arguments checked by :func:`adaedl_stop_args`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._common import raise_first, require_float, require_tensor, row_param


class DraftEntropyArgs(NamedTuple):
    """Canonical arguments of draft_entropy."""

    logits: torch.Tensor
    temperature: torch.Tensor


def draft_entropy_args(logits, temperature=1.0) -> tuple[DraftEntropyArgs, tuple]:
    """Check shapes, dtypes, devices and a Python scalar temperature (always) and normalise to the
    canonical arguments. Returns ``(args, lead)``: the result [R] is reshaped to ``lead``."""
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
    flat = flat if flat.stride(-1) == 1 else flat.contiguous()
    return DraftEntropyArgs(flat, temp), lead


def check_draft_entropy_values(logits, temperature) -> None:
    """The check=True pass over the values (one device sync); the cpu kernel checks the logits
    itself, for free: bad rows are those whose entropy is NaN."""
    if logits.shape[0] == 0:
        return
    flags = torch.stack([
        torch.isnan(logits).any() | (logits == float("inf")).any(),
        (logits == float("-inf")).all(-1).any(),
        ~(torch.isfinite(temperature) & (temperature > 0)).all(),
    ])
    raise_first(flags, [
        "logits must not contain NaN or +inf",
        "logits has a row where every entry is -inf (its distribution is undefined)",
        "temperature must be > 0 and finite in every row",
    ])


def draft_entropy_fake(logits, temperature, check=False):
    """Output shape of draft_entropy, for torch.compile and CUDA graphs."""
    return logits.new_empty((logits.shape[0],), dtype=torch.float32)


def adaedl_stop_args(threshold, gamma, h: torch.Tensor) -> torch.Tensor:
    """Check adaedl_stop's ``gamma`` and ``threshold`` against the entropy ``h`` (of the leading
    shape) and return the threshold as a tensor broadcastable to ``h``."""
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
