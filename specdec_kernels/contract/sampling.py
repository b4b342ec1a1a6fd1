"""Contract of sampling_probs: temperature, top-k and top-p turned into probabilities.

Canonical arguments (the C++ schema in csrc/registration.cpp, without the trailing ``check``):

    sampling_probs(logits [R, V] float32/float16/bfloat16, temperature [R] float32,
        top_k [R] int64, top_p [R] float32) -> probs [R, V] float32

The public op takes logits of any leading shape (..., V) and per-row parameters as Python scalars
or tensors of shape (), (R,) or the leading shape; :func:`sampling_probs_args` flattens them to
rows and returns the shape to give the result back.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._common import raise_first, require_float, require_tensor, row_param


class SamplingProbsArgs(NamedTuple):
    """Canonical arguments of sampling_probs."""

    logits: torch.Tensor
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor


def sampling_probs_args(logits, temperature=1.0, top_k=0, top_p=1.0) -> tuple[SamplingProbsArgs, tuple]:
    """Check shapes, dtypes, devices and Python scalar parameters (always) and normalise to the
    canonical arguments. Returns ``(args, shape)``: ``shape`` is the shape of ``logits``, which the
    result [R, V] is reshaped to."""
    require_tensor(logits, "logits")
    require_float(logits, "logits")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must be [R, V] (or [..., V]) with V >= 1, got {list(logits.shape)}")
    shape = tuple(logits.shape)
    lead = shape[:-1]
    V = shape[-1]
    R = math.prod(lead)
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be > 0 and finite (use verify_chain_greedy for greedy), "
                             f"got {temperature}")
    if isinstance(top_k, bool) or isinstance(top_k, float):
        raise ValueError(f"top_k must be an int or an integer tensor, got {top_k!r}")
    if isinstance(top_k, int) and top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if isinstance(top_p, (int, float)) and not isinstance(top_p, bool) and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1.0 = off), got {top_p}")
    dev = logits.device
    temp = row_param(temperature, R, lead, dev, torch.float32, "temperature")
    k = row_param(top_k, R, lead, dev, torch.int64, "top_k")
    p = row_param(top_p, R, lead, dev, torch.float32, "top_p")
    return SamplingProbsArgs(logits.reshape(R, V), temp, k, p), shape


def check_sampling_probs_values(logits, temperature, top_k, top_p) -> None:
    """The check=True pass over the values (one device sync); the cpu kernel checks the logits in
    its first pass over each row and the parameters in C++."""
    if logits.shape[0] == 0:
        return
    flags = torch.stack([
        torch.isnan(logits).any() | (logits == float("inf")).any(),
        (logits == float("-inf")).all(-1).any(),
        ~(torch.isfinite(temperature) & (temperature > 0)).all(),
        (top_k < 0).any(),
        ~((top_p > 0) & (top_p <= 1)).all(),
    ])
    raise_first(flags, [
        "logits must not contain NaN or +inf",
        "logits has a row where every entry is -inf",
        "temperature must be > 0 and finite in every row (use verify_chain_greedy for greedy)",
        "top_k must be >= 0 in every row (0 = off)",
        "top_p must be in (0, 1] in every row (1.0 = off)",
    ])


def sampling_probs_fake(logits, temperature, top_k, top_p, check=False):
    """Output shape of sampling_probs, for torch.compile and CUDA graphs."""
    return logits.new_empty(logits.shape, dtype=torch.float32)
