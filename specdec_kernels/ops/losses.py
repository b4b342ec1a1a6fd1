"""Drafter-distillation losses (docs/algorithms.md §7): TVD++, TVD and forward KL with fused kernels.

Each loss is the mean over the unmasked positions of a per-position divergence between the
student q = softmax(student_logits) and the teacher probabilities p. The forward pass is one fused
kernel per row that leaves 4 floats per row (log-sum-exp, value, and the statistic the gradient
needs); the backward pass recomputes q from the logits and writes the gradient directly, so no
[N, V] float32 temporary (softmax, log-softmax, |p - q|) is ever kept: autograd of the plain
PyTorch formula keeps several. The spec is ``specdec_kernels/reference/losses.py``.

The TVD++ gradient -q_j (r^_j - E_q[r^]) with r^ = (r - mean) / std equals -(1/std) q_j (r_j - E_q[r])
(the mean cancels), so standardising the reward only rescales each row's TV gradient by 1/std;
for a 0/1 reward std = sqrt(mu (1 - mu)) with mu the reward's mean (per row over V, or over the
batch). That is what the kernels use.
"""

from __future__ import annotations

import math

import torch

from .. import _backend
from ..contract._common import require_device, require_float, require_tensor

_KIND = {"tv": 0, "tvdpp": 0, "kl": 1}


def _check(student_logits, teacher_probs, mask):
    require_tensor(student_logits, "student_logits")
    require_tensor(teacher_probs, "teacher_probs")
    require_float(student_logits, "student_logits")
    require_float(teacher_probs, "teacher_probs")
    if student_logits.dim() < 1 or student_logits.shape[-1] < 1:
        raise ValueError(f"student_logits must be [..., V] with V >= 1, got {list(student_logits.shape)}")
    if teacher_probs.shape != student_logits.shape:
        raise ValueError(f"teacher_probs must have the shape of student_logits {list(student_logits.shape)}, "
                         f"got {list(teacher_probs.shape)}")
    require_device(teacher_probs, student_logits, "teacher_probs", "student_logits")
    lead = tuple(student_logits.shape[:-1])
    V = student_logits.shape[-1]
    N = math.prod(lead)
    if mask is None:
        keep = torch.ones(N, dtype=torch.bool, device=student_logits.device)
    else:
        require_tensor(mask, "mask")
        if tuple(mask.shape) != lead:
            raise ValueError(
                f"mask must have the leading shape {list(lead)} of student_logits, got {list(mask.shape)}")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool (True = the position counts), got {mask.dtype}")
        require_device(mask, student_logits, "mask", "student_logits")
        keep = mask.reshape(N)
    return student_logits.reshape(N, V), teacher_probs.reshape(N, V), keep


def _row_coef(stats: torch.Tensor, keep: torch.Tensor, V: int, kind: str, normalize) -> torch.Tensor:
    """Per-row gradient coefficient: keep / n, divided by the reward's std for TVD++."""
    n = keep.sum().clamp_min(1).float()
    coef = keep.float() / n
    if kind == "tvdpp" and normalize is not None:
        cnt = stats[:, 3].double()
        if normalize == "vocab":
            mu = cnt / V
        else:
            mu = (cnt * keep).sum() / (keep.sum().clamp_min(1) * V)
        std = torch.sqrt(mu * (1 - mu))
        coef = torch.where(std > 0, coef.double() / torch.where(std > 0, std, torch.ones_like(std)),
                           torch.zeros_like(std)).float()
    return coef.contiguous()


def _kernels(device: torch.device):
    backend = _backend.select("divergence", device)
    if backend == "cpu":
        return torch.ops.specdec.divergence_forward, torch.ops.specdec.divergence_backward
    if backend in ("triton", "cuda"):  # the losses have Triton kernels only; CUDA tensors run them
        from ..triton import losses as tri

        return tri.divergence_forward, tri.divergence_backward
    return None


class _FusedDivergence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, p, keep, kind: str, normalize, fwd, bwd):
        z = z if z.stride(-1) == 1 else z.contiguous()
        p = p if p.stride(-1) == 1 else p.contiguous()
        stats = fwd(z.detach(), p.detach(), _KIND[kind])
        value = (stats[:, 1] * keep).sum() / keep.sum().clamp_min(1)
        ctx.save_for_backward(z, p, stats, keep)
        ctx.kind, ctx.normalize, ctx.bwd = kind, normalize, bwd
        return value

    @staticmethod
    def backward(ctx, grad_out):
        z, p, stats, keep = ctx.saved_tensors
        coef = _row_coef(stats, keep, z.shape[-1], ctx.kind, ctx.normalize) * grad_out.float()
        grad = ctx.bwd(z.detach(), p.detach(), stats, coef.contiguous(), _KIND[ctx.kind])
        return grad, None, None, None, None, None, None


def _loss(kind: str, student_logits, teacher_probs, mask, normalize) -> torch.Tensor:
    if kind == "tvdpp" and normalize not in (None, "vocab", "batch"):
        raise ValueError(f"normalize must be one of None, 'vocab', 'batch', got {normalize!r}")
    z, p, keep = _check(student_logits, teacher_probs, mask)
    kernels = _kernels(z.device)
    if kernels is None:
        from ..reference import losses as ref

        fn = {"tvdpp": ref.tvdpp_loss, "tv": ref.tvd_loss, "kl": ref.kl_loss}[kind]
        kw = {"normalize": normalize} if kind == "tvdpp" else {}
        return fn(student_logits, teacher_probs, mask=mask, **kw)
    return _FusedDivergence.apply(z, p, keep, kind, normalize, *kernels)


def tvdpp_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, *, mask: torch.Tensor | None = None,
               normalize: str | None = "vocab") -> torch.Tensor:
    """TVD++ distillation loss: the total-variation distance, with a variance-reduced gradient.

    The value is TV(p, q) = 1/2 sum_x |p(x) - q(x)| averaged over the unmasked positions; the
    gradient is the policy gradient -q(x) (r^(x) - E_q[r^]) d log q(x) with the reward
    r = 1[p > q] standardised per position over the vocabulary (``normalize="vocab"``), over the
    batch (``"batch"``), or not at all (``None``: then it is exactly the gradient of TV).

    Args:
        student_logits: Shape: (..., V), float32/float16/bfloat16; the gradient has its dtype.
        teacher_probs: the teacher's probabilities, same shape, any of those dtypes (no gradient).
        mask: bool of the leading shape; False positions are ignored (padding, prompt tokens).
        normalize: None, "vocab" (default) or "batch". On the miniature lab the two trained
            equally good drafters (docs/miniature_lab.md); "vocab" needs no cross-row statistics.

    Returns:
        A float32 scalar with autograd.

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
    """Total-variation distance with its exact gradient (``tvdpp_loss(normalize=None)``)."""
    return _loss("tv", student_logits, teacher_probs, mask, None)


def kl_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, *,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Forward KL(p || q) = sum_x p (log p - log q), averaged over the unmasked positions (the
    usual distillation loss), with fused forward and backward kernels."""
    return _loss("kl", student_logits, teacher_probs, mask, None)
