"""Distillation losses in float64: torch.autograd.gradcheck of the public losses (float64 runs the
plain-PyTorch reference on every backend), the float64 value against an explicit float64 formula and
against the float32 kernels, the TVD++ surrogate gradient in float64, and a negative control showing
that gradcheck catches a wrong backward."""

from __future__ import annotations

import pytest
import torch

import specdec_kernels as sk

TRITON_FAMILY = "losses"  # conftest: the triton params need specdec_kernels.triton.losses

LOSSES = {
    "tvdpp": lambda z, p, **kw: sk.tvdpp_loss(z, p, normalize=None, **kw),
    "tv": sk.tvd_loss,
    "kl": sk.kl_loss,
}


def make64(N: int, V: int, seed: int):
    """float64 logits and a strictly positive teacher with p and q = softmax(z) apart everywhere
    (|p - q| > 1e-3 (p + q)): gradcheck's finite differences never cross a reward flip of TV (where
    its gradient jumps), and float32 rounding never flips a reward either."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(1000):
        z = 2 * torch.randn(N, V, generator=g, dtype=torch.float64)
        p = torch.softmax(2 * torch.randn(N, V, generator=g, dtype=torch.float64), -1)
        q = torch.softmax(z, -1)
        if bool(((p - q).abs() > 1e-3 * (p + q)).all()):
            return z, p
    raise AssertionError("no well-separated draw")


def explicit(kind: str, z: torch.Tensor, p: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The loss value straight from its formula, in float64 (no library code)."""
    q = torch.softmax(z, -1)
    if kind == "kl":
        per = torch.where(p > 0, p * (torch.log(p.clamp_min(1e-300)) - torch.log_softmax(z, -1)), 0.0).sum(-1)
    else:
        per = 0.5 * (p - q).abs().sum(-1)
    keep = torch.ones(per.shape, dtype=torch.bool) if mask is None else mask
    return (per * keep).sum() / keep.sum().clamp_min(1)


MASKS = {"nomask": None, "mask": torch.tensor([True, False, True, True]),
         "allmasked": torch.zeros(4, dtype=torch.bool)}


@pytest.mark.parametrize("mask", MASKS, ids=list(MASKS))
@pytest.mark.parametrize("kind", LOSSES)
def test_gradcheck(backend, kind, mask):
    # float64 runs the reference whatever the backend: the result is the same on each of them.
    z, p = make64(4, 6, seed=1)
    m = MASKS[mask]
    dev = backend.device
    p, m = p.to(dev), (m.to(dev) if m is not None else None)
    fn = LOSSES[kind]
    zz = z.to(dev).detach().clone().requires_grad_(True)
    assert fn(zz, p, mask=m).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda a: fn(a, p, mask=m), (zz,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_leading_shape_and_float64_teacher_only():
    # [2, 3, V] logits; and float32 logits with a float64 teacher (value float64, gradient float32)
    z, p = make64(6, 5, seed=2)
    mask = torch.tensor([[True, True, False], [False, True, True]])
    z3, p3 = z.reshape(2, 3, 5).requires_grad_(True), p.reshape(2, 3, 5)
    for fn in LOSSES.values():
        assert torch.autograd.gradcheck(lambda a, fn=fn: fn(a, p3, mask=mask), (z3,), eps=1e-6, atol=1e-7)
    z32 = z.float().requires_grad_(True)
    loss = sk.tvd_loss(z32, p)
    loss.backward()
    assert loss.dtype == torch.float64 and z32.grad.dtype == torch.float32


@pytest.mark.parametrize("mask", ["nomask", "mask"])
@pytest.mark.parametrize("kind", LOSSES)
def test_float64_value_is_the_formula_and_matches_float32(backend, kind, mask):
    # Inputs representable in float32, so the float64 and float32 computations see the same numbers.
    z, p = make64(4, 50, seed=3)
    z, p = z.float().double(), p.float().double()
    m = MASKS[mask]
    dev = backend.device
    md = m.to(dev) if m is not None else None
    fn = LOSSES[kind]
    z64 = z.to(dev).detach().clone().requires_grad_(True)
    v64 = fn(z64, p.to(dev), mask=md)
    v64.backward()
    torch.testing.assert_close(v64.detach().cpu(), explicit(kind, z, p, m), rtol=1e-10, atol=1e-10)
    z32 = z.float().to(dev).requires_grad_(True)
    v32 = fn(z32, p.float().to(dev), mask=md)
    v32.backward()
    assert v32.dtype == torch.float32 and v64.dtype == torch.float64
    # float32 kernels against float64: equal up to float32 rounding
    torch.testing.assert_close(v32.detach().double().cpu(), v64.detach().cpu(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z32.grad.double().cpu(), z64.grad.cpu(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("normalize", ["vocab", "batch"])
def test_tvdpp_standardised_gradient_is_the_surrogates_gradient(normalize):
    # normalize="vocab"/"batch" is a surrogate gradient by design (not the value's): gradcheck does
    # not apply; its float64 gradient must be autograd's of -(1/n) sum E_q[r^] with r^ held fixed.
    z, p = make64(5, 8, seed=4)
    mask = torch.tensor([True, True, False, True, True])
    z64 = z.clone().requires_grad_(True)
    sk.tvdpp_loss(z64, p, mask=mask, normalize=normalize).backward()
    q = torch.softmax(z, -1)
    r = (p > q).double()
    if normalize == "vocab":
        rh = (r - r.mean(-1, keepdim=True)) / r.std(-1, unbiased=False, keepdim=True)
    else:
        rows = r[mask]
        rh = (r - rows.mean()) / rows.std(unbiased=False)
    za = z.clone().requires_grad_(True)
    surrogate = -((torch.softmax(za, -1) * rh).sum(-1) * mask).sum() / mask.sum()
    surrogate.backward()
    torch.testing.assert_close(z64.grad, za.grad, rtol=1e-12, atol=1e-14)


class _WrongKL(torch.autograd.Function):
    """KL(p || softmax(z)) with a deliberately wrong backward (the sign of the p term flipped)."""

    @staticmethod
    def forward(ctx, z, p):
        ctx.save_for_backward(z, p)
        return (p * (torch.log(p) - torch.log_softmax(z, -1))).sum(-1).mean()

    @staticmethod
    def backward(ctx, grad_out):
        z, p = ctx.saved_tensors
        q = torch.softmax(z, -1)
        return grad_out * (q + p) / z.shape[0], None


def test_gradcheck_catches_a_wrong_gradient():
    z, p = make64(3, 5, seed=5)
    z = z.requires_grad_(True)
    # the right formula passes, the wrong backward fails: gradcheck has teeth at these tolerances
    assert torch.autograd.gradcheck(lambda a: sk.kl_loss(a, p), (z,), eps=1e-6, atol=1e-7, rtol=1e-5)
    assert not torch.autograd.gradcheck(lambda a: _WrongKL.apply(a, p), (z,), eps=1e-6, atol=1e-7, rtol=1e-5,
                                        raise_exception=False)
    # the same wrong gradient in the library's place would be caught too: the values agree
    torch.testing.assert_close(_WrongKL.apply(z, p), sk.kl_loss(z, p), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64], ids=str)
def test_other_dtypes_are_refused_naming_the_argument(dtype):
    with pytest.raises(ValueError, match="student_logits must be float32, float16 or bfloat16"):
        sk.tvd_loss(torch.zeros(2, 3, dtype=dtype), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="teacher_probs must be float32, float16 or bfloat16"):
        sk.kl_loss(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=dtype))
