"""Distillation losses (docs/algorithms.md §7) in Triton: fused forward and backward kernels.

Forward, one program per ROWS rows: an online log-sum-exp pass over the student row, then one pass
computing q = exp(z - lse) against the teacher row; 4 float32 per row come out (lse, value, a, c;
see csrc/cpu/losses.cpp). Backward, grid (rows, vocabulary tiles): each tile recomputes q from the
logits and the saved lse and writes its slice of the gradient, fully parallel. Bytes: forward reads
the logits twice (the second read mostly from L2) and the teacher once; backward reads both once
and writes the gradient once. No [N, V] temporary.
"""

import torch
import triton
import triton.language as tl

from .._backend import triton_interpret


@triton.jit
def _divergence_fwd_kernel(z_ptr, s_z, p_ptr, s_p, st_ptr, N, V, KIND: tl.constexpr,
                           ROWS: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    rm = r < N
    m = tl.full((ROWS,), float("-inf"), tl.float32)
    s = tl.zeros((ROWS,), tl.float32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        msk = rm[:, None] & (offs < V)[None, :]
        z = tl.load(z_ptr + r[:, None] * s_z + offs[None, :], mask=msk, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=1))
        m_safe = tl.where(m_new > float("-inf"), m_new, 0.0)
        s = s * tl.where(m > float("-inf"), tl.exp(m - m_safe), 0.0) + tl.sum(
            tl.where(msk, tl.exp(z - m_safe[:, None]), 0.0), axis=1)
        m = m_new
    lse = tl.where(rm, m + tl.log(tl.where(s > 0.0, s, 1.0)), 0.0)
    value = tl.zeros((ROWS,), tl.float32)
    a = tl.zeros((ROWS,), tl.float32)
    c = tl.zeros((ROWS,), tl.float32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        msk = rm[:, None] & (offs < V)[None, :]
        z = tl.load(z_ptr + r[:, None] * s_z + offs[None, :], mask=msk, other=0.0).to(tl.float32)
        p = tl.load(p_ptr + r[:, None] * s_p + offs[None, :], mask=msk, other=0.0).to(tl.float32)
        zl = z - lse[:, None]
        if KIND == 0:
            q = tl.where(msk, tl.exp(zl), 0.0)
            win = p > q
            value += tl.sum(tl.abs(p - q), axis=1)
            a += tl.sum(tl.where(win, q, 0.0), axis=1)
            c += tl.sum(win.to(tl.float32), axis=1)
        else:
            pos = p > 0.0
            value += tl.sum(tl.where(pos, p * (tl.log(tl.where(pos, p, 1.0)) - zl), 0.0), axis=1)
            a += tl.sum(p, axis=1)
    if KIND == 0:
        value = 0.5 * value
    base = st_ptr + r * 4
    tl.store(base, lse, mask=rm)
    tl.store(base + 1, value, mask=rm)
    tl.store(base + 2, a, mask=rm)
    tl.store(base + 3, c, mask=rm)


@triton.jit
def _divergence_bwd_kernel(z_ptr, s_z, p_ptr, s_p, st_ptr, coef_ptr, g_ptr, N, V, KIND: tl.constexpr,
                           BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    msk = offs < V
    lse = tl.load(st_ptr + r * 4)
    a = tl.load(st_ptr + r * 4 + 2)
    c = tl.load(coef_ptr + r)
    z = tl.load(z_ptr + r * s_z + offs, mask=msk, other=0.0).to(tl.float32)
    p = tl.load(p_ptr + r * s_p + offs, mask=msk, other=0.0).to(tl.float32)
    q = tl.exp(z - lse)
    if KIND == 0:
        g = -c * q * ((p > q).to(tl.float32) - a)
    else:
        g = c * (q * a - p)
    g = tl.where(c == 0.0, 0.0, g)
    tl.store(g_ptr + r * V + offs, g.to(g_ptr.dtype.element_ty), mask=msk)


def _block(V: int) -> tuple[int, int]:
    if triton_interpret():
        return max(16, min(triton.next_power_of_2(V), 32768)), 4
    block = max(16, min(4096, triton.next_power_of_2(V)))
    return block, (8 if block >= 4096 else 4)


def divergence_forward(student_logits: torch.Tensor, teacher_probs: torch.Tensor, kind: int) -> torch.Tensor:
    """The divergence_forward op (canonical arguments: ``contract.losses.DivergenceForwardArgs``):
    per-row stats [N, 4] float32 (lse, value, a, c) of the loss ``kind`` (0: TV, 1: KL)."""
    N, V = student_logits.shape
    stats = torch.empty((N, 4), dtype=torch.float32, device=student_logits.device)
    if N == 0:
        return stats
    BLOCK, warps = _block(V)
    rows = min(triton.next_power_of_2(N), max(1, 2**17 // BLOCK)) if triton_interpret() else 1
    _divergence_fwd_kernel[(triton.cdiv(N, rows),)](
        student_logits, student_logits.stride(0), teacher_probs, teacher_probs.stride(0), stats, N, V,
        KIND=kind, ROWS=rows, BLOCK=BLOCK, num_warps=warps)
    return stats


def divergence_backward(student_logits: torch.Tensor, teacher_probs: torch.Tensor, stats: torch.Tensor,
                        coef: torch.Tensor, kind: int) -> torch.Tensor:
    """The divergence_backward op (``contract.losses.DivergenceBackwardArgs``): the gradient [N, V]
    (student dtype) from the forward stats and a per-row coefficient."""
    N, V = student_logits.shape
    grad = torch.empty((N, V), dtype=student_logits.dtype, device=student_logits.device)
    if N == 0:
        return grad
    BLOCK, warps = _block(V)
    _divergence_bwd_kernel[(N, triton.cdiv(V, BLOCK))](
        student_logits, student_logits.stride(0), teacher_probs, teacher_probs.stride(0), stats, coef, grad,
        N, V, KIND=kind, BLOCK=BLOCK, num_warps=warps)
    return grad


_SIG = {"z_ptr": "*bf16", "s_z": "i64", "p_ptr": "*fp32", "s_p": "i64", "st_ptr": "*fp32", "N": "i32",
        "V": "i32"}
COMPILE_CHECKS = [
    (_divergence_fwd_kernel, _SIG, {"KIND": 0, "ROWS": 1, "BLOCK": 4096}),
    (_divergence_fwd_kernel, dict(_SIG, z_ptr="*fp32"), {"KIND": 1, "ROWS": 1, "BLOCK": 4096}),
    (_divergence_bwd_kernel, dict(_SIG, coef_ptr="*fp32", g_ptr="*bf16"), {"KIND": 0, "BLOCK": 4096}),
    (_divergence_bwd_kernel, dict(_SIG, z_ptr="*fp32", coef_ptr="*fp32", g_ptr="*fp32"),
     {"KIND": 1, "BLOCK": 4096}),
]
