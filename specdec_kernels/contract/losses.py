"""Contract of the drafter-distillation losses and their divergence kernels (docs/algorithms.md §7).

The public losses (tvdpp_loss, tvd_loss, kl_loss) are autograd Functions over two ops, with the
C++ schemas of csrc/registration.cpp (no ``check``: the kernels validate nothing beyond shapes):

    divergence_forward(student_logits [N, V], teacher_probs [N, V], kind int) -> stats [N, 4] float32
        per row: (lse, value, a, c). kind 0 (TV): value = 1/2 sum |p - q|, a = E_q[r] = sum_{p > q} q,
        c = #{p > q}, with the reward r = 1[p > q]. kind 1 (KL): value = sum_{p > 0} p (log p - log q),
        a = sum p, c = 0. q = exp(z - lse).
    divergence_backward(student_logits, teacher_probs, stats, coef [N] float32, kind) -> grad [N, V]
        in the student's dtype: kind 0: -coef q (r - a); kind 1: coef (q a - p). A row with coef 0
        gets a zero gradient.

The kernels take float32/float16/bfloat16 (arithmetic in float32). The losses also take float64
(e.g. for gradcheck): float64 runs the ops' plain-PyTorch references in float64 on every backend
(their stats and row coefficients are then float64 too).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ._common import require_device, require_tensor

#: The divergence kernels' ``kind`` of each loss.
DIVERGENCE_KIND = {"tv": 0, "tvdpp": 0, "kl": 1}

#: The reward standardisations of :func:`specdec_kernels.tvdpp_loss`.
NORMALIZE = (None, "vocab", "batch")

_LOSS_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class DivergenceForwardArgs(NamedTuple):
    """Canonical arguments of divergence_forward."""

    student_logits: torch.Tensor
    teacher_probs: torch.Tensor
    kind: int


class DivergenceBackwardArgs(NamedTuple):
    """Canonical arguments of divergence_backward."""

    student_logits: torch.Tensor
    teacher_probs: torch.Tensor
    stats: torch.Tensor
    coef: torch.Tensor
    kind: int


class LossArgs(NamedTuple):
    """A loss's inputs, checked and flattened: logits and teacher [N, V], keep bool [N]."""

    student_logits: torch.Tensor
    teacher_probs: torch.Tensor
    keep: torch.Tensor


def _require_loss_float(t: torch.Tensor, name: str) -> None:
    if t.dtype not in _LOSS_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16 (or float64, which runs the "
                         f"reference), got {t.dtype}")


def check_normalize(normalize) -> None:
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of None, 'vocab', 'batch', got {normalize!r}")


def loss_args(student_logits, teacher_probs, mask, kind: str = "tv", normalize=None) -> LossArgs:
    """Check shapes, dtypes and devices and flatten to rows: (z [N, V], p [N, V], keep bool [N])."""
    if kind == "tvdpp":
        check_normalize(normalize)
    require_tensor(student_logits, "student_logits")
    require_tensor(teacher_probs, "teacher_probs")
    _require_loss_float(student_logits, "student_logits")
    _require_loss_float(teacher_probs, "teacher_probs")
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
    return LossArgs(student_logits.reshape(N, V), teacher_probs.reshape(N, V), keep)


def wants_float64(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> bool:
    """float64 inputs run the reference in float64 (the kernels are float32-only)."""
    return student_logits.dtype == torch.float64 or teacher_probs.dtype == torch.float64


def loss_dtype(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.dtype:
    """The dtype of a loss value: float64 when either input is float64, else float32."""
    return torch.float64 if wants_float64(student_logits, teacher_probs) else torch.float32


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def divergence_forward_args(student_logits, teacher_probs, kind: str) -> DivergenceForwardArgs:
    """Rows with a unit last stride (every backend reads them as rows of ``stride(0)``)."""
    return DivergenceForwardArgs(_unit_last_stride(student_logits), _unit_last_stride(teacher_probs),
                                 DIVERGENCE_KIND[kind])


def divergence_forward_fake(student_logits, teacher_probs, kind):
    return student_logits.new_empty((student_logits.shape[0], 4), dtype=torch.float32)


def divergence_backward_fake(student_logits, teacher_probs, stats, coef, kind):
    return student_logits.new_empty(student_logits.shape)
