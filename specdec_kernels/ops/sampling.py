"""Sampling parameters (temperature, top-k, top-p) turned into probabilities: the public op."""

from __future__ import annotations

import math

import torch

from .. import _backend
from ..contract._common import raise_first, require_float, require_tensor, row_param


def _prepare(logits, temperature, top_k, top_p, check: bool):
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
    flat = logits.reshape(R, V)
    if check and R > 0:
        row_all_masked = (flat == float("-inf")).all(-1).any()
        flags = torch.stack([
            torch.isnan(flat).any() | (flat == float("inf")).any(),
            row_all_masked,
            ~(torch.isfinite(temp) & (temp > 0)).all(),
            (k < 0).any(),
            ~((p > 0) & (p <= 1)).all(),
        ])
        raise_first(flags, [
            "logits must not contain NaN or +inf",
            "logits has a row where every entry is -inf",
            "temperature must be > 0 and finite in every row (use verify_chain_greedy for greedy)",
            "top_k must be >= 0 in every row (0 = off)",
            "top_p must be in (0, 1] in every row (1.0 = off)",
        ])
    return flat, temp, k, p, shape


def sampling_probs(
    logits: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    top_k: int | torch.Tensor = 0,
    top_p: float | torch.Tensor = 1.0,
    check: bool = True,
) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p, applied per row in that order.

    ``probs = softmax(logits / temperature)``; top-k keeps the tokens whose scaled logit is >= the
    k-th largest (ties at the threshold kept); top-p then keeps the tokens whose preceding mass
    (the sum of the strictly larger probabilities, after top-k renormalisation) is < top_p, so
    equal probabilities are never split; the result is renormalised. Apply it identically to the
    target and the draft logits before verification, or the verification is not exact for the
    filtered target.

    Args:
        logits: Shape: (R, V) or (..., V), float32/float16/bfloat16; -inf entries are masked tokens.
        temperature: float or float tensor of shape (), (R,) or the leading shape; > 0.
        top_k: int or integer tensor like ``temperature``; 0 (or >= V) = off.
        top_p: float or float tensor like ``temperature``; in (0, 1]; 1.0 = off.
        check: validate values (NaN/+inf logits, all -inf rows, parameter ranges in tensors);
            one device sync. Python scalars are always validated.

    Returns:
        probs: float32 tensor of the shape of ``logits``; each row sums to 1.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> sk.sampling_probs(torch.tensor([[2.0, 1.0, 0.0, -1.0]]), temperature=0.5, top_k=2)
        tensor([[0.8808, 0.1192, 0.0000, 0.0000]])
    """
    backend = _backend.select("sampling_probs", require_tensor(logits, "logits").device)
    # The cpu kernel checks the logits in its first pass over each row, the parameters in C++.
    flat, temp, k, p, shape = _prepare(logits, temperature, top_k, top_p, check and backend != "cpu")
    if backend == "reference":
        from ..reference.sampling import sampling_probs as ref

        return ref(flat, temperature=temp, top_k=k, top_p=p, check=False).reshape(shape)
    if backend == "triton":
        from ..triton.sampling import sampling_probs as tri

        return tri(flat, temp, k, p).reshape(shape)
    return torch.ops.specdec.sampling_probs(flat, temp, k, p, check and backend == "cpu").reshape(shape)
