"""stochastic_beam_step: equality with the reference on every backend (a grid of V, B, W, width and
variants: dtypes, temperatures, seed and offset forms, masking, dead and poisoned beams, widths
beyond W * V), padding, the empty batch, dead beams never read; properties of the step: the root
step equals gumbel_topk, two steps keep distinct sequences below their parents' scores."""

from __future__ import annotations

import functools

import pytest
import torch
from gumbel_cases import (
    NINF,
    _dead_mask,
    _interp_requests,
    _rng_kw,
    _strided,
    assert_beam_same,
    check_beam_structure,
    first_requests,
    make_beams,
    make_logits,
    one_thread,
)
from helpers import to_device, with_generator

import specdec_kernels as sk
import specdec_kernels.reference as ref
from specdec_kernels import GUMBEL_OFFSET_STRIDE as STRIDE
from specdec_kernels.testing import assert_same

TRITON_FAMILY = "gumbel"  # conftest: the triton params need specdec_kernels.triton.gumbel


# ----------------------------------------------------------------------------------------------
# Equality with the reference: stochastic_beam_step
# ----------------------------------------------------------------------------------------------

BEAM_GRID = [(V, B, W, width) for V in (1, 7, 111) for B in (1, 3, 33) for W in (1, 3) for width in (1, 2, 5)]
BEAM_GRID += [(32000, 1, 1, 5), (32000, 2, 3, 5)]

BEAM_VARIANTS = [
    # name, V, B, W, width, options
    ("root", 111, 17, 1, 5, dict(root=True)),
    ("fp16", 111, 17, 3, 5, dict(dtype=torch.float16)),
    ("bf16", 111, 17, 3, 5, dict(dtype=torch.bfloat16)),
    ("temperature_float", 111, 17, 3, 5, dict(temperature=0.7)),
    ("temperature_row", 111, 17, 3, 5, dict(temperature="row")),
    ("temperature_0d", 111, 17, 3, 5, dict(temperature="0d")),
    ("seed_tensor", 111, 17, 3, 5, dict(seed="tensor")),
    ("seed_0d_tensor", 111, 17, 3, 5, dict(seed="0d")),
    ("offset_int", 111, 17, 3, 5, dict(offset=3)),
    ("offset_tensor", 111, 17, 3, 5, dict(offset="tensor")),
    ("offset_0d_tensor", 111, 17, 3, 5, dict(offset="0d")),
    ("big_seed_offset", 111, 17, 3, 5, dict(seed=2**63 - 1, offset=2**40 + 6)),
    ("generator", 111, 17, 3, 5, dict(seed="generator")),
    ("masked", 111, 17, 3, 5, dict(masked=0.5)),
    ("few_finite", 7, 17, 3, 5, dict(few=(0, 2))),
    ("few_finite_row_temperature", 7, 17, 3, 4, dict(few=(0, 3), temperature="row", seed="tensor")),
    ("all_masked_beams", 7, 3, 3, 4, dict(few=(0, 0))),
    ("dead_beams", 111, 17, 3, 5, dict(dead=True)),
    ("dead_beams_W8", 7, 33, 8, 5, dict(dead=True, few=(0, 3))),
    ("dead_beams_poisoned", 111, 17, 3, 5, dict(dead=True, poison=True, check=False)),
    ("dead_beams_poisoned_bf16_seed_tensor", 7, 17, 3, 4,
     dict(dead=True, poison=True, check=False, dtype=torch.bfloat16, seed="tensor", offset="tensor")),
    ("width_gt_V", 7, 3, 1, 10, {}),
    ("width_gt_V_W3", 7, 3, 3, 10, dict(temperature="row")),
    ("width_gt_WV", 7, 3, 3, 25, {}),
    ("width_gt_WV_V1", 1, 3, 3, 4, {}),
    ("width_gt_WV_dead", 7, 5, 3, 25, dict(dead=True)),
    ("beams_float64", 111, 17, 3, 5, dict(beam_dtype=torch.float64)),
    ("strided", 111, 17, 3, 5, dict(strided=True)),
    ("bf16_seed_tensor_V32000", 32000, 2, 2, 5, dict(dtype=torch.bfloat16, seed="tensor", temperature="row")),
]
BEAM_VARIANTS_BY_NAME = {v[0]: v[1:] for v in BEAM_VARIANTS}


@functools.cache
def _beam_case(V, B, W, width, variant=None):
    """(inputs, kwargs, reference result) with inputs = dict(logits, beam_log_probs, beam_scores,
    beam_mask); the expected result comes from the clean inputs (dead beams not poisoned)."""
    opts = dict(BEAM_VARIANTS_BY_NAME[variant][4]) if variant else {}
    case_seed = V * 10_000 + B * 100 + W * 10 + width
    dtype = opts.get("dtype", torch.float32)
    logits = make_logits((B, W, V), seed=case_seed, dtype=dtype, masked=opts.get("masked", 0.0),
                         few=opts.get("few"))
    phi, G = make_beams(B, W, seed=case_seed, root=opts.get("root", False),
                        dtype=opts.get("beam_dtype", torch.float32))
    mask = _dead_mask(B, W, case_seed) if opts.get("dead") else None
    kw = _rng_kw(opts, B, case_seed)
    clean = dict(logits=logits, beam_log_probs=phi, beam_scores=G, beam_mask=mask)
    with one_thread():
        expected = ref.stochastic_beam_step(**clean, width=width, **with_generator({**kw, "check": True}))
    check_beam_structure(expected, logits, phi, G, width, kw["temperature"], mask)
    inputs = dict(clean)
    if opts.get("poison"):
        dead = ~mask
        inputs["logits"] = logits.masked_fill(dead[..., None], float("nan"))
        inputs["beam_log_probs"] = phi.masked_fill(dead, float("nan"))
        inputs["beam_scores"] = G.masked_fill(dead, float("nan"))
        # the reference itself never reads dead beams either
        assert_beam_same(ref.stochastic_beam_step(**inputs, width=width, **with_generator(kw)), expected)
    if opts.get("strided"):
        inputs["logits"] = _strided(logits)
    return inputs, kw, expected


def _beam_case_for(backend, V, B, W, width, variant=None):
    inputs, kw, expected = _beam_case(V, B, W, width, variant)
    if backend.interpreted:
        n = _interp_requests(kw, inputs["beam_mask"])
        inputs, kw, expected = first_requests((inputs, kw, expected), B, n)
    return inputs, kw, expected


def _run_beam_case(backend, V, B, W, width, variant=None):
    if backend.name == "reference" and (V >= 32000 or B > 3 and variant is None):
        pytest.skip("the expected result is the reference itself (dispatch is covered by smaller cases)")
    if backend.interpreted and (B > 3 and variant is None or V >= 32000 and B * W > 1):
        pytest.skip("Triton interpreter: too slow (B = 3 covers the first requests; compiled backends all)")
    inputs, kw, expected = _beam_case_for(backend, V, B, W, width, variant)
    d = backend.device
    res = sk.stochastic_beam_step(**to_device(inputs, d), width=width, **to_device(with_generator(kw), d))
    assert res.tokens.device.type == d.type
    assert_beam_same(res, expected)


@pytest.mark.parametrize("V,B,W,width", BEAM_GRID, ids=[f"V{V}-B{B}-W{W}-w{w}" for V, B, W, w in BEAM_GRID])
def test_beam_step_matches_reference(backend, V, B, W, width):
    _run_beam_case(backend, V, B, W, width)


@pytest.mark.parametrize("variant", [v[0] for v in BEAM_VARIANTS])
def test_beam_step_matches_reference_variants(backend, variant):
    V, B, W, width, _ = BEAM_VARIANTS_BY_NAME[variant]
    _run_beam_case(backend, V, B, W, width, variant)


def test_beam_step_padding_cases(backend):
    # width > W * V, dead beams and all-dead / all-masked requests: -1 / -inf padding.
    d = backend.device
    x = torch.tensor([[[0.0, 1.0], [2.0, NINF]], [[NINF, NINF], [NINF, NINF]], [[0.0, 0.0], [5.0, 5.0]]])
    phi = torch.tensor([[-1.0, -2.0], [0.0, 0.0], [-0.5, -0.7]])
    G = torch.tensor([[-0.5, -1.0], [0.0, 0.0], [-0.25, -0.3]])
    mask = torch.tensor([[True, True], [True, True], [False, False]])
    res = sk.stochastic_beam_step(x.to(d), phi.to(d), G.to(d), 5, beam_mask=mask.to(d), seed=2)
    check_beam_structure(res, x, phi, G, 5, beam_mask=mask)
    assert res.tokens[0, 3:].tolist() == [-1, -1] and res.parents[0, 3:].tolist() == [-1, -1]
    kept = sorted(zip(res.parents[0, :3].tolist(), res.tokens[0, :3].tolist(), strict=True))
    assert kept == [(0, 0), (0, 1), (1, 0)]
    # the best beam's best child keeps its score exactly
    assert float(res.scores[0, 0]) == -0.5
    for b in (1, 2):
        assert res.tokens[b].tolist() == [-1] * 5 and res.parents[b].tolist() == [-1] * 5
        assert bool(torch.isneginf(res.scores[b]).all()) and bool(torch.isneginf(res.log_probs[b]).all())
    assert_beam_same(res, ref.stochastic_beam_step(x, phi, G, 5, beam_mask=mask, seed=2))


def test_beam_step_empty_batch(backend):
    d = backend.device
    z = torch.zeros(0, 2, device=d)
    res = sk.stochastic_beam_step(torch.zeros(0, 2, 5, device=d), z, z, 3, seed=0)
    for t in res:
        assert t.shape == (0, 3)


def test_beam_step_dead_beam_nan_passes_check(backend):
    # check=True validates only live beams' scores and log probs: NaN ones on dead beams are fine.
    inputs, kw, expected = _beam_case_for(backend, 111, 17, 3, 5, "dead_beams")
    mask = inputs["beam_mask"]
    dirty = dict(inputs)
    dirty["beam_log_probs"] = inputs["beam_log_probs"].masked_fill(~mask, float("nan"))
    dirty["beam_scores"] = inputs["beam_scores"].masked_fill(~mask, float("inf"))
    d = backend.device
    res = sk.stochastic_beam_step(**to_device(dirty, d), width=5, **to_device(kw, d))
    assert_beam_same(res, expected)


def test_beam_step_dead_beam_nan_logits_pass_check(backend):
    # check=True reads only live beams' rows too: NaN logits of a dead beam are never looked at.
    inputs, kw, expected = _beam_case_for(backend, 111, 17, 3, 5, "dead_beams")
    mask = inputs["beam_mask"]
    dirty = dict(inputs)
    dirty["logits"] = inputs["logits"].masked_fill(~mask[..., None], float("nan"))
    d = backend.device
    res = sk.stochastic_beam_step(**to_device(dirty, d), width=5, **to_device(kw, d))
    assert_beam_same(res, expected)


# ----------------------------------------------------------------------------------------------
# Properties of the beam step
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed_kind", ["int", "tensor"])
@pytest.mark.parametrize("V,width", [(7, 3), (111, 5), (5, 5)])
def test_root_step_equals_gumbel_topk(backend, V, width, seed_kind):
    # The root step (W = 1, zeros) draws element v for token v, exactly as gumbel_topk does: the
    # same tokens in the same order, the same log probs, parents 0 and the first score 0.
    R = 2 if backend.interpreted else 17
    d = backend.device
    x = make_logits((R, V), seed=V + width, masked=0.2)
    T = torch.rand(R, generator=torch.Generator().manual_seed(1)) + 0.5
    seed = 11 if seed_kind == "int" else torch.arange(R) * 31 + 5
    off = torch.arange(R) * STRIDE + 3
    kw = to_device(dict(temperature=T, seed=seed, offset=off), d)
    top = sk.gumbel_topk(x.to(d), width, **kw)
    z = torch.zeros(R, 1, device=d)
    step = sk.stochastic_beam_step(x[:, None, :].to(d), z, z, width, **kw)
    check_beam_structure(step, x[:, None, :], z, z, width, T)
    assert torch.equal(step.tokens.cpu(), top.tokens.cpu())
    valid = top.tokens.cpu() >= 0
    assert torch.equal(step.parents.cpu(), torch.where(valid, 0, -1))
    assert_same(step.log_probs, top.log_probs, name="log_probs")
    assert step.scores[:, 0].cpu().tolist() == [0.0] * R


def test_beam_step_two_steps_structure(backend):
    # Two steps from the root with random drafter logits: kept sequences are distinct, parents
    # live, log probs cumulative, scores descending and below the parent's.
    B, V, width = (3 if backend.interpreted else 9), 13, 4
    d = backend.device
    z = torch.zeros(B, 1)
    x1 = make_logits((B, 1, V), seed=1, masked=0.3)
    s1 = sk.stochastic_beam_step(x1.to(d), z.to(d), z.to(d), width, seed=5)
    check_beam_structure(s1, x1, z, z, width)
    x2 = make_logits((B, width, V), seed=2, masked=0.3)
    mask = s1.tokens.cpu() >= 0
    phi = torch.where(mask, s1.log_probs.cpu(), 0.0)
    G = torch.where(mask, s1.scores.cpu(), 0.0)
    s2 = sk.stochastic_beam_step(x2.to(d), phi.to(d), G.to(d), width, beam_mask=mask.to(d), seed=5,
                                 offset=STRIDE)
    check_beam_structure(s2, x2, phi, G, width, beam_mask=mask)
    seqs = torch.stack([s1.tokens.cpu().gather(1, s2.parents.cpu().clamp(min=0)), s2.tokens.cpu()], -1)
    for b in range(B):
        rows = [tuple(r) for r in seqs[b].tolist()]
        assert len(set(rows)) == len(rows)
    # the best sequence extends the best prefix and keeps its score
    assert s2.parents[:, 0].cpu().tolist() == [0] * B
    torch.testing.assert_close(s2.scores[:, 0].cpu(), s1.scores[:, 0].cpu(), rtol=0, atol=0)
