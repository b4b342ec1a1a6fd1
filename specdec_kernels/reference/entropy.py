"""Plain-PyTorch ground truth for draft entropy and the AdaEDL stop rule (docs/algorithms.md §6).

H = -sum_x p(x) log p(x) with p = softmax(logits / T), computed here in float64 (the exactly
rounded value is the spec; the kernels accumulate in float32 or double and are compared with a
tolerance). Tokens with a -inf logit have p = 0 and contribute 0 (0 * log 0 = 0); a single token,
or a row where one token holds all the mass, has H = 0.
"""

from __future__ import annotations

import torch

from ..contract import entropy as contract


def op_draft_entropy(logits, temperature) -> torch.Tensor:
    """specdec::draft_entropy on its canonical arguments (``contract.entropy.DraftEntropyArgs``):
    logits [R, V], temperature float32 [R]; entropy [R] float32."""
    s = logits.detach().double() / temperature.double()[:, None]
    logp = torch.log_softmax(s, -1)
    p = logp.exp()
    h = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
    return h.clamp_min(0.0).float().to(logits.device)


def draft_entropy(logits: torch.Tensor, *, temperature: float | torch.Tensor = 1.0,
                  check: bool = True) -> torch.Tensor:
    """Reference of :func:`specdec_kernels.draft_entropy` (same arguments, same result)."""
    args, lead = contract.draft_entropy_args(logits, temperature)
    if check:
        contract.check_draft_entropy_values(*args)
    return op_draft_entropy(*args).reshape(lead)


def adaedl_stop(logits: torch.Tensor, threshold: float | torch.Tensor, *, gamma: float = 0.2,
                temperature: float | torch.Tensor = 1.0, check: bool = True) -> torch.Tensor:
    """Reference of :func:`specdec_kernels.adaedl_stop`: 1 - sqrt(gamma * H) < threshold."""
    h = draft_entropy(logits, temperature=temperature, check=check)
    lam = contract.adaedl_stop_args(threshold, gamma, h)
    return (1.0 - torch.sqrt(gamma * h.double())) < lam.double()
