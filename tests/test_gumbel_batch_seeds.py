"""gumbel_topk / stochastic_beam_step, per-row randomness and batching: large batches (launch
configuration, the CUDA grid limit) against the cpu backend; determinism and the seed/offset
contract (same seed and offset give the same result, any change gives another, only in the rows
it touches; per-request seeds follow the request across batch positions; an int seed gives each
row its own stream)."""

from __future__ import annotations

import pytest
import torch
from gumbel_cases import (
    _varied_beam,
    _varied_topk,
    assert_beam_same,
    assert_topk_same,
    first_requests,
    make_beams,
    make_logits,
)
from helpers import to_device

import specdec_kernels as sk
import specdec_kernels.reference as ref
import specdec_kernels.testing as skt
from specdec_kernels import GUMBEL_OFFSET_STRIDE as STRIDE

TRITON_FAMILY = "gumbel"  # conftest: the triton params need specdec_kernels.triton.gumbel


# ----------------------------------------------------------------------------------------------
# Large batches against the cpu backend
# ----------------------------------------------------------------------------------------------


def _big_batch(R, *, seed):
    """Many short rows: (logits [R, 7] with masked tokens, beams [R, 2, 5] with dead ones, kwargs)."""
    x = make_logits((R, 7), seed=seed, masked=0.3)
    xb = make_logits((R, 2, 5), seed=seed + 1, masked=0.3)
    phi, G = make_beams(R, 2, seed=seed)
    live = torch.rand(R, 2, generator=torch.Generator().manual_seed(seed)) < 0.8
    T = torch.rand(R, generator=torch.Generator().manual_seed(seed + 2)) + 0.5
    kw = dict(temperature=T, seed=seed, offset=torch.arange(R) % 5 * STRIDE)
    return x, (xb, phi, G, live), kw


def _big_batch_expected(x, beams, kw):
    """The cpu backend is the oracle (the reference loop is slow for thousands of rows); it is itself
    checked against the reference on the first rows (an int seed gives row r stream r)."""
    xb, phi, G, live = beams
    with sk.use_backend("cpu"):
        top = sk.gumbel_topk(x, 3, **kw)
        beam = sk.stochastic_beam_step(xb, phi, G, 3, beam_mask=live, **kw)
    n = 40
    kn = first_requests(kw, x.shape[0], n)
    assert_topk_same(first_requests(top, x.shape[0], n), ref.gumbel_topk(x[:n], 3, **kn))
    assert_beam_same(first_requests(beam, x.shape[0], n),
                     ref.stochastic_beam_step(xb[:n], phi[:n], G[:n], 3, beam_mask=live[:n], **kn))
    return top, beam


def test_large_batch_matches_cpu(backend):
    # Launch configuration at a large batch just above a power of two (grid limits, rows packed per
    # program, tails), against the cpu backend.
    if backend.name in ("reference", "cpu"):
        pytest.skip("the cpu backend is the oracle here (checked against the reference on the first rows)")
    if "cpu" not in sk.backends("cpu"):
        pytest.skip("needs the compiled cpu backend as the oracle")
    x, beams, kw = _big_batch(8193, seed=21)
    top, beam = _big_batch_expected(x, beams, kw)
    d = backend.device
    assert_topk_same(sk.gumbel_topk(x.to(d), 3, **to_device(kw, d)), top)
    if backend.interpreted:
        return  # the interpreted beam step takes ~0.1 s per request
    xb, phi, G, live = to_device(beams, d)
    assert_beam_same(sk.stochastic_beam_step(xb, phi, G, 3, beam_mask=live, **to_device(kw, d)), beam)


@pytest.mark.cuda
def test_batch_beyond_grid_limit_cuda():
    # gridDim.y/z are capped at 65535: a kernel that puts rows there must launch per slice.
    if "cpu" not in sk.backends("cpu"):
        pytest.skip("needs the compiled cpu backend as the oracle")
    x, beams, kw = _big_batch(65535 + 70, seed=3)
    top, beam = _big_batch_expected(x, beams, kw)
    xb, phi, G, live = to_device(beams, "cuda")
    for name in sk.backends("cuda"):
        if name == "reference":
            continue
        with sk.use_backend(name):
            assert_topk_same(sk.gumbel_topk(x.cuda(), 3, **to_device(kw, "cuda")), top)
            assert_beam_same(sk.stochastic_beam_step(xb, phi, G, 3, beam_mask=live, **to_device(kw, "cuda")),
                             beam)


# ----------------------------------------------------------------------------------------------
# Determinism and the seed/offset contract
# ----------------------------------------------------------------------------------------------


def _call(op, inputs, d, **kw):
    if op == "topk":
        return sk.gumbel_topk(inputs.to(d), 5, **to_device(kw, d))
    x, phi, G = inputs
    return sk.stochastic_beam_step(x.to(d), phi.to(d), G.to(d), 5, **to_device(kw, d))


def _same(op, a, b):
    (assert_topk_same if op == "topk" else assert_beam_same)(a, b)


def _inputs(backend, op, B=None):
    """(inputs, B): 33 rows/requests, fewer (and 2 beams) for the beam step in the interpreter."""
    small = op == "beam" and backend.interpreted
    B = B or (4 if small else 33)
    return (_varied_topk(R=B) if op == "topk" else _varied_beam(B=B, W=1 if small else 3)), B


def _pick(op, x, idx):
    return x[idx] if op == "topk" else tuple(t[idx] for t in x)


@pytest.mark.parametrize("op", ["topk", "beam"])
def test_same_seed_offset_identical(backend, op):
    d, (x, B) = backend.device, _inputs(backend, op)
    _same(op, _call(op, x, d, seed=5, offset=6), _call(op, x, d, seed=5, offset=6))
    s = torch.arange(B) * 3 + 1
    _same(op, _call(op, x, d, seed=s, offset=6), _call(op, x, d, seed=s.clone(), offset=6))
    _same(op, _call(op, x, d, generator=torch.Generator().manual_seed(3)),
          _call(op, x, d, generator=torch.Generator().manual_seed(3)))
    torch.manual_seed(0)
    a = _call(op, x, d)
    torch.manual_seed(0)
    _same(op, a, _call(op, x, d))


@pytest.mark.parametrize("change", ["seed", "offset_stride", "seed_tensor", "offset_tensor_row"])
@pytest.mark.parametrize("op", ["topk", "beam"])
def test_different_randomness_differs(backend, op, change):
    d, (x, B) = backend.device, _inputs(backend, op)
    base = _call(op, x, d, seed=5, offset=0)
    if change == "seed":
        other = _call(op, x, d, seed=6, offset=0)
    elif change == "offset_stride":
        other = _call(op, x, d, seed=5, offset=STRIDE)
    elif change == "seed_tensor":
        other = _call(op, x, d, seed=torch.full((B,), 5), offset=0)
    else:  # only row 3's offset changes: only row 3 changes
        off = torch.zeros(B, dtype=torch.long)
        off[3] = STRIDE
        other = _call(op, x, d, seed=5, offset=off)
        keep = torch.arange(B) != 3
        for a, b in zip(other, base, strict=True):
            assert torch.equal(a.cpu()[keep], b.cpu()[keep])
        assert not torch.equal(other.tokens.cpu()[3], base.tokens.cpu()[3])
    assert not torch.equal(base.tokens.cpu(), other.tokens.cpu())


@pytest.mark.parametrize("op", ["topk", "beam"])
def test_seed_tensor_result_independent_of_batch_position(backend, op):
    # A request with its own seed draws the same numbers wherever it sits in the batch.
    d, (x, B) = backend.device, _inputs(backend, op, 8 if op == "topk" or not backend.interpreted else 4)
    seeds = torch.arange(B) * 101 + 7
    offs = torch.arange(B) * STRIDE
    perm = (torch.arange(B) * 3 + 1) % B  # a permutation (3 is prime to B): row 0 moves to row 3
    T = torch.rand(B, generator=torch.Generator().manual_seed(0)) + 0.5
    base = _call(op, x, d, seed=seeds, offset=offs, temperature=T)
    moved = _call(op, _pick(op, x, perm), d, seed=seeds[perm], offset=offs[perm], temperature=T[perm])
    alone = _call(op, _pick(op, x, slice(2, 3)), d, seed=seeds[2:3], offset=offs[2:3], temperature=T[2:3])
    skt.assert_same(moved, type(base)(*(b.cpu()[perm] for b in base)), rtol=0, atol=0)
    skt.assert_same(alone, type(base)(*(b.cpu()[2:3] for b in base)), rtol=0, atol=0)


@pytest.mark.parametrize("op", ["topk", "beam"])
def test_int_seed_gives_rows_distinct_streams(backend, op):
    # The same request in every row: an int seed gives row r stream r (rows differ); equal seeds in
    # a tensor give every row the same stream (rows identical).
    d, (one, _) = backend.device, _inputs(backend, op, 1)
    B = 4 if op == "beam" and backend.interpreted else 16
    x = _pick(op, one, torch.zeros(B, dtype=torch.long))
    rows = _call(op, x, d, seed=3).tokens.cpu()
    assert len({tuple(r) for r in rows.tolist()}) > 1
    same = _call(op, x, d, seed=torch.full((B,), 3)).tokens.cpu()
    assert len({tuple(r) for r in same.tolist()}) == 1
