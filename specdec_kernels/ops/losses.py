"""Drafter-distillation losses (docs/algorithms.md §7): TVD++, TVD and forward KL with fused kernels.

Each loss is the mean over the unmasked positions of a per-position divergence between the
student q = softmax(student_logits) and the teacher probabilities p. The forward pass is one fused
kernel per row that leaves 4 floats per row (log-sum-exp, value, and the statistic the gradient
needs); the backward pass recomputes q from the logits and writes the gradient directly, so no
[N, V] float32 temporary (softmax, log-softmax, |p - q|) is ever kept: autograd of the plain
PyTorch formula keeps several. The spec is ``specdec_kernels/reference/losses.py``, the kernels'
contract ``specdec_kernels/contract/losses.py``. float64 inputs run the kernels' plain-PyTorch
references (``op_divergence_forward`` / ``op_divergence_backward``) in float64 on every backend (the
compiled and Triton kernels are float32-only), so that ``torch.autograd.gradcheck`` applies.

The TVD++ gradient -q_j (r^_j - E_q[r^]) with r^ = (r - mean) / std equals -(1/std) q_j (r_j - E_q[r])
(the mean cancels), so standardising the reward only rescales each row's TV gradient by 1/std;
for a 0/1 reward std = sqrt(mu (1 - mu)) with mu the reward's mean (per row over V, or over the
batch). That is what the kernels use.
"""

from __future__ import annotations

import torch

from ..contract import losses as contract
from . import _dispatch
from ._dispatch import Op

# No C++ CUDA kernels: Triton serves CUDA tensors (on the "cuda" backend too).
_dispatch.register(Op("divergence_forward", fake=contract.divergence_forward_fake,
                      reference="reference.losses:op_divergence_forward",
                      triton="triton.losses:divergence_forward",
                      cuda=None, has_check=False, select_as="divergence", device_arg=0))
_dispatch.register(Op("divergence_backward", fake=contract.divergence_backward_fake,
                      reference="reference.losses:op_divergence_backward",
                      triton="triton.losses:divergence_backward",
                      cuda=None, has_check=False, select_as="divergence", device_arg=0))


def _row_coef(stats: torch.Tensor, keep: torch.Tensor, V: int, kind: str, normalize) -> torch.Tensor:
    """Per-row gradient coefficient: keep / n, divided by the reward's std for TVD++ (in the stats'
    dtype: float32, float64 for float64 inputs)."""
    f = stats.dtype
    n = keep.sum().clamp_min(1).to(f)
    coef = keep.to(f) / n
    if kind == "tvdpp" and normalize is not None:
        cnt = stats[:, 3].double()
        if normalize == "vocab":
            mu = cnt / V
        else:
            mu = (cnt * keep).sum() / (keep.sum().clamp_min(1) * V)
        std = torch.sqrt(mu * (1 - mu))
        coef = torch.where(std > 0, coef.double() / torch.where(std > 0, std, torch.ones_like(std)),
                           torch.zeros_like(std)).to(f)
    return coef.contiguous()


def _divergence(name: str, args: tuple, float64: bool) -> torch.Tensor:
    """Run a divergence kernel; float64 inputs run its reference in float64, whatever the backend
    (the compiled and Triton kernels are float32-only)."""
    return _dispatch.call(name, args, backend="reference" if float64 else None)


class _FusedDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, p, keep, kind: str, normalize):
        args = contract.divergence_forward_args(z.detach(), p.detach(), kind)
        float64 = contract.wants_float64(z, p)
        stats = _divergence("divergence_forward", args, float64)
        value = (stats[:, 1] * keep).sum() / keep.sum().clamp_min(1)
        ctx.save_for_backward(args.student_logits, args.teacher_probs, stats, keep)
        ctx.kind, ctx.normalize, ctx.float64 = kind, normalize, float64
        return value

    @staticmethod
    def backward(ctx, grad_out):
        z, p, stats, keep = ctx.saved_tensors
        coef = _row_coef(stats, keep, z.shape[-1], ctx.kind, ctx.normalize) * grad_out.to(stats.dtype)
        kind = contract.DIVERGENCE_KIND[ctx.kind]
        args = contract.DivergenceBackwardArgs(z, p, stats, coef.contiguous(), kind)
        return _divergence("divergence_backward", args, ctx.float64), None, None, None, None


def _loss(kind: str, student_logits, teacher_probs, mask, normalize) -> torch.Tensor:
    return _FusedDivergence.apply(*contract.loss_args(student_logits, teacher_probs, mask, kind, normalize),
                                  kind, normalize)


def tvdpp_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, *, mask: torch.Tensor | None = None,
               normalize: str | None = "vocab") -> torch.Tensor:
    """TVD++ distillation loss: the total-variation distance, with a variance-reduced gradient.

    The value is TV(p, q) = 1/2 sum_x |p(x) - q(x)| averaged over the unmasked positions; the
    gradient is the policy gradient -q(x) (r^(x) - E_q[r^]) d log q(x) with the reward
    r = 1[p > q] standardised per position over the vocabulary (``normalize="vocab"``), over the
    batch (``"batch"``), or not at all (``None``: then it is exactly the gradient of TV).

    Args:
        student_logits: Shape: (..., V), float32/float16/bfloat16 (arithmetic in float32), or
            float64; the gradient has its dtype. float64 (e.g. for gradcheck) runs the
            plain-PyTorch reference (``specdec_kernels/reference/losses.py``) in float64, on every
            backend: the fused kernels are float32-only.
        teacher_probs: the teacher's probabilities, same shape, any of those dtypes (no gradient).
        mask: bool of the leading shape; False positions are ignored (padding, prompt tokens).
        normalize: None, "vocab" (default) or "batch". On the miniature lab the two trained
            equally good drafters (docs/miniature_lab.md); "vocab" needs no cross-row statistics.

    Returns:
        A float32 scalar with autograd; float64 when ``student_logits`` or ``teacher_probs`` is float64.

    Example:
        >>> import torch, specdec_kernels as sk
        >>> z = torch.zeros(2, 4, requires_grad=True)
        >>> p = torch.tensor([[1., 0., 0., 0.], [.25, .25, .25, .25]])
        >>> loss = sk.tvdpp_loss(z, p, normalize=None); loss.backward()
        >>> round(loss.item(), 4)                     # (0.75 + 0) / 2
        0.375
    """
    return _loss("tvdpp", student_logits, teacher_probs, mask, normalize)


def tvd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, *,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Total-variation distance with its exact gradient (``tvdpp_loss(normalize=None)``).

    Arguments, dtypes and result as :func:`tvdpp_loss`: float64 (e.g. for gradcheck) runs the
    plain-PyTorch reference."""
    return _loss("tv", student_logits, teacher_probs, mask, None)


def kl_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, *,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Forward KL(p || q) = sum_x p (log p - log q), averaged over the unmasked positions (the
    usual distillation loss), with fused forward and backward kernels.

    Arguments, dtypes and result as :func:`tvdpp_loss`: float64 (e.g. for gradcheck) runs the
    plain-PyTorch reference."""
    return _loss("kl", student_logits, teacher_probs, mask, None)
