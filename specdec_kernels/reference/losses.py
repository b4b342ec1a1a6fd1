"""Plain-PyTorch ground truth for the drafter-distillation losses (docs/algorithms.md §7).

Student q = softmax(student_logits), teacher p (probabilities), per position; positions where
``mask`` is False are ignored, and every loss is the mean over the unmasked positions.

* tv:    value (1/n) sum_pos 1/2 sum_x |p(x) - q(x)|. Its gradient with respect to the student
         logits is the policy gradient of docs/algorithms.md §7: d/dz_j = -(1/n) q_j (r_j - E_q[r]) with
         reward r(x) = 1[p(x) > q(x)] (exactly the gradient of the value, ties p = q aside).
* tvdpp: the same value; the gradient uses the standardised reward r^ = (r - mean) / std (TVD++),
         with mean and std taken per position over the vocabulary (normalize="vocab") or over all
         unmasked positions and tokens of the batch (normalize="batch"); std = 0 gives r^ = 0.
         normalize=None is tv. The result is then a surrogate: its gradient is not the gradient of
         the reported value.
* kl:    forward KL(p || q) = sum_x p (log p - log q); gradient (q sum_x p - p) / n.
Everything here is float64 and explicit (no fused kernels): slow and obvious, the spec in code.
"""

from __future__ import annotations

import torch

NORMALIZE = (None, "vocab", "batch")


def standardised_reward(r: torch.Tensor, keep: torch.Tensor, normalize: str | None) -> torch.Tensor:
    """r^ of the TVD++ gradient (r: float64 [N, V] of 0/1, keep: bool [N])."""
    if normalize is None:
        return r
    if normalize == "vocab":
        mean = r.mean(-1, keepdim=True)
        std = r.std(-1, unbiased=False, keepdim=True)
    else:
        rows = r[keep]
        mean = rows.mean() if rows.numel() else r.new_zeros(())
        std = rows.std(unbiased=False) if rows.numel() else r.new_zeros(())
    safe = torch.where(std > 0, std, torch.ones_like(std))
    return torch.where(std > 0, (r - mean) / safe, torch.zeros_like(r))


class _Divergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, p, keep, kind: str, normalize):
        q = torch.softmax(z.double(), -1)
        pd = p.double()
        n = keep.sum().clamp_min(1).double()
        if kind == "kl":
            logq = torch.log_softmax(z.double(), -1)
            plogp = pd * (torch.log(pd.clamp_min(1e-300)) - logq)
            per = torch.where(pd > 0, plogp, torch.zeros_like(pd)).sum(-1)
        else:
            per = 0.5 * (pd - q).abs().sum(-1)
        ctx.save_for_backward(z, p, keep)
        ctx.kind, ctx.normalize = kind, normalize
        return (per * keep).sum() / n

    @staticmethod
    def backward(ctx, grad_out):
        z, p, keep = ctx.saved_tensors
        q = torch.softmax(z.double(), -1)
        pd = p.double()
        n = keep.sum().clamp_min(1).double()
        if ctx.kind == "kl":
            g = q * pd.sum(-1, keepdim=True) - pd
        else:
            r = (pd > q).double()
            rh = standardised_reward(r, keep, ctx.normalize if ctx.kind == "tvdpp" else None)
            g = -q * (rh - (q * rh).sum(-1, keepdim=True))
        g = g * keep[:, None] / n * grad_out.double()
        return g.to(z.dtype), None, None, None, None


def _flat(student_logits, teacher_probs, mask):
    from ..ops.losses import _check

    return _check(student_logits, teacher_probs, mask)


def tvdpp_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, *, mask: torch.Tensor | None = None,
               normalize: str | None = "vocab") -> torch.Tensor:
    """Reference of :func:`specdec_kernels.tvdpp_loss`."""
    z, p, keep = _flat(student_logits, teacher_probs, mask)
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of None, 'vocab', 'batch', got {normalize!r}")
    return _Divergence.apply(z, p, keep, "tvdpp", normalize).float()


def tvd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, *,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`specdec_kernels.tvd_loss`."""
    z, p, keep = _flat(student_logits, teacher_probs, mask)
    return _Divergence.apply(z, p, keep, "tv", None).float()


def kl_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, *,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`specdec_kernels.kl_loss`."""
    z, p, keep = _flat(student_logits, teacher_probs, mask)
    return _Divergence.apply(z, p, keep, "kl", None).float()
