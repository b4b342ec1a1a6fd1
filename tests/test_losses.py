"""Distillation losses (tvdpp_loss, tvd_loss, kl_loss): value and gradient against the float64
reference on every backend, the unnormalised gradient against autograd of the plain TV formula,
KL against autograd, the TVD++ gradient against the explicit standardised-reward formula, masks
and leading shapes, training a free student towards a fixed teacher, bad inputs."""

from __future__ import annotations

import pytest
import torch

import specdec_kernels as sk
import specdec_kernels.reference as ref

TRITON_FAMILY = "losses"  # conftest: the triton params need specdec_kernels.triton.losses


def make(N, V, *, seed, dtype=torch.float32, sharp=2.0):
    g = torch.Generator().manual_seed(seed)
    z = sharp * torch.randn(N, V, generator=g)
    p = torch.softmax(sharp * torch.randn(N, V, generator=g), -1)
    return z.to(dtype), p


def value_and_grad(fn, z, p, device, **kw):
    zz = z.detach().to(device).requires_grad_(True)
    loss = fn(zz, p.to(device), **kw)
    loss.backward()
    return loss.detach().cpu(), zz.grad.cpu()


CASES = [("tvdpp", {"normalize": "vocab"}), ("tvdpp", {"normalize": "batch"}), ("tvdpp", {"normalize": None}),
         ("tv", {}), ("kl", {})]
FNS = {"tvdpp": (sk.tvdpp_loss, ref.tvdpp_loss), "tv": (sk.tvd_loss, ref.tvd_loss),
       "kl": (sk.kl_loss, ref.kl_loss)}


@pytest.mark.parametrize("kind,kw", CASES, ids=[f"{k}-{kw.get('normalize', '')}" for k, kw in CASES])
@pytest.mark.parametrize("N,V", [(1, 1), (3, 7), (17, 111), (4, 32000)])
def test_matches_reference(backend, kind, kw, N, V):
    z, p = make(N, V, seed=N + V)
    mask = torch.rand(N, generator=torch.Generator().manual_seed(3)) < 0.7
    mask[0] = True
    fn, rfn = FNS[kind]
    want_v, want_g = value_and_grad(rfn, z, p, "cpu", mask=mask, **kw)
    got_v, got_g = value_and_grad(fn, z, p, backend.device, mask=mask.to(backend.device), **kw)
    assert got_v.dtype == torch.float32 and got_v.dim() == 0
    torch.testing.assert_close(got_v, want_v, rtol=1e-5, atol=1e-6)
    # A reward flip (p within float32 rounding of q) may change one element's gradient: compare
    # the bulk tightly and allow at most one outlier per row.
    diff = (got_g - want_g).abs() > 1e-6 + 1e-4 * want_g.abs()
    assert int(diff.sum()) <= N, (got_g, want_g)
    assert bool((got_g[~mask] == 0).all())


def test_half_dtypes(backend):
    z, p = make(6, 300, seed=4, dtype=torch.bfloat16)
    for fn, rfn in FNS.values():
        want_v, want_g = value_and_grad(rfn, z, p, "cpu")
        got_v, got_g = value_and_grad(fn, z, p.to(torch.float16), backend.device)
        assert got_g.dtype == torch.bfloat16
        torch.testing.assert_close(got_v, want_v, rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(got_g.float(), want_g.float(), rtol=5e-2, atol=1e-3)


def test_unnormalised_gradient_is_the_gradient_of_tv(backend):
    z, p = make(5, 40, seed=5)
    z64 = z.double().requires_grad_(True)
    tv = 0.5 * (p.double() - torch.softmax(z64, -1)).abs().sum(-1).mean()
    tv.backward()
    for fn in (sk.tvd_loss, lambda a, b: sk.tvdpp_loss(a, b, normalize=None)):
        v, g = value_and_grad(fn, z, p, backend.device)
        torch.testing.assert_close(v.double(), tv.detach(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(g.double(), z64.grad, rtol=1e-4, atol=1e-7)


def test_kl_gradient_is_autograd(backend):
    z, p = make(5, 40, seed=6)
    z64 = z.double().requires_grad_(True)
    kl = (p.double() * (torch.log(p.double()) - torch.log_softmax(z64, -1))).sum(-1).mean()
    kl.backward()
    v, g = value_and_grad(sk.kl_loss, z, p, backend.device)
    torch.testing.assert_close(v.double(), kl.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.double(), z64.grad, rtol=1e-4, atol=1e-7)


def test_reference_gradcheck():
    # The reference's backward is explicit; gradcheck it on the one case where it must be the true
    # gradient (KL) and check TV's against finite differences away from reward flips.
    from specdec_kernels.reference.losses import _Divergence

    z, p = make(3, 6, seed=7)
    z64 = z.double().requires_grad_(True)
    keep = torch.ones(3, dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda a: _Divergence.apply(a, p.double(), keep, "kl", None), (z64,))
    # TV is piecewise smooth: finite differences hold where no reward flips within eps.
    assert torch.autograd.gradcheck(lambda a: _Divergence.apply(a, p.double(), keep, "tv", None), (z64,),
                                    eps=1e-7, atol=1e-5)


def test_tvdpp_gradient_is_the_standardised_policy_gradient(backend):
    # Independent formula: -q (r^ - E_q r^) with r^ standardised explicitly, mean over rows.
    z, p = make(8, 50, seed=8)
    q = torch.softmax(z.double(), -1)
    r = (p.double() > q).double()
    for normalize in ("vocab", "batch"):
        if normalize == "vocab":
            rh = (r - r.mean(-1, keepdim=True)) / r.std(-1, unbiased=False, keepdim=True)
        else:
            rh = (r - r.mean()) / r.std(unbiased=False)
        want = -q * (rh - (q * rh).sum(-1, keepdim=True)) / 8
        _, g = value_and_grad(sk.tvdpp_loss, z, p, backend.device, normalize=normalize)
        torch.testing.assert_close(g.double(), want, rtol=1e-4, atol=1e-7)


def test_leading_shape_and_mask(backend):
    z, p = make(12, 30, seed=9)
    z3, p3 = z.reshape(3, 4, 30), p.reshape(3, 4, 30)
    mask = torch.tensor([[True, True, False, False], [True, False, True, True], [False, False, False, True]])
    v, g = value_and_grad(sk.tvdpp_loss, z3, p3, backend.device, mask=mask.to(backend.device))
    v2, g2 = value_and_grad(sk.tvdpp_loss, z[mask.reshape(-1)], p[mask.reshape(-1)], "cpu")
    torch.testing.assert_close(v, v2, rtol=1e-5, atol=1e-6)
    assert g.shape == (3, 4, 30) and bool((g[~mask] == 0).all())
    torch.testing.assert_close(g[mask], g2, rtol=1e-4, atol=1e-7)
    # all positions masked: value 0, gradient 0, nothing NaN
    v0, g0 = value_and_grad(sk.tvd_loss, z3, p3, backend.device, mask=torch.zeros(3, 4, dtype=torch.bool,
                                                                                    device=backend.device))
    assert v0.item() == 0.0 and bool((g0 == 0).all())


@pytest.mark.parametrize("normalize", ["vocab", "batch", None])
def test_training_halves_the_distance(normalize):
    # A free student (its logits are the parameters) trained with TVD++ towards a fixed teacher.
    torch.manual_seed(0)
    N, V = 16, 64
    p = torch.softmax(3 * torch.randn(N, V), -1)
    z = torch.zeros(N, V, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.05)
    start = float(sk.tvd_loss(z.detach(), p))
    for _ in range(300):
        opt.zero_grad()
        sk.tvdpp_loss(z, p, normalize=normalize).backward()
        opt.step()
    end = float(sk.tvd_loss(z.detach(), p))
    assert end < 0.5 * start, (start, end)


@pytest.mark.parametrize("call,match", [
    (lambda: sk.tvdpp_loss(torch.zeros(2, 3), torch.zeros(2, 4)), "teacher_probs must have the shape"),
    (lambda: sk.tvdpp_loss(torch.zeros(2, 3), torch.zeros(2, 3), normalize="rows"),
     "normalize must be one of"),
    (lambda: sk.kl_loss(torch.zeros(2, 3), torch.zeros(2, 3), mask=torch.ones(3, dtype=torch.bool)),
     "mask must have the leading shape"),
    (lambda: sk.kl_loss(torch.zeros(2, 3), torch.zeros(2, 3), mask=torch.ones(2)), "mask must be bool"),
    (lambda: sk.tvd_loss(torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 3)),
     "student_logits must be float32"),
    (lambda: sk.tvd_loss(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int64)),
     "teacher_probs must be float32"),
    (lambda: sk.tvd_loss(torch.zeros(2, 0), torch.zeros(2, 0)), "V >= 1"),
    (lambda: sk.tvd_loss([[0.0]], torch.zeros(1, 1)), "must be a torch.Tensor"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
