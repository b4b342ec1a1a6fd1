"""gumbel_topk / stochastic_beam_step: equality with the reference on every backend, the exactness
of the sampled laws (distribution tests with negative controls), structural invariants, -inf
masking, determinism, input checks, torch.compile and CUDA graphs."""

from __future__ import annotations

import contextlib
import functools
import itertools
import math

import pytest
import torch
from helpers import capture_cuda_graph, to_device, with_generator
from scipy import stats

import specdec_kernels as sk
import specdec_kernels.reference as ref
from specdec_kernels import GUMBEL_OFFSET_STRIDE as STRIDE

TRITON_FAMILY = "gumbel"  # conftest: the triton params need specdec_kernels.triton.gumbel

RTOL, ATOL = 1e-5, 1e-5
NINF = float("-inf")
# The Gumbel noise comes from 23-bit uniforms in (2^-24, 1 - 2^-24): g = -log(-log(u)) lies in
# about [-2.81, 16.6] (docstring note), so scores - log_probs does too.
G_MIN, G_MAX = -2.82, 16.7


# ----------------------------------------------------------------------------------------------
# Random inputs and comparisons
# ----------------------------------------------------------------------------------------------


def make_logits(shape, *, seed, dtype=torch.float32, masked=0.0, few=None):
    """Random logits of ``shape`` (rows along the last dim).

    masked: fraction of tokens set to -inf (token 0 of each row stays finite).
    few: (lo, hi): each row keeps only a random number in [lo, hi] of finite tokens at random
        positions (0 gives an all -inf row); the first row is all -inf when lo == 0.
    """
    g = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(*shape, generator=g)
    V = shape[-1]
    if masked and V > 1:
        m = torch.rand(*shape, generator=g) < masked
        m[..., 0] = False
        x = x.masked_fill(m, NINF)
    if few is not None:
        lo, hi = few
        n = torch.randint(lo, hi + 1, shape[:-1], generator=g)
        if lo == 0:
            n.reshape(-1)[0] = 0
        rank = torch.rand(*shape, generator=g).argsort(-1).argsort(-1)  # a random permutation per row
        x = x.masked_fill(rank >= n[..., None], NINF)
    return x.to(dtype)


def make_beams(B, W, *, seed, root=False, dtype=torch.float32):
    """(beam_log_probs, beam_scores) [B, W]: cumulative log probs <= 0 and descending scores <= 0
    (zeros at the root)."""
    if root:
        z = torch.zeros(B, W, dtype=dtype)
        return z, z.clone()
    g = torch.Generator().manual_seed(seed + 1)
    G = -(3.0 * torch.rand(B, W, generator=g)).sort(-1).values
    phi = G - 0.5 - 2.0 * torch.rand(B, W, generator=g)
    return phi.to(dtype), G.to(dtype)


@contextlib.contextmanager
def one_thread():
    """Compute expected results on one intra-op thread: the reference's large int64 Philox tensors
    parallelise over 2 threads, which is up to 40x slower when another process holds a core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def first_requests(obj, B, n):
    """The first n requests of per-request tensors (leading dim B) in nested containers; 0-d
    tensors and scalars unchanged. Valid for every seed kind: an int seed gives row r stream r."""
    if isinstance(obj, torch.Tensor):
        return obj[:n] if obj.dim() >= 1 and obj.shape[0] == B else obj
    if isinstance(obj, dict):
        return {k: first_requests(v, B, n) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        items = [first_requests(v, B, n) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


# The Triton interpreter runs the beam step at ~0.07 s per (request, beam): interpreted beam tests
# use the first request of each case, two where the case has per-request tensors or dead beams
# (and smaller batches elsewhere).
def _interp_requests(kw, mask) -> int:
    per_row = any(isinstance(v, torch.Tensor) for v in kw.values()) or mask is not None
    return 2 if per_row else 1


def assert_floats_match(a, b, what):
    a, b = a.cpu(), b.cpu()
    assert a.dtype == torch.float32 and a.shape == b.shape, (what, a.dtype, a.shape, b.shape)
    assert torch.equal(torch.isneginf(a), torch.isneginf(b)), f"{what}: -inf at different places"
    assert not torch.isnan(a).any(), f"{what}: NaN"
    fin = torch.isfinite(b)
    torch.testing.assert_close(a[fin], b[fin], rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


def assert_topk_same(res, exp):
    assert res.tokens.dtype == torch.long
    assert torch.equal(res.tokens.cpu(), exp.tokens.cpu()), (res.tokens, exp.tokens)
    assert_floats_match(res.log_probs, exp.log_probs, "log_probs")
    assert_floats_match(res.scores, exp.scores, "scores")


def assert_beam_same(res, exp):
    assert res.parents.dtype == torch.long and res.tokens.dtype == torch.long
    assert torch.equal(res.parents.cpu(), exp.parents.cpu()), (res.parents, exp.parents)
    assert torch.equal(res.tokens.cpu(), exp.tokens.cpu()), (res.tokens, exp.tokens)
    assert_floats_match(res.log_probs, exp.log_probs, "log_probs")
    assert_floats_match(res.scores, exp.scores, "scores")


def _row_temperature(temperature, R):
    if isinstance(temperature, torch.Tensor):
        return temperature.cpu().float().reshape(-1).expand(R) if temperature.dim() == 0 else \
            temperature.cpu().float().reshape(R)
    return torch.full((R,), float(temperature))


def check_topk_structure(res, logits, k, temperature=1.0):
    """Invariants of a TopKSample whatever the randomness."""
    x = logits.cpu().float()
    R, V = x.shape
    tokens, lp, sc = res.tokens.cpu(), res.log_probs.cpu(), res.scores.cpu()
    assert tokens.shape == (R, k) and tokens.dtype == torch.long
    assert lp.shape == (R, k) and lp.dtype == torch.float32
    assert sc.shape == (R, k) and sc.dtype == torch.float32
    s = x / _row_temperature(temperature, R)[:, None]
    n_finite = (s > NINF).sum(-1)
    valid = tokens >= 0
    # valid slots first, as many as there are drawable tokens
    assert torch.equal(valid.sum(-1), n_finite.clamp(max=k)), (tokens, n_finite)
    assert torch.equal(valid, torch.arange(k)[None, :] < valid.sum(-1, keepdim=True))
    assert bool((tokens < V).all())
    assert bool(torch.isneginf(lp[~valid]).all()) and bool(torch.isneginf(sc[~valid]).all())
    t = tokens.clamp(min=0)
    assert bool((s.gather(1, t)[valid] > NINF).all()), "a -inf token was drawn"
    for r in range(R):
        row = tokens[r][valid[r]].tolist()
        assert len(set(row)) == len(row), f"row {r}: repeated token {row}"
    # draw order: scores descending; log_probs are the log softmax at the tokens
    assert bool((sc[:, 1:][valid[:, 1:]] <= sc[:, :-1][valid[:, 1:]]).all()), "scores not descending"
    logsm = torch.log_softmax(s, -1).gather(1, t)
    torch.testing.assert_close(lp[valid], logsm[valid], rtol=RTOL, atol=ATOL)
    noise = (sc - lp)[valid]
    assert bool(((noise >= G_MIN) & (noise <= G_MAX)).all()), "noise outside the 23-bit Gumbel range"


def check_beam_structure(res, logits, phi, G, width, temperature=1.0, beam_mask=None):
    """Invariants of a BeamStep whatever the randomness (``logits`` clean at live beams)."""
    x = logits.cpu().float()
    B, W, V = x.shape
    phi, G = phi.cpu().float(), G.cpu().float()
    live = torch.ones(B, W, dtype=torch.bool) if beam_mask is None else beam_mask.cpu()
    parents, tokens, lp, sc = (t.cpu() for t in res)
    for t, dt in ((parents, torch.long), (tokens, torch.long), (lp, torch.float32), (sc, torch.float32)):
        assert t.shape == (B, width) and t.dtype == dt
    s = x / _row_temperature(temperature, B)[:, None, None]
    n_children = torch.where(live, (s > NINF).sum(-1), 0).sum(-1)
    valid = tokens >= 0
    assert torch.equal(valid, parents >= 0)
    assert torch.equal(valid.sum(-1), n_children.clamp(max=width)), (tokens, n_children)
    assert torch.equal(valid, torch.arange(width)[None, :] < valid.sum(-1, keepdim=True))
    assert bool(((parents < W) & (tokens < V)).all())
    for t in (lp, sc):
        assert bool(torch.isneginf(t[~valid]).all())
    p, t = parents.clamp(min=0), tokens.clamp(min=0)
    assert bool(live.gather(1, p)[valid].all()), "a dead beam was expanded"
    logsm = torch.log_softmax(torch.where(live[..., None], s, 0.0), -1)
    child = logsm[torch.arange(B)[:, None], p, t]
    assert bool((child[valid] > NINF).all()), "a -inf token was drawn"
    # cumulative log q of the new sequence
    torch.testing.assert_close(lp[valid], (phi.gather(1, p) + child)[valid], rtol=RTOL, atol=ATOL)
    # best first; truncated scores never exceed the parent's
    assert bool((sc[:, 1:][valid[:, 1:]] <= sc[:, :-1][valid[:, 1:]]).all()), "scores not descending"
    Gp = G.gather(1, p)
    assert bool((sc[valid] <= Gp[valid]).all()), "a child scores above its parent"
    for b in range(B):
        pairs = list(zip(parents[b][valid[b]].tolist(), tokens[b][valid[b]].tolist(), strict=True))
        assert len(set(pairs)) == len(pairs), f"request {b}: repeated expansion {pairs}"
        seen = set()
        for i, (w, _) in enumerate(pairs):
            if w not in seen:  # a beam's first kept child is its best one: G' == G exactly
                seen.add(w)
                assert float(sc[b, i]) == float(G[b, w]), (b, i, float(sc[b, i]), float(G[b, w]))


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


def _rng_kw(opts, R, case_seed):
    seed, offset = opts.get("seed", 1234 + case_seed), opts.get("offset", 0)
    if seed == "tensor":
        seed = torch.arange(R, dtype=torch.long) * 1_000_003 + 17
    elif seed == "0d":
        seed = torch.tensor(99, dtype=torch.long)
    if offset == "tensor":
        offset = torch.arange(R, dtype=torch.long) * STRIDE + 2**33
    elif offset == "0d":
        offset = torch.tensor(4, dtype=torch.long)
    kw = dict(offset=offset)
    if seed == "generator":
        kw["generator"] = 5  # a placeholder: a fresh torch.Generator is made per call
    else:
        kw["seed"] = seed
    T = opts.get("temperature", 1.0)
    if T == "row":
        T = torch.rand(R, generator=torch.Generator().manual_seed(case_seed)) * 1.5 + 0.3
    elif T == "0d":
        T = torch.tensor(0.6)
    kw["temperature"] = T
    if "check" in opts:
        kw["check"] = opts["check"]
    return kw


def _strided(t):
    """The same values as a non-contiguous view (a slice of a larger buffer along the last dim)."""
    big = torch.zeros(*t.shape[:-1], t.shape[-1] + 3, dtype=t.dtype)
    V = t.shape[-1]
    big[..., 2:V + 2] = t
    out = big[..., 2:V + 2]
    assert not out.is_contiguous() or t.shape[-1] == 0
    return out


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


def _dead_mask(B, W, seed):
    """Random live/dead beams: beam 0 live in most requests, request 1 (if any) all dead."""
    g = torch.Generator().manual_seed(seed + 2)
    live = torch.rand(B, W, generator=g) < 0.6
    live[::2, 0] = True
    if B > 1:
        live[1] = False
    return live


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


@pytest.mark.parametrize("op", ["topk", "beam"])
def test_scaled_logit_overflow_is_rejected(op):
    # Finite logits that overflow float32 once divided by the temperature would give NaN scores.
    x = torch.tensor([[3e38, 0.0, 1.0]])
    with pytest.raises(ValueError, match="logits / temperature must not overflow"):
        if op == "topk":
            sk.gumbel_topk(x, 2, temperature=0.5, seed=0)
        else:
            z = torch.zeros(1, 1)
            sk.stochastic_beam_step(x[:, None], z, z, 2, temperature=torch.tensor([0.5]), seed=0)


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
    assert_floats_match(step.log_probs, top.log_probs, "log_probs")
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


# ----------------------------------------------------------------------------------------------
# Distribution tests
# ----------------------------------------------------------------------------------------------

P_THRESHOLD = 1e-6  # fixed seeds: a pass or a fail is deterministic; a broken law is far beyond this


def chi2_stat(codes, law, *, check_support=True):
    """(statistic, threshold at p = 1e-6, df) of integer ``codes`` against ``law`` (float64 over
    all codes); cells with expected count < 5 are pooled."""
    counts = torch.bincount(codes, minlength=law.numel()).double()
    assert counts.numel() == law.numel()
    N = codes.numel()
    expected = N * law
    if check_support:
        assert float(counts[law == 0].sum()) == 0, "an outcome of probability 0 was drawn"
    small = expected < 5
    o = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    e = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = e > 0
    o, e = o[keep], e[keep]
    stat = float(((o - e) ** 2 / e).sum())
    df = int(keep.sum()) - 1
    return stat, float(stats.chi2.ppf(1 - P_THRESHOLD, df)), df


def ordered_law(p, k, *, replacement_then_distinct=False):
    """Law of ordered k-tuples of distinct tokens, indexed by sum(x_i * V^(k-1-i)).

    Exact: sequential sampling without replacement, p1 * p2/(1-p1) * p3/(1-p1-p2) ...
    replacement_then_distinct: i.i.d. draws conditioned on being distinct (a biased law)."""
    p = [float(v) for v in p]
    V = len(p)
    law = torch.zeros(V**k, dtype=torch.float64)
    for tup in itertools.permutations(range(V), k):
        pr, rest = 1.0, 1.0
        for t in tup:
            pr *= p[t] if replacement_then_distinct else p[t] / rest
            rest -= p[t]
        law[sum(t * V ** (k - 1 - i) for i, t in enumerate(tup))] = pr
    return law / law.sum()


def tuple_codes(tokens, V):
    k = tokens.shape[1]
    assert bool((tokens >= 0).all())
    return (tokens * (V ** torch.arange(k - 1, -1, -1))[None, :]).sum(1)


DIST_LOGITS = torch.log(torch.tensor([0.5, 0.2, 0.12, 0.09, 0.06, 0.03])) + 1.5  # any shift: same law
# Rows per distribution test: the reference is vectorised over rows for gumbel_topk (fast); the
# Triton interpreter is slower. Every size keeps the power to reject the biased laws (asserted).
TOPK_N = {"reference": 10_000, "interpreted": 4_000, "compiled": 20_000}
TOPK_N_SLOW = {"reference": 200_000, "interpreted": 20_000, "compiled": 1_000_000}


def _n_for(backend, table):
    if backend.name == "reference":
        return table["reference"]
    return table["interpreted" if backend.interpreted else "compiled"]


TOPK_DIST_CASES = [
    # name, temperature, seed kind, offset
    ("T1_int_seed", 1.0, "int", 0),
    ("T07_int_seed_offset", 0.7, "int", 5),
    ("T16_seed_tensor", 1.6, "tensor", 0),
    ("T_row_seed_tensor_offset_tensor", "row", "tensor", "tensor"),
]
TOPK_DIST_IDS = [c[0] for c in TOPK_DIST_CASES]


def _topk_dist_check(backend, N, temperature, seed_kind, offset, *, gen_seed):
    d = backend.device
    V, k = DIST_LOGITS.numel(), 3
    x = DIST_LOGITS.expand(N, V).contiguous()
    temps = (0.7, 1.6)
    if temperature == "row":  # two laws in one batch: even rows T = 0.7, odd rows T = 1.6
        T = torch.tensor(temps).repeat(N // 2)
    else:
        T = temperature
    seed = 1000 + gen_seed if seed_kind == "int" else torch.arange(N) * 7919 + gen_seed
    off = torch.arange(N) % 3 * STRIDE + 2 if offset == "tensor" else offset
    res = sk.gumbel_topk(x.to(d), k, **to_device(dict(temperature=T, seed=seed, offset=off), d))
    tokens = res.tokens.cpu()
    groups = [(slice(0, None, 2), temps[0]), (slice(1, None, 2), temps[1])] if temperature == "row" \
        else [(slice(None), temperature)]
    for rows, t in groups:
        codes = tuple_codes(tokens[rows], V)
        p = torch.softmax(DIST_LOGITS.double() / t, 0)
        stat, thr, df = chi2_stat(codes, ordered_law(p, k))
        assert stat < thr, f"T={t}: chi2 = {stat:.1f} >= {thr:.1f} (df {df}): law of ordered tuples is wrong"
        # negative controls: the same statistic rejects a with-replacement-then-distinct law and
        # the law at the wrong temperature (temperature ignored; 0.6 for T = 1): the test has power
        # at this N
        wrong_t = 1.0 if t != 1.0 else 0.6
        for name, bad in (("iid_distinct", ordered_law(p, k, replacement_then_distinct=True)),
                          ("wrong_T", ordered_law(torch.softmax(DIST_LOGITS.double() / wrong_t, 0), k))):
            bstat, bthr, _ = chi2_stat(codes, bad, check_support=False)
            assert bstat > bthr, f"T={t}: {name} law not rejected: chi2 = {bstat:.1f} < {bthr:.1f}"
    # log probs and scores are those of the tokens
    lp = torch.log_softmax(DIST_LOGITS[None, :] / _row_temperature(T, N)[:, None], -1).gather(1, tokens)
    torch.testing.assert_close(res.log_probs.cpu(), lp, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name,temperature,seed_kind,offset", TOPK_DIST_CASES, ids=TOPK_DIST_IDS)
def test_gumbel_topk_law_is_exact(backend, name, temperature, seed_kind, offset):
    _topk_dist_check(backend, _n_for(backend, TOPK_N), temperature, seed_kind, offset, gen_seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("name,temperature,seed_kind,offset", TOPK_DIST_CASES, ids=TOPK_DIST_IDS)
def test_gumbel_topk_law_is_exact_slow(backend, name, temperature, seed_kind, offset):
    _topk_dist_check(backend, _n_for(backend, TOPK_N_SLOW), temperature, seed_kind, offset, gen_seed=2)


def test_law_harness_positive_control():
    # torch.multinomial without replacement is sequential sampling: it passes the same check, and
    # the biased laws fail it (the harness, not the kernels, is under test here).
    p = torch.softmax(DIST_LOGITS.double(), 0)
    g = torch.Generator().manual_seed(0)
    N = min(TOPK_N.values())
    codes = tuple_codes(torch.multinomial(p.float().expand(N, -1), 3, replacement=False, generator=g), 6)
    stat, thr, _ = chi2_stat(codes, ordered_law(p, 3))
    assert stat < thr
    bstat, bthr, _ = chi2_stat(codes, ordered_law(p, 3, replacement_then_distinct=True), check_support=False)
    assert bstat > bthr


# Stochastic beam search over two steps: V = 4 tokens, width 3. The drafter's first-token law is
# Q1, the second token's law given the first is Q2[y1] (a fixed table).
Q1 = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
Q2 = torch.tensor([[0.1, 0.2, 0.3, 0.4],
                   [0.25, 0.25, 0.25, 0.25],
                   [0.7, 0.1, 0.1, 0.1],
                   [0.05, 0.15, 0.5, 0.3]], dtype=torch.float64)
# Requests per test. The reference loops over requests in Python (~3-5 ms per request and step):
# slow test only. The Triton interpreter (~0.07 s per request and beam): one small slow case.
BEAM_N = {"reference": 0, "interpreted": 0, "compiled": 20_000}
BEAM_N_SLOW = {"reference": 3_000, "interpreted": 150, "compiled": 300_000}


def _sbs_two_steps(backend, N, *, temperature, seed_kind, gen_seed, width=3):
    """Run two beam steps from the root for N copies of the same request; returns ([N, width, 2]
    sequences in output order, -1 padded)."""
    d = backend.device
    V = Q1.numel()
    # logits = T * log q: at temperature T the law is exactly q (an arbitrary shift per row too)
    l1 = (temperature * torch.log(Q1) + 0.3).float()
    l2 = (temperature * torch.log(Q2) - 1.0).float()
    if seed_kind == "int":
        seed = 500 + gen_seed
    else:
        seed = (torch.arange(N) * 104_729 + gen_seed).to(d)
    z = torch.zeros(N, 1, device=d)
    s1 = sk.stochastic_beam_step(l1.expand(N, 1, V).contiguous().to(d), z, z, width, temperature=temperature,
                                 seed=seed, offset=0)
    y1 = s1.tokens.cpu()
    assert bool((y1 >= 0).all())
    s2 = sk.stochastic_beam_step(l2[y1].to(d), s1.log_probs, s1.scores, width, temperature=temperature,
                                 seed=seed, offset=STRIDE)
    parents, y2 = s2.parents.cpu(), s2.tokens.cpu()
    assert bool((parents >= 0).all() and (y2 >= 0).all())
    seqs = torch.stack([y1.gather(1, parents), y2], -1)
    # kept sequences are distinct; the best one extends the best prefix
    codes = seqs[..., 0] * V + seqs[..., 1]
    assert bool((codes.sort(1).values.diff(dim=1) > 0).all()), "repeated sequence"
    assert bool((parents[:, 0] == 0).all())
    # cumulative log probs of the kept sequences
    lq = torch.log(Q1)[seqs[..., 0]] + torch.log(Q2)[seqs[..., 0], seqs[..., 1]]
    torch.testing.assert_close(s2.log_probs.cpu().double(), lq, rtol=1e-5, atol=1e-5)
    return seqs


def _check_sbs_law(seqs, *, pairs):
    V = Q1.numel()
    seq_p = (Q1[:, None] * Q2).reshape(-1)  # law of a sequence y1 * V + y2
    codes = seqs[:, :, 0] * V + seqs[:, :, 1]
    stat, thr, df = chi2_stat(codes[:, 0], seq_p)
    assert stat < thr, f"top sequence: chi2 = {stat:.1f} >= {thr:.1f} (df {df}): not distributed as q"
    # negative control: the conditional of the wrong prefix (a parent-indexing bug) is rejected
    wrong = (Q1[:, None] * Q2[torch.tensor([1, 2, 3, 0])]).reshape(-1)
    bstat, bthr, _ = chi2_stat(codes[:, 0], wrong, check_support=False)
    assert bstat > bthr, f"wrong-prefix law not rejected: chi2 = {bstat:.1f} < {bthr:.1f}"
    if pairs:
        # the best two form a sample without replacement from q over the 16 sequences
        pair_law = ordered_law(seq_p, 2)
        stat, thr, df = chi2_stat(codes[:, 0] * V * V + codes[:, 1], pair_law)
        assert stat < thr, f"top two sequences: chi2 = {stat:.1f} >= {thr:.1f} (df {df})"


SBS_CASES = [
    # name, temperature, seed kind
    ("T1_int_seed", 1.0, "int"),
    ("T08_seed_tensor", 0.8, "tensor"),
]


@pytest.mark.parametrize("name,temperature,seed_kind", SBS_CASES, ids=[c[0] for c in SBS_CASES])
def test_beam_two_steps_top_sequence_law(backend, name, temperature, seed_kind):
    if not _n_for(backend, BEAM_N):
        pytest.skip("reference / Triton interpreter: too slow here (run in test_beam_two_steps_law_slow)")
    seqs = _sbs_two_steps(backend, _n_for(backend, BEAM_N), temperature=temperature, seed_kind=seed_kind,
                          gen_seed=1)
    _check_sbs_law(seqs, pairs=False)


@pytest.mark.slow
@pytest.mark.parametrize("name,temperature,seed_kind", SBS_CASES, ids=[c[0] for c in SBS_CASES])
def test_beam_two_steps_law_slow(backend, name, temperature, seed_kind):
    N = _n_for(backend, BEAM_N_SLOW)
    if backend.interpreted and name != "T1_int_seed":
        pytest.skip("Triton interpreter: one case")
    seqs = _sbs_two_steps(backend, N, temperature=temperature, seed_kind=seed_kind, gen_seed=2)
    _check_sbs_law(seqs, pairs=N >= 20_000)


# ----------------------------------------------------------------------------------------------
# -inf masking
# ----------------------------------------------------------------------------------------------


def test_masked_tokens_never_drawn(backend):
    # Half the vocabulary masked, the finite tokens far less likely than the best one: over many
    # streams (rows with an int seed, several seeds) a masked token is never drawn, and every
    # finite token is drawn once k exceeds their number.
    d = backend.device
    R, V = 512, 16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(R, V, generator=g) * 3 - 20
    x[:, 0] = 0.0
    mask = torch.rand(R, V, generator=g) < 0.5
    mask[:, 0] = False
    x = x.masked_fill(mask, NINF)
    for dtype in (torch.float32, torch.bfloat16):
        xd = x.to(dtype)
        for seed in range(4):
            for k in (3, V):
                if backend.interpreted and seed >= 2:
                    continue
                res = sk.gumbel_topk(xd.to(d), k, seed=seed, temperature=0.5 + seed)
                check_topk_structure(res, xd, k, 0.5 + seed)
                t = res.tokens.cpu()
                assert not bool(mask.gather(1, t.clamp(min=0))[t >= 0].any())
    # the beam step: masked tokens of live beams and every token of dead beams are never drawn
    B, W = (2 if backend.interpreted else 32), 4
    xb, mask = x[:B * W].reshape(B, W, V), mask[:B * W].reshape(B, W, V)
    live = torch.rand(B, W, generator=g) < 0.7
    phi, G = make_beams(B, W, seed=3)
    for seed in range(2 if backend.interpreted else 4):
        res = sk.stochastic_beam_step(xb.to(d), phi.to(d), G.to(d), 6, beam_mask=live.to(d), seed=seed)
        check_beam_structure(res, xb, phi, G, 6, beam_mask=live)
        p, t = res.parents.cpu(), res.tokens.cpu()
        v = t >= 0
        drawn_masked = mask[torch.arange(B)[:, None], p.clamp(min=0), t.clamp(min=0)]
        assert not bool(drawn_masked[v].any())


# ----------------------------------------------------------------------------------------------
# Determinism and the seed/offset contract
# ----------------------------------------------------------------------------------------------


def _varied_topk(R=33, V=111):
    return make_logits((R, V), seed=42).mul(0.2)  # high entropy: independent draws differ


def _varied_beam(B=33, W=3, V=111):
    x = make_logits((B, W, V), seed=43).mul(0.2)
    phi, G = make_beams(B, W, seed=43)
    return x, phi, G


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
    for a, b in zip(moved, base, strict=True):
        assert torch.equal(a.cpu(), b.cpu()[perm])
    for a, b in zip(alone, base, strict=True):
        assert torch.equal(a.cpu(), b.cpu()[2:3])


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


# ----------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------

_X = torch.zeros(2, 5)


def _topk_bad_cases():
    cases = []

    def case(name, match, **changes):
        cases.append(pytest.param(changes, match, id=name))

    nan, inf = float("nan"), float("inf")
    case("logits_1d", "logits", logits=torch.zeros(5))
    case("logits_3d", "logits", logits=torch.zeros(2, 1, 5))
    case("logits_int", "logits", logits=torch.zeros(2, 5, dtype=torch.long))
    case("logits_double", "logits", logits=torch.zeros(2, 5, dtype=torch.float64))
    case("logits_not_tensor", "logits", logits=[[0.0] * 5] * 2)
    case("logits_V0", "logits", logits=torch.zeros(2, 0), k=1)
    case("logits_nan", "logits", logits=torch.tensor([[0.0, nan, 1.0, 2.0, 3.0]]))
    case("logits_posinf", "logits", logits=torch.tensor([[0.0, inf, 1.0, 2.0, 3.0]]))
    case("logits_posinf_bf16", "logits", logits=torch.tensor([[0.0, inf, 1.0, 2.0, 3.0]]).bfloat16())
    case("k_gt_V", "k", k=6)
    case("k_zero", "k", k=0)
    case("k_negative", "k", k=-1)
    case("k_float", "k", k=2.0)
    case("k_bool", "k", k=True)
    case("k_tensor", "k", k=torch.tensor(2))
    case("temperature_zero", "temperature", temperature=0.0)
    case("temperature_negative", "temperature", temperature=-1.0)
    case("temperature_nan", "temperature", temperature=nan)
    case("temperature_inf", "temperature", temperature=inf)
    case("temperature_bool", "temperature", temperature=True)
    case("temperature_tensor_zero", "temperature", temperature=torch.tensor([1.0, 0.0]))
    case("temperature_tensor_nan", "temperature", temperature=torch.tensor([nan, 1.0]))
    case("temperature_tensor_negative_0d", "temperature", temperature=torch.tensor(-0.5))
    case("temperature_tensor_shape", "temperature", temperature=torch.ones(3))
    case("temperature_tensor_int", "temperature", temperature=torch.ones(2, dtype=torch.long))
    case("seed_negative", "seed", seed=-1)
    case("seed_too_large", "seed", seed=2**63)
    case("seed_float", "seed", seed=1.5)
    case("seed_tensor_dtype", "seed", seed=torch.tensor([1, 2], dtype=torch.int32))
    case("seed_tensor_shape", "seed", seed=torch.tensor([1, 2, 3]))
    case("offset_negative", "offset", offset=-2)
    case("offset_tensor_dtype", "offset", offset=torch.tensor([0.0, 2.0]))
    case("seed_and_generator", "generator", seed=1, generator=torch.Generator())
    return cases


@pytest.mark.parametrize("fn", [sk.gumbel_topk, ref.gumbel_topk], ids=["public", "reference"])
@pytest.mark.parametrize("changes,match", _topk_bad_cases())
def test_gumbel_topk_bad_inputs(fn, changes, match):
    kw = {"logits": _X, "k": 2, "seed": 0, **changes}
    logits, k = kw.pop("logits"), kw.pop("k")
    with pytest.raises(ValueError, match=match):
        fn(logits, k, **kw)


def _beam_good(B=2, W=3, V=5):
    x, phi, G = _varied_beam(B=B, W=W, V=V)
    return dict(logits=x, beam_log_probs=phi, beam_scores=G, width=2)


def _beam_bad_cases():
    cases = []

    def case(name, match, **changes):
        cases.append(pytest.param(changes, match, id=name))

    nan, inf = float("nan"), float("inf")
    g = _beam_good()
    x, phi, G = g["logits"], g["beam_log_probs"], g["beam_scores"]
    live = torch.tensor([[True, False, True], [True, True, False]])

    def poke(t, val, at=(0, 1)):
        t = t.clone()
        t[at] = val
        return t

    case("logits_2d", "logits", logits=x[:, 0])
    case("logits_4d", "logits", logits=x[..., None])
    case("logits_int", "logits", logits=x.long())
    case("logits_double", "logits", logits=x.double())
    case("logits_not_tensor", "logits", logits=x.tolist())
    case("logits_V0", "logits", logits=x[..., :0])
    case("logits_W0", "logits", logits=x[:, :0], beam_log_probs=phi[:, :0], beam_scores=G[:, :0])
    case("logits_nan", "logits", logits=poke(x, nan, (0, 1, 2)))
    case("logits_posinf", "logits", logits=poke(x, inf, (1, 0, 0)))
    case("width_zero", "width", width=0)
    case("width_negative", "width", width=-3)
    case("width_float", "width", width=2.0)
    case("width_bool", "width", width=True)
    case("log_probs_B", "beam_log_probs", beam_log_probs=phi[:1])
    case("log_probs_W", "beam_log_probs", beam_log_probs=phi[:, :2])
    case("log_probs_1d", "beam_log_probs", beam_log_probs=phi[0])
    case("log_probs_int", "beam_log_probs", beam_log_probs=phi.long())
    case("log_probs_not_tensor", "beam_log_probs", beam_log_probs=phi.tolist())
    case("scores_B", "beam_scores", beam_scores=G[:1])
    case("scores_W", "beam_scores", beam_scores=torch.zeros(2, 4))
    case("scores_int", "beam_scores", beam_scores=G.long())
    case("mask_B", "beam_mask", beam_mask=live[:1])
    case("mask_W", "beam_mask", beam_mask=live[:, :2])
    case("mask_not_bool", "beam_mask", beam_mask=live.long())
    case("mask_not_tensor", "beam_mask", beam_mask=live.tolist())
    case("score_nan_live", "beam_scores", beam_scores=poke(G, nan))
    case("score_posinf_live", "beam_scores", beam_scores=poke(G, inf))
    case("score_neginf_live", "beam_scores", beam_scores=poke(G, -inf))
    case("log_prob_nan_live", "beam_log_probs", beam_log_probs=poke(phi, nan))
    case("log_prob_neginf_live", "beam_log_probs", beam_log_probs=poke(phi, -inf))
    case("score_nan_live_with_mask", "beam_scores", beam_scores=poke(G, nan, (1, 1)), beam_mask=live)
    case("temperature_zero", "temperature", temperature=0.0)
    case("temperature_nan", "temperature", temperature=nan)
    case("temperature_bool", "temperature", temperature=False)
    case("temperature_tensor_negative", "temperature", temperature=torch.tensor([1.0, -1.0]))
    case("temperature_tensor_shape", "temperature", temperature=torch.ones(3))
    case("seed_negative", "seed", seed=-1)
    case("seed_tensor_shape", "seed", seed=torch.tensor([1, 2, 3]))
    case("offset_tensor_dtype", "offset", offset=torch.tensor([0, 2], dtype=torch.int32))
    case("seed_and_generator", "generator", seed=1, generator=torch.Generator())
    return cases


@pytest.mark.parametrize("fn", [sk.stochastic_beam_step, ref.stochastic_beam_step],
                         ids=["public", "reference"])
@pytest.mark.parametrize("changes,match", _beam_bad_cases())
def test_beam_step_bad_inputs(fn, changes, match):
    kw = {**_beam_good(), "seed": 0, **changes}
    with pytest.raises(ValueError, match=match):
        fn(**kw)


def test_check_false_skips_value_checks():
    # check=False skips only the value checks (NaN logits, live non-finite scores), not the shapes.
    x = torch.tensor([[0.0, float("nan"), 1.0]])
    sk.gumbel_topk(x, 2, seed=0, check=False)
    g = _beam_good()
    g["beam_scores"] = g["beam_scores"].clone().fill_(float("nan"))
    sk.stochastic_beam_step(**g, seed=0, check=False)
    with pytest.raises(ValueError, match="k"):
        sk.gumbel_topk(x, 4, seed=0, check=False)
    with pytest.raises(ValueError, match="beam_log_probs"):
        sk.stochastic_beam_step(**{**g, "beam_log_probs": g["beam_log_probs"][:1]}, seed=0, check=False)


def _need_cpp_gumbel():
    if "cpu" not in sk.backends("cpu"):
        pytest.skip("needs the compiled cpu backend")
    try:
        _ = torch.ops.specdec.gumbel_topk, torch.ops.specdec.stochastic_beam_step
    except (AttributeError, RuntimeError) as e:
        pytest.skip(f"the extension has no gumbel ops yet: {e}")


def test_raw_gumbel_topk_op_checks_raise():
    # Direct torch.ops calls bypass the Python checks; the C++ checks still name the argument.
    _need_cpp_gumbel()
    op = torch.ops.specdec.gumbel_topk
    x, t, s = torch.zeros(2, 5), torch.ones(2), torch.zeros(2, dtype=torch.long)
    bad = [
        ("logits", (x[0], t, 2, s, s, True)),
        ("logits", (x[None], t, 2, s, s, True)),
        ("logits", (x.double(), t, 2, s, s, True)),
        ("logits", (x.long(), t, 2, s, s, True)),
        ("logits", (x[:, :0], t, 1, s, s, True)),
        ("k", (x, t, 6, s, s, True)),
        ("k", (x, t, 0, s, s, True)),
        ("temperature", (x, t[:1], 2, s, s, True)),
        ("temperature", (x, t.double(), 2, s, s, True)),
        ("seed", (x, t, 2, s[:1], s, True)),
        ("seed", (x, t, 2, s.int(), s, True)),
        ("offset", (x, t, 2, s, s.float(), True)),
        ("offset", (x, t, 2, s, torch.zeros(3, dtype=torch.long), True)),
    ]
    for match, args in bad:
        with pytest.raises(RuntimeError, match=match):
            op(*args)


def test_raw_beam_step_op_checks_raise():
    _need_cpp_gumbel()
    op = torch.ops.specdec.stochastic_beam_step
    x, z, m = torch.zeros(2, 3, 5), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    t, s = torch.ones(2), torch.zeros(2, dtype=torch.long)
    bad = [
        ("logits", (x[:, 0], z, z, m, 2, t, s, s, True)),
        ("logits", (x.double(), z, z, m, 2, t, s, s, True)),
        ("logits", (x[..., :0], z, z, m, 2, t, s, s, True)),
        ("width", (x, z, z, m, 0, t, s, s, True)),
        ("beam_log_probs", (x, z[:1], z, m, 2, t, s, s, True)),
        ("beam_log_probs", (x, z.double(), z, m, 2, t, s, s, True)),
        ("beam_scores", (x, z, z[:, :2], m, 2, t, s, s, True)),
        ("beam_scores", (x, z, z.half(), m, 2, t, s, s, True)),
        ("beam_mask", (x, z, z, m.long(), 2, t, s, s, True)),
        ("beam_mask", (x, z, z, m[:1], 2, t, s, s, True)),
        ("temperature", (x, z, z, None, 2, t[:1], s, s, True)),
        ("seed", (x, z, z, None, 2, t, s.int(), s, True)),
        ("offset", (x, z, z, None, 2, t, s, s[:1], True)),
    ]
    for match, args in bad:
        with pytest.raises(RuntimeError, match=match):
            op(*args)


@pytest.mark.cuda
def test_device_mismatch_cuda():
    x = torch.zeros(2, 5, device="cuda")
    with pytest.raises(ValueError, match="temperature"):
        sk.gumbel_topk(x, 2, seed=0, temperature=torch.ones(2))
    with pytest.raises(ValueError, match="seed"):
        sk.gumbel_topk(x, 2, seed=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="offset"):
        sk.gumbel_topk(x, 2, seed=0, offset=torch.tensor([0, 2]))
    g = to_device(_beam_good(), "cuda")
    mask = torch.ones(2, 3, dtype=torch.bool)
    for name, val in (("beam_log_probs", g["beam_log_probs"].cpu()), ("beam_scores", g["beam_scores"].cpu()),
                      ("beam_mask", mask), ("temperature", torch.ones(2)), ("seed", torch.tensor([1, 2]))):
        with pytest.raises(ValueError, match=name):
            sk.stochastic_beam_step(**{"seed": 0, **g, name: val})
    with pytest.raises(ValueError, match="offset"):
        sk.stochastic_beam_step(**g, seed=0, offset=torch.tensor([0, 1]))


@pytest.mark.cuda
def test_large_k_on_cuda():
    # The CUDA kernels keep k <= 256 candidates: larger k is routed to Triton when the backend is
    # not forced (and still matches the reference), and named in the error when CUDA is forced.
    if "cuda" not in sk.backends("cuda") or "triton" not in sk.backends("cuda"):
        pytest.skip("needs the cuda and triton backends")
    x = make_logits((3, 1000), seed=5)
    res = sk.gumbel_topk(x.cuda(), 300, seed=2)
    assert_topk_same(res, ref.gumbel_topk(x, 300, seed=2))
    xb, phi, G = _varied_beam(B=2, W=2, V=400)
    res = sk.stochastic_beam_step(xb.cuda(), phi.cuda(), G.cuda(), 300, seed=2)
    assert_beam_same(res, ref.stochastic_beam_step(xb, phi, G, 300, seed=2))
    with sk.use_backend("cuda"), pytest.raises(RuntimeError, match="k <= 256"):
        sk.gumbel_topk(x.cuda(), 300, seed=2)
    with sk.use_backend("cuda"), pytest.raises(RuntimeError, match="width <= 256"):
        sk.stochastic_beam_step(xb.cuda(), phi.cuda(), G.cuda(), 300, seed=2)


# ----------------------------------------------------------------------------------------------
# torch.compile, fake implementations, CUDA graphs
# ----------------------------------------------------------------------------------------------


def _raw_args(device="cpu"):
    x = make_logits((3, 7), seed=0, masked=0.2)
    xb, phi, G = _varied_beam(B=3, W=2, V=7)
    mask = torch.tensor([[True, False], [True, True], [False, False]])
    t = torch.tensor([0.5, 1.0, 2.0])
    s = torch.arange(3) * 5 + 1
    o = torch.zeros(3, dtype=torch.long)
    return to_device((x, xb, phi, G, mask, t, s, o), device)


def test_opcheck_gumbel_ops():
    # Schema, fake (meta) implementation and dispatch registration are consistent.
    _need_cpp_gumbel()
    x, xb, phi, G, mask, t, s, o = _raw_args()
    torch.library.opcheck(torch.ops.specdec.gumbel_topk.default, (x, t, 3, s, o, True))
    torch.library.opcheck(torch.ops.specdec.gumbel_topk.default, (x, t, 7, s, o, False))
    beam = torch.ops.specdec.stochastic_beam_step.default
    torch.library.opcheck(beam, (xb, phi, G, mask, 4, t, s, o, True))
    torch.library.opcheck(beam, (xb, phi, G, None, 20, t, s, o, False))


def _compile_check(device, backend):
    x, xb, phi, G, mask, t, s, o = _raw_args(device)

    def f(x, xb, phi, G, mask, t, s, o):
        a = torch.ops.specdec.gumbel_topk(x, t, 3, s, o, False)
        b = torch.ops.specdec.stochastic_beam_step(xb, phi, G, mask, 4, t, s, o, True)
        return (*a, *b, a[2] * 2.0)

    cf = torch.compile(f, fullgraph=True, backend=backend)
    for off in (0, STRIDE):
        o.fill_(off)
        got, exp = cf(x, xb, phi, G, mask, t, s, o), f(x, xb, phi, G, mask, t, s, o)
        for a, b in zip(got, exp, strict=True):
            assert torch.equal(a, b)


def test_torch_compile_fullgraph_cpu():
    # aot_eager traces with fake tensors (the registered fake impls) without C++ codegen: cheap.
    _need_cpp_gumbel()
    _compile_check("cpu", "aot_eager")


@pytest.mark.cuda
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_cuda(compile_backend):
    if "cuda" not in sk.backends("cuda"):
        pytest.skip("needs the compiled cuda backend")
    _need_cpp_gumbel()
    _compile_check("cuda", compile_backend)


@pytest.mark.cuda
def test_cuda_graph_capture_replay(cuda_backend):
    d = cuda_backend.device
    R = 33
    x = _varied_topk(R=R).to(d)
    xb, phi, G = to_device(_varied_beam(B=R), d)
    mask = _dead_mask(R, 3, 0).to(d)
    seed = torch.arange(R, device=d) * 13 + 1
    offset = torch.zeros(R, dtype=torch.long, device=d)
    T = torch.full((R,), 0.8, device=d)

    def topk():
        return sk.gumbel_topk(x, 5, temperature=T, seed=seed, offset=offset, check=False)

    def beam():
        return sk.stochastic_beam_step(xb, phi, G, 5, temperature=T, beam_mask=mask, seed=seed, offset=offset,
                                       check=False)

    g1, static1 = capture_cuda_graph(topk)
    g2, static2 = capture_cuda_graph(beam)
    outs = []
    for r in range(3):
        offset.fill_(r * STRIDE)  # in place: the captured kernels read the new offset
        if r == 2:
            x.copy_(x.flip(-1))
            xb.copy_(xb.flip(-1))
        g1.replay()
        g2.replay()
        torch.cuda.synchronize()
        kw = dict(temperature=T, seed=seed, offset=offset.clone())
        assert_topk_same(static1, sk.gumbel_topk(x, 5, **kw))
        assert_beam_same(static2, sk.stochastic_beam_step(xb, phi, G, 5, beam_mask=mask, **kw))
        assert_topk_same(static1, ref.gumbel_topk(*to_device((x, 5), "cpu"), **to_device(kw, "cpu")))
        outs.append(static1.tokens.clone())
    assert not torch.equal(outs[0], outs[1])
