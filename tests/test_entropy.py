"""draft_entropy / adaedl_stop: the definition (golden values), equality with the float64 reference
on every backend within what torch's own float32 computation loses, masked tokens, per-row
temperatures, the stop rule, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import to_device

import specdec_kernels as sk
import specdec_kernels.reference as ref

TRITON_FAMILY = "entropy"  # conftest: the triton params need specdec_kernels.triton.entropy


def torch_f32_entropy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    s = x.float() / t[:, None]
    logp = torch.log_softmax(s, -1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def tolerance(x: torch.Tensor, t: torch.Tensor, want: torch.Tensor) -> float:
    """Twice what torch's float32 entropy loses against the float64 reference on these rows, or
    1e-5 (relative to max(1, H)), whichever is larger."""
    err = ((torch_f32_entropy(x, t).double() - want.double()).abs() / want.double().clamp_min(1.0)).max()
    return max(1e-5, 2 * float(err))


def make_logits(R, V, *, seed, dtype=torch.float32, masked=False, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(R, V, generator=g)
    if masked and V > 1:
        m = torch.rand(R, V, generator=g) < 0.3
        m[:, 0] = False  # every row keeps a finite logit
        x = x.masked_fill(m, float("-inf"))
    return x.to(dtype)


GRID = [(V, R) for V in (1, 7, 111, 32000) for R in (1, 3, 33) if not (V == 32000 and R == 33)]


@pytest.mark.parametrize("V,R", GRID, ids=[f"V{V}-R{R}" for V, R in GRID])
@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_matches_reference(backend, V, R, masked):
    x = make_logits(R, V, seed=V + R, masked=masked)
    t = torch.rand(R, generator=torch.Generator().manual_seed(1)) * 1.5 + 0.3
    want = ref.draft_entropy(x, temperature=t)
    got = sk.draft_entropy(*to_device((x,), backend.device), temperature=t.to(backend.device))
    assert got.dtype == torch.float32 and got.shape == (R,)
    tol = tolerance(x, t, want)
    assert torch.allclose(got.cpu().double(), want.double(), rtol=tol, atol=tol), (got, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_dtypes(backend, dtype):
    x = make_logits(5, 300, seed=3, dtype=dtype)
    want = ref.draft_entropy(x, temperature=0.7)
    got = sk.draft_entropy(x.to(backend.device), temperature=0.7)
    tol = tolerance(x.float(), torch.full((5,), 0.7), want)
    assert torch.allclose(got.cpu().double(), want.double(), rtol=tol, atol=tol)


def test_golden_values(backend):
    d = backend.device
    V = 50
    uniform = torch.zeros(2, V)
    assert torch.allclose(sk.draft_entropy(uniform.to(d)).cpu(), torch.full((2,), math.log(V)), rtol=1e-6)
    onehot = torch.full((1, V), float("-inf"))
    onehot[0, 7] = 0.0
    assert sk.draft_entropy(onehot.to(d)).cpu().item() == 0.0
    assert torch.equal(sk.draft_entropy(torch.randn(4, 1).to(d)).cpu(), torch.zeros(4))
    # Two tokens with logits 0 and log 3 at T = 1: p = (1/4, 3/4).
    two = torch.tensor([[0.0, math.log(3.0)]])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert abs(sk.draft_entropy(two.to(d)).item() - h) < 1e-6
    # Temperature: logits x at T equal logits x / T at 1; a huge T flattens to log V.
    x = make_logits(3, 40, seed=5)
    assert torch.allclose(sk.draft_entropy(x.to(d), temperature=2.5).cpu(),
                          sk.draft_entropy((x / 2.5).to(d)).cpu(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(sk.draft_entropy(x.to(d), temperature=1e6).cpu(), torch.full((3,), math.log(40)),
                          rtol=1e-4)


def test_leading_shape_and_per_row_temperature(backend):
    x = make_logits(6, 20, seed=6).reshape(2, 3, 20)
    t = torch.tensor([[0.5, 1.0, 2.0], [1.5, 0.8, 1.0]])
    got = sk.draft_entropy(x.to(backend.device), temperature=t.to(backend.device))
    assert got.shape == (2, 3)
    want = ref.draft_entropy(x.reshape(6, 20), temperature=t.reshape(6))
    assert torch.allclose(got.cpu().reshape(6), want, rtol=1e-5, atol=1e-6)


def test_empty_batch(backend):
    assert sk.draft_entropy(torch.zeros(0, 9).to(backend.device)).shape == (0,)


def test_adaedl_stop_rule(backend):
    x = make_logits(16, 64, seed=7, scale=2.0)
    h = ref.draft_entropy(x).double()
    for lam in (0.0, 0.3, 0.6):
        got = sk.adaedl_stop(x.to(backend.device), lam)
        assert torch.equal(got.cpu(), (1 - torch.sqrt(0.2 * h)) < lam)
    lam = torch.linspace(-0.5, 1.0, 16, dtype=torch.float64)
    got = sk.adaedl_stop(x.to(backend.device), lam.to(backend.device), gamma=0.5, temperature=1.3)
    h13 = ref.draft_entropy(x, temperature=1.3).double()
    assert torch.equal(got.cpu(), (1 - torch.sqrt(0.5 * h13)) < lam)
    assert torch.equal(ref.adaedl_stop(x, lam, gamma=0.5, temperature=1.3), got.cpu())
    # Peaked rows continue, flat rows stop.
    peaked_flat = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).to(backend.device)
    assert sk.adaedl_stop(peaked_flat, 0.6).tolist() == [False, True]  # bounds 0.98 and 0.53


@pytest.mark.parametrize("fn", [sk.draft_entropy, ref.draft_entropy], ids=["public", "reference"])
@pytest.mark.parametrize("logits,kw,match", [
    (torch.zeros(2, 3), {"temperature": 0.0}, "temperature must be > 0"),
    (torch.zeros(2, 3), {"temperature": -1.0}, "temperature must be > 0"),
    (torch.zeros(2, 3), {"temperature": float("inf")}, "temperature must be > 0"),
    (torch.zeros(2, 3), {"temperature": torch.tensor([1.0, 0.0])}, "temperature must be > 0"),
    (torch.zeros(2, 3), {"temperature": torch.tensor([1.0, 1.0, 1.0])}, "temperature tensor must have shape"),
    (torch.tensor([[0.0, float("nan")]]), {}, "NaN or \\+inf"),
    (torch.tensor([[0.0, float("inf")]]), {}, "NaN or \\+inf"),
    (torch.tensor([[float("-inf"), float("-inf")]]), {}, "every entry is -inf"),
    (torch.zeros(2, 3, dtype=torch.float64), {}, "float32, float16 or bfloat16"),
    (torch.zeros(2, 0), {}, "V >= 1"),
    ([[0.0]], {}, "must be a torch.Tensor"),
])
def test_bad_inputs(fn, logits, kw, match):
    with pytest.raises(ValueError, match=match):
        fn(logits, **kw)


@pytest.mark.parametrize("kw,match", [
    ({"threshold": torch.zeros(3)}, "threshold tensor must have shape"),
    ({"threshold": torch.zeros(2, dtype=torch.long)}, "threshold tensor must be a float tensor"),
    ({"threshold": "0.5"}, "threshold must be a float"),
    ({"threshold": 0.5, "gamma": 0.0}, "gamma must be a float > 0"),
    ({"threshold": 0.5, "gamma": True}, "gamma must be a float > 0"),
])
def test_adaedl_stop_bad_inputs(kw, match):
    with pytest.raises(ValueError, match=match):
        sk.adaedl_stop(torch.zeros(2, 4), **kw)


def test_raw_op_checks():
    if not sk._backend.cpp_status()[0]:
        pytest.skip("compiled extension not built")
    with pytest.raises(RuntimeError, match="temperature must have shape"):
        torch.ops.specdec.draft_entropy(torch.zeros(2, 3), torch.ones(3))
    with pytest.raises(RuntimeError, match="logits must be \\[R, V\\]"):
        torch.ops.specdec.draft_entropy(torch.zeros(3), torch.ones(3))
