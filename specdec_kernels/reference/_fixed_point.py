"""Exact, order-independent sums of float32 values (shared by the chain and tree references)."""

from __future__ import annotations

import torch

_TWO32 = 4294967296.0


def fixed_point_sum(r: torch.Tensor) -> float:
    """Exact, order-independent sum of non-negative float32 values in 2^-64 fixed point.

    Each value (clamped to 1, which only an invalid probability exceeds) splits into
    hi = floor(r * 2^32) and lo = floor(r * 2^64) - hi * 2^32, both exact in float64; the words are
    summed as int64 integers (no overflow below V = 2^21) and combined once in float64.
    """
    r64 = torch.clamp(r.to(torch.float32), max=1.0).to(torch.float64)
    hi = (r64 * _TWO32).to(torch.int64)  # truncation = floor for r >= 0
    lo = (r64 * (_TWO32 * _TWO32) - hi.to(torch.float64) * _TWO32).to(torch.int64)
    return float(hi.sum().to(torch.float64) * (1.0 / _TWO32)
                 + lo.sum().to(torch.float64) * (1.0 / (_TWO32 * _TWO32)))
