"""Draft entropy and the AdaEDL early-stopping rule (docs/algorithms.md §6): the public ops."""

from __future__ import annotations

import torch

from ..contract import entropy as contract
from . import _dispatch
from ._dispatch import Op

_dispatch.register(Op("draft_entropy", fake=contract.draft_entropy_fake,
                      check_values=contract.check_draft_entropy_values,
                      reference="reference.entropy:op_draft_entropy", triton="triton.entropy:draft_entropy",
                      device_arg=0))


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
    args, lead = contract.draft_entropy_args(logits, temperature)
    return _dispatch.call("draft_entropy", args, check).reshape(lead)


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
    lam = contract.adaedl_stop_args(threshold, gamma, h)
    return (1.0 - torch.sqrt(gamma * h.double())) < lam.double()
