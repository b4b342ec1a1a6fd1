"""Plain-PyTorch ground truth for sampling_probs: temperature, top-k, top-p, in that order."""

from __future__ import annotations

import torch

from ..contract import sampling as contract


def filter_row(x: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Probabilities of one row of temperature-scaled logits ``x`` after top-k then top-p.

    top-k keeps the tokens whose scaled logit is >= the k-th largest (ties at the threshold are
    kept). top-p keeps the tokens whose preceding mass, the sum of the strictly larger
    probabilities, is < top_p; equal probabilities are never split, so ties are kept together
    and the result does not depend on token order.
    """
    V = x.shape[0]
    # float64 from here on: torch's float32 softmax over 128K entries is off by ~3e-5 relative,
    # more than the kernels; the spec should be the exactly rounded value.
    x = x.double()
    probs = torch.softmax(x, dim=0)
    if 0 < top_k < V:
        kth = torch.topk(x, top_k).values[-1]
        probs = torch.where(x >= kth, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    if top_p < 1.0:
        srt = torch.sort(probs, descending=True).values
        preceding = torch.cumsum(srt, 0) - srt
        # first position of each run of equal values carries the run's preceding mass
        first = torch.ones_like(srt, dtype=torch.bool)
        first[1:] = srt[1:] != srt[:-1]
        run_mass = torch.where(first, preceding, torch.full_like(preceding, float("-inf")))
        run_mass = torch.cummax(run_mass, 0).values  # forward-fill: preceding is non-decreasing
        kept = int((run_mass < top_p).sum())
        tau = srt[max(kept, 1) - 1]
        probs = torch.where(probs >= tau, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return probs.float()


def op_sampling_probs(logits, temperature, top_k, top_p) -> torch.Tensor:
    """specdec::sampling_probs on its canonical arguments (``contract.sampling.SamplingProbsArgs``):
    logits [R, V], temperature / top_p float32 [R], top_k int64 [R]; probs [R, V] float32."""
    out = torch.empty(logits.shape, dtype=torch.float32)
    x_all = logits.detach().cpu().float()
    temp, k, p = temperature.cpu(), top_k.cpu(), top_p.cpu()
    for r in range(logits.shape[0]):
        x = x_all[r] / temp[r]  # float32 division, as the kernels do
        out[r] = filter_row(x, int(k[r]), float(p[r]))
    return out.to(logits.device)


def sampling_probs(
    logits: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    top_k: int | torch.Tensor = 0,
    top_p: float | torch.Tensor = 1.0,
    check: bool = True,
) -> torch.Tensor:
    """Reference of :func:`specdec_kernels.sampling_probs` (same arguments, same result)."""
    args, shape = contract.sampling_probs_args(logits, temperature, top_k, top_p)
    if check:
        contract.check_sampling_probs_values(*args)
    return op_sampling_probs(*args).reshape(shape)
