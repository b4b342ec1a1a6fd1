"""gumbel_topk: equality with the reference on every backend (a grid of V, R, k and variants:
dtypes, temperatures, seed and offset forms, -inf masking, strided logits), all-masked rows and
padding, the empty batch, golden cases."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from gumbel_cases import (
    NINF,
    _rng_kw,
    _strided,
    assert_topk_same,
    check_topk_structure,
    make_logits,
    one_thread,
)
from helpers import to_device, with_generator

import specdec_kernels as sk
import specdec_kernels.reference as ref

TRITON_FAMILY = "gumbel"  # conftest: the triton params need specdec_kernels.triton.gumbel


# ----------------------------------------------------------------------------------------------
# Equality with the reference: gumbel_topk
# ----------------------------------------------------------------------------------------------

# V = 32000 only with small R: the reference is slow there (and the Triton interpreter skips it).
TOPK_GRID = sorted({(V, R, min(k, V)) for V in (1, 7, 111, 32000) for R in (1, 3, 33)
                    for k in (1, 2, 5, V) if not (V == 32000 and (R == 33 or k == V))})

TOPK_VARIANTS = [
    # name, V, R, k, options
    ("fp16", 111, 33, 5, dict(dtype=torch.float16)),
    ("bf16", 111, 33, 5, dict(dtype=torch.bfloat16)),
    ("temperature_float", 111, 33, 5, dict(temperature=0.7)),
    ("temperature_hot", 111, 33, 5, dict(temperature=2.5)),
    ("temperature_row", 111, 33, 5, dict(temperature="row")),
    ("temperature_0d", 111, 33, 5, dict(temperature="0d")),
    ("seed_tensor", 111, 33, 5, dict(seed="tensor")),
    ("seed_0d_tensor", 111, 33, 5, dict(seed="0d")),
    ("offset_int", 111, 33, 5, dict(offset=7)),
    ("offset_tensor", 111, 33, 5, dict(offset="tensor")),
    ("offset_0d_tensor", 111, 33, 5, dict(offset="0d")),
    ("seed_and_offset_tensor_row_temperature", 111, 33, 5,
     dict(seed="tensor", offset="tensor", temperature="row")),
    ("big_seed_offset", 111, 33, 5, dict(seed=2**63 - 1, offset=2**40 + 6)),
    ("generator", 111, 33, 5, dict(seed="generator")),
    ("masked", 111, 33, 5, dict(masked=0.5)),
    ("masked_fp16", 111, 33, 5, dict(masked=0.5, dtype=torch.float16)),
    ("few_finite", 7, 33, 5, dict(few=(0, 6))),
    ("few_finite_kV", 7, 33, 7, dict(few=(0, 6), temperature="row")),
    ("few_finite_V111", 111, 33, 5, dict(few=(0, 4), seed="tensor")),
    ("all_masked_rows", 7, 3, 2, dict(few=(0, 0))),
    ("strided", 111, 33, 5, dict(strided=True)),
    ("bf16_seed_tensor_V32000", 32000, 3, 5, dict(dtype=torch.bfloat16, seed="tensor", temperature="row")),
    ("masked_V32000", 32000, 2, 5, dict(masked=0.9, offset="tensor")),
]
TOPK_VARIANTS_BY_NAME = {v[0]: v[1:] for v in TOPK_VARIANTS}


@functools.cache
def _topk_case(V, R, k, variant=None):
    """(logits, kwargs, reference result): the reference runs once per case, whatever the backend."""
    opts = dict(TOPK_VARIANTS_BY_NAME[variant][3]) if variant else {}
    case_seed = V * 10_000 + R * 100 + k
    logits = make_logits((R, V), seed=case_seed, dtype=opts.get("dtype", torch.float32),
                         masked=opts.get("masked", 0.0), few=opts.get("few"))
    if opts.get("strided"):
        logits = _strided(logits)
    kw = _rng_kw(opts, R, case_seed)
    with one_thread():
        expected = ref.gumbel_topk(logits, k, **with_generator(kw))
    check_topk_structure(expected, logits, k, kw["temperature"])
    return logits, kw, expected


def _run_topk_case(backend, V, R, k, variant=None):
    if backend.name == "reference" and V >= 32000:
        pytest.skip("the expected result is the reference itself (dispatch is covered at smaller V)")
    if backend.interpreted and k >= 100 and R != 3:
        pytest.skip("Triton interpreter: large k is slow (R = 3 covers it)")
    logits, kw, expected = _topk_case(V, R, k, variant)
    d = backend.device
    res = sk.gumbel_topk(logits.to(d), k, **to_device(with_generator(kw), d))
    assert res.tokens.device.type == d.type
    assert_topk_same(res, expected)


@pytest.mark.parametrize("V,R,k", TOPK_GRID, ids=[f"V{V}-R{R}-k{k}" for V, R, k in TOPK_GRID])
def test_gumbel_topk_matches_reference(backend, V, R, k):
    _run_topk_case(backend, V, R, k)


@pytest.mark.parametrize("variant", [v[0] for v in TOPK_VARIANTS])
def test_gumbel_topk_matches_reference_variants(backend, variant):
    V, R, k, _ = TOPK_VARIANTS_BY_NAME[variant]
    _run_topk_case(backend, V, R, k, variant)


def test_gumbel_topk_all_masked_row_and_padding(backend):
    d = backend.device
    x = torch.tensor([[NINF] * 4, [0.0, NINF, 1.0, NINF], [0.5, 0.25, 0.0, -0.25]])
    res = sk.gumbel_topk(x.to(d), 3, seed=4)
    check_topk_structure(res, x, 3)
    assert res.tokens[0].tolist() == [-1, -1, -1]
    assert res.tokens[1, 2].item() == -1 and sorted(res.tokens[1, :2].tolist()) == [0, 2]
    assert bool((res.tokens[2] >= 0).all())
    assert_topk_same(res, ref.gumbel_topk(x, 3, seed=4))


def test_gumbel_topk_empty_batch(backend):
    res = sk.gumbel_topk(torch.empty(0, 5, device=backend.device), 2, seed=0)
    assert res.tokens.shape == (0, 2) and res.log_probs.shape == (0, 2) and res.scores.shape == (0, 2)


def test_gumbel_topk_golden(backend):
    d = backend.device
    # docstring example
    out = sk.gumbel_topk(torch.tensor([[2.0, 1.0, 0.0, NINF]], device=d), 3, seed=0)
    assert sorted(out.tokens[0].tolist()) == [0, 1, 2]
    # V = 1: the only token, log prob 0
    out = sk.gumbel_topk(torch.tensor([[3.0], [-7.0]], device=d), 1, seed=1)
    assert out.tokens.tolist() == [[0], [0]] and out.log_probs.tolist() == [[0.0], [0.0]]
    # gaps far beyond the noise range fix the order; -inf last (padding); uniform log probs
    x = torch.tensor([[0.0, -1e4, NINF, 30.0, -60.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    for seed in range(5):
        out = sk.gumbel_topk(x.to(d), 5, seed=seed)
        assert out.tokens[0].tolist() == [3, 0, 4, 1, -1]
        assert sorted(out.tokens[1].tolist()) == [0, 1, 2, 3, 4]
        torch.testing.assert_close(out.log_probs[1].cpu(), torch.full((5,), -math.log(5.0)))
        check_topk_structure(out, x, 5)
