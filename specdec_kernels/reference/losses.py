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
Everything here is float64 and explicit (no fused kernels): slow and obvious, the spec in code. The
losses return float32, or float64 when an input is float64. ``op_divergence_forward`` /
``op_divergence_backward`` at the bottom are the reference of the two kernels the public losses are
built from; the public losses run them for float64 inputs (in float64, on every backend), so that
``torch.autograd.gradcheck`` works on them.
"""

from __future__ import annotations

import torch

from ..contract import losses as contract


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


def divergence(student_logits: torch.Tensor, teacher_probs: torch.Tensor, keep: torch.Tensor, kind: str,
               normalize: str | None) -> torch.Tensor:
    """The loss of rows z [N, V], p [N, V], keep bool [N] (``contract.losses.loss_args``): float64 when
    either input is float64 (gradcheck runs on this), else float32."""
    out = _Divergence.apply(student_logits, teacher_probs, keep, kind, normalize)
    return out.to(contract.loss_dtype(student_logits, teacher_probs))


def op_divergence_forward(student_logits: torch.Tensor, teacher_probs: torch.Tensor,
                          kind: int) -> torch.Tensor:
    """Reference of the divergence_forward op: per-row stats [N, 4] (lse, value, a, c) of the loss
    ``kind`` (0: TV, 1: KL), computed in float64 (spec in ``contract/losses.py``). float32 like the
    kernels' stats, or float64 when an input is float64 (the losses' float64 path)."""
    z, p = student_logits.double(), teacher_probs.double()
    lse = torch.logsumexp(z, -1)
    logq = z - lse[:, None]
    q = torch.exp(logq)
    zero = torch.zeros_like(p)
    if kind == 0:
        win = p > q
        value = 0.5 * (p - q).abs().sum(-1)
        a = torch.where(win, q, zero).sum(-1)
        c = win.sum(-1).double()
    else:
        value = torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - logq), zero).sum(-1)
        a = p.sum(-1)
        c = torch.zeros_like(a)
    return torch.stack([lse, value, a, c], -1).to(contract.loss_dtype(student_logits, teacher_probs))


def op_divergence_backward(student_logits: torch.Tensor, teacher_probs: torch.Tensor, stats: torch.Tensor,
                           coef: torch.Tensor, kind: int) -> torch.Tensor:
    """Reference of the divergence_backward op: the gradient [N, V] in the student's dtype from the
    forward stats and a per-row coefficient: TV ``-coef q (1[p > q] - a)``, KL ``coef (q a - p)``,
    computed in float64."""
    z, p = student_logits.double(), teacher_probs.double()
    st, cf = stats.double(), coef.double()[:, None]
    q = torch.exp(z - st[:, :1])
    a = st[:, 2:3]
    g = -cf * q * ((p > q).double() - a) if kind == 0 else cf * (q * a - p)
    return torch.where(cf == 0, torch.zeros_like(g), g).to(student_logits.dtype)


def tvdpp_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, *, mask: torch.Tensor | None = None,
               normalize: str | None = "vocab") -> torch.Tensor:
    """Reference of :func:`specdec_kernels.tvdpp_loss`."""
    return divergence(*contract.loss_args(student_logits, teacher_probs, mask, "tvdpp", normalize), "tvdpp",
                      normalize)


def tvd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, *,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`specdec_kernels.tvd_loss`."""
    return divergence(*contract.loss_args(student_logits, teacher_probs, mask), "tv", None)


def kl_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, *,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Reference of :func:`specdec_kernels.kl_loss`."""
    return divergence(*contract.loss_args(student_logits, teacher_probs, mask), "kl", None)
