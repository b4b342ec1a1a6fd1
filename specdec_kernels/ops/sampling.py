"""Sampling parameters (temperature, top-k, top-p) turned into probabilities: the public op."""

from __future__ import annotations

import torch

from ..contract import sampling as contract
from . import _dispatch
from ._dispatch import Op

_dispatch.register(Op("sampling_probs", fake=contract.sampling_probs_fake,
                      check_values=contract.check_sampling_probs_values,
                      reference="reference.sampling:op_sampling_probs",
                      triton="triton.sampling:sampling_probs", device_arg=0))


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
    args, shape = contract.sampling_probs_args(logits, temperature, top_k, top_p)
    return _dispatch.call("sampling_probs", args, check).reshape(shape)
