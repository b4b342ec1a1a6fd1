"""sampling_probs: temperature -> top-k -> top-p probabilities, against the reference on every
backend, hand-computed golden cases and input checks."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from helpers import capture_cuda_graph

import specdec_kernels as sk
import specdec_kernels.reference as ref
import specdec_kernels.testing as skt

TRITON_FAMILY = "sampling"  # conftest: the triton params need specdec_kernels.triton.sampling

RTOL, ATOL = 1e-5, 1e-7


def assert_probs_match(out, expected):
    assert out.dtype == torch.float32, out.dtype
    skt.assert_same(out, expected, rtol=RTOL, atol=ATOL, name="probs")
    # allclose alone would let a kept token of probability < atol pass for a filtered one: the
    # support (which tokens top-k/top-p keep) must match exactly.
    assert torch.equal(out.cpu() == 0, expected.cpu() == 0), "different tokens kept"


def make_logits(R, V, *, seed, dtype=torch.float32, ties=False, masked=False):
    g = torch.Generator().manual_seed(seed)
    if ties:
        # small integers: many equal logits, so ties at the top-k and top-p thresholds are common
        x = torch.randint(-3, 4, (R, V), generator=g).float()
    else:
        x = 2.0 * torch.randn(R, V, generator=g)
    if masked and V > 1:
        m = torch.rand(R, V, generator=g) < 0.3
        m[:, 0] = False  # never a fully masked row
        x = x.masked_fill(m, float("-inf"))
    return x.to(dtype)


def _per_row(kind, R, seed):
    """Per-row parameter tensors covering off / on values in one batch."""
    g = torch.Generator().manual_seed(seed)
    if kind == "temperature":
        return torch.rand(R, generator=g) * 1.5 + 0.25
    if kind == "top_k":
        return torch.randint(0, 12, (R,), generator=g)  # includes 0 (off) and values >= small V
    if kind == "top_p":
        t = torch.rand(R, generator=g) * 0.95 + 0.05
        t[::4] = 1.0  # some rows off
        return t
    raise AssertionError(kind)


# (temperature, top_k, top_p): scalars or "row" for per-row tensors
PARAMS = [
    (1.0, 0, 1.0),
    (0.7, 0, 1.0),
    (1.0, 3, 1.0),
    (1.0, 0, 0.9),
    (0.5, 5, 0.8),
    (1.3, 1, 1.0),
    (1.0, 0, 0.3),
    ("row", 0, 1.0),
    (1.0, "row", 1.0),
    (1.0, 0, "row"),
    ("row", "row", "row"),
    (0.8, 50, 0.95),
]
SIZES = [(1, 1), (3, 7), (33, 111), (2, 32000)]
INPUT_KINDS = ["plain", "ties", "masked"]


@functools.cache
def _case(R, V, params, kind, dtype_name="float32"):
    dtype = getattr(torch, dtype_name)
    seed = R * 100_000 + V + 7 * PARAMS.index(params) + INPUT_KINDS.index(kind)
    logits = make_logits(R, V, seed=seed, dtype=dtype, ties=kind == "ties", masked=kind == "masked")
    kw = {}
    for name, v in zip(("temperature", "top_k", "top_p"), params, strict=True):
        kw[name] = _per_row(name, R, seed) if v == "row" else v
    return logits, kw, ref.sampling_probs(logits, **kw)


def _run(backend, R, V, params, kind, dtype_name="float32"):
    logits, kw, expected = _case(R, V, params, kind, dtype_name)
    d = backend.device
    kw = {k: (v.to(d) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    out = sk.sampling_probs(logits.to(d), **kw)
    assert out.device.type == d.type
    assert_probs_match(out, expected)
    sums = out.double().sum(-1)
    assert torch.allclose(sums.cpu(), torch.ones_like(sums.cpu()), atol=1e-5)


def _ids(params):
    return "T{}-k{}-p{}".format(*params)


# V = 32000 with a representative subset of the parameters only: the reference is a per-row loop.
GRID = [(R, V, p) for R, V in SIZES for p in PARAMS
        if V < 32000 or p in PARAMS[:5] + [("row", "row", "row")]]


@pytest.mark.parametrize("R,V,params", GRID, ids=[f"R{R}-V{V}-{_ids(p)}" for R, V, p in GRID])
def test_sampling_probs_matches_reference(backend, R, V, params):
    _run(backend, R, V, params, "plain")


@pytest.mark.parametrize("kind", ["ties", "masked"])
@pytest.mark.parametrize("params", PARAMS, ids=[_ids(p) for p in PARAMS])
def test_sampling_probs_ties_and_masks(backend, params, kind):
    _run(backend, 33, 111, params, kind)
    if kind == "ties" and params == (1.0, 0, 0.3):
        # ties at the threshold were actually exercised: kept probabilities repeat
        out = _case(33, 111, params, kind)[2]
        assert any(len(set(r[r > 0].tolist())) < int((r > 0).sum()) for r in out)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
@pytest.mark.parametrize("params", [(1.0, 0, 1.0), (0.5, 5, 0.8), ("row", "row", "row")],
                         ids=["plain", "filters", "rows"])
@pytest.mark.parametrize("R,V", [(33, 111), (2, 32000)], ids=["V111", "V32000"])
def test_sampling_probs_low_precision(backend, R, V, params, dtype_name):
    # float16/bfloat16 logits: arithmetic in float32 after an exact upcast, so the reference (which
    # upcasts first) is matched to float32 tolerance; bf16 also makes many exact ties.
    _run(backend, R, V, params, "plain", dtype_name)


def test_sampling_probs_leading_shape(backend):
    # [..., V] input with per-leading-shape parameter tensors; the result keeps the input shape.
    d = backend.device
    logits = make_logits(6, 13, seed=1).reshape(2, 3, 13)
    temp = torch.tensor([[0.5, 1.0, 2.0], [1.0, 0.7, 1.5]])
    k = torch.tensor([[0, 3, 13], [20, 1, 5]])
    p = torch.tensor([[1.0, 0.5, 0.9], [0.2, 1.0, 0.7]])
    out = sk.sampling_probs(logits.to(d), temperature=temp.to(d), top_k=k.to(d), top_p=p.to(d))
    assert out.shape == (2, 3, 13)
    expected = ref.sampling_probs(logits.reshape(6, 13), temperature=temp.reshape(6), top_k=k.reshape(6),
                                  top_p=p.reshape(6))
    assert_probs_match(out.reshape(6, 13), expected)
    # flat [R] parameters are accepted for a [..., V] input too, and 0-d tensors broadcast
    out2 = sk.sampling_probs(logits.to(d), temperature=temp.reshape(6).to(d), top_k=torch.tensor(3, device=d))
    exp2 = ref.sampling_probs(logits.reshape(6, 13), temperature=temp.reshape(6), top_k=3)
    assert_probs_match(out2.reshape(6, 13), exp2)
    # 1-D input: a single row
    out3 = sk.sampling_probs(logits[0, 0].to(d), top_k=4)
    assert out3.shape == (13,)
    assert_probs_match(out3, ref.sampling_probs(logits[0, 0:1].reshape(1, 13), top_k=4)[0])


def test_sampling_probs_top_k_at_least_V_is_off(backend):
    d = backend.device
    logits = make_logits(4, 9, seed=2)
    base = sk.sampling_probs(logits.to(d))
    for k in (9, 10, 10**6):
        assert_probs_match(sk.sampling_probs(logits.to(d), top_k=k), base)
    assert_probs_match(base, torch.softmax(logits, -1))


def test_sampling_probs_large_batch_matches_cpu(backend):
    # Many rows just above a power of two (grid limits, rows packed per program, tails); the cpu
    # backend is the oracle (the reference loop is slow), checked against the reference on a few rows.
    if backend.name == "reference":
        pytest.skip("the reference is the oracle's oracle: checked on the first rows below, not 8193")
    if "cpu" not in sk.backends("cpu"):
        pytest.skip("needs the compiled cpu backend as the oracle")
    logits = make_logits(8193, 5, seed=4, masked=True)
    kw = dict(temperature=_per_row("temperature", 8193, 1), top_k=_per_row("top_k", 8193, 2),
              top_p=_per_row("top_p", 8193, 3))
    with sk.use_backend("cpu"):
        expected = sk.sampling_probs(logits, **kw)
    assert_probs_match(expected[:50], ref.sampling_probs(logits[:50], **{k: v[:50] for k, v in kw.items()}))
    d = backend.device
    assert_probs_match(sk.sampling_probs(logits.to(d), **{k: v.to(d) for k, v in kw.items()}), expected)


def test_sampling_probs_empty_batch(backend):
    out = sk.sampling_probs(torch.empty(0, 5, device=backend.device), top_k=2, top_p=0.5)
    assert out.shape == (0, 5)


# ----------------------------------------------------------------------------------------------
# Golden cases by hand
# ----------------------------------------------------------------------------------------------

E = math.exp
GOLDEN = [
    # docstring example: softmax([4, 2]) on the two largest
    ("topk2_T05", [2.0, 1.0, 0.0, -1.0], dict(temperature=0.5, top_k=2),
     [1 / (1 + E(-2)), E(-2) / (1 + E(-2)), 0.0, 0.0]),
    ("plain_softmax", [0.0, math.log(3.0)], {}, [0.25, 0.75]),
    ("temperature_2", [0.0, math.log(9.0)], dict(temperature=2.0), [0.25, 0.75]),
    # ties at the k-th value are kept: [3, 2, 2, 1] with k = 2 keeps 3, 2, 2
    ("topk_ties_kept", [3.0, 2.0, 2.0, 1.0], dict(top_k=2),
     [E(1) / (E(1) + 2), 1 / (E(1) + 2), 1 / (E(1) + 2), 0.0]),
    ("topk1_tie_at_top", [1.0, 1.0, 0.0], dict(top_k=1), [0.5, 0.5, 0.0]),
    ("topk1", [0.0, 2.0, 1.0], dict(top_k=1), [0.0, 1.0, 0.0]),
    # top-p keeps tokens whose preceding mass (strictly larger probabilities) is < top_p
    ("topp_06", [math.log(0.5), math.log(0.3), math.log(0.2)], dict(top_p=0.6), [0.625, 0.375, 0.0]),
    ("topp_04", [math.log(0.5), math.log(0.3), math.log(0.2)], dict(top_p=0.4), [1.0, 0.0, 0.0]),
    ("topp_tiny_keeps_mode", [0.0, 1.0, 0.5], dict(top_p=1e-6), [0.0, 1.0, 0.0]),
    # equal probabilities are never split by top-p
    ("topp_all_ties", [0.0, 0.0, 0.0, 0.0], dict(top_p=0.1), [0.25, 0.25, 0.25, 0.25]),
    ("topp_tie_after_mode", [math.log(0.4), math.log(0.2), math.log(0.2), math.log(0.2)], dict(top_p=0.5),
     [0.4, 0.2, 0.2, 0.2]),
    # top-k before top-p, with renormalisation in between: [.4,.3,.2,.1], k = 2 -> [4/7, 3/7];
    # then top-p 0.5: 3/7's preceding mass is 4/7 >= 0.5, dropped. (top-p first would keep both.)
    ("topk_then_topp", [math.log(0.4), math.log(0.3), math.log(0.2), math.log(0.1)],
     dict(top_k=2, top_p=0.5), [1.0, 0.0, 0.0, 0.0]),
    ("topk_only_order", [math.log(0.4), math.log(0.3), math.log(0.2), math.log(0.1)],
     dict(top_k=2), [4 / 7, 3 / 7, 0.0, 0.0]),
    ("masked", [0.0, float("-inf"), 0.0], {}, [0.5, 0.0, 0.5]),
    ("masked_topk", [float("-inf"), 1.0, float("-inf"), 1.0, 0.0], dict(top_k=3),
     [0.0, E(1) / (2 * E(1) + 1), 0.0, E(1) / (2 * E(1) + 1), 1 / (2 * E(1) + 1)]),
    ("V1", [5.0], dict(top_k=1, top_p=0.5, temperature=0.1), [1.0]),
    ("large_logits_stable", [1000.0, 999.0], {}, [1 / (1 + E(-1)), E(-1) / (1 + E(-1))]),
]


@pytest.mark.parametrize("logits,kw,expected", [g[1:] for g in GOLDEN], ids=[g[0] for g in GOLDEN])
def test_sampling_probs_golden(backend, logits, kw, expected):
    d = backend.device
    x = torch.tensor([logits])
    expected = torch.tensor([expected], dtype=torch.float32)
    out = sk.sampling_probs(x.to(d), **kw)
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.cpu() == 0, expected == 0)
    # the reference agrees with the hand computation too
    torch.testing.assert_close(ref.sampling_probs(x, **kw), expected, rtol=1e-5, atol=1e-6)


def test_sampling_probs_per_row_params_equal_scalar_calls(backend):
    # A per-row tensor must act row by row exactly as the scalar call on that row.
    d = backend.device
    logits = make_logits(5, 20, seed=9)
    temp = [0.3, 1.0, 2.0, 0.9, 1.1]
    ks = [0, 1, 3, 25, 7]
    ps = [1.0, 0.5, 0.9, 0.2, 0.75]
    out = sk.sampling_probs(logits.to(d), temperature=torch.tensor(temp, device=d),
                            top_k=torch.tensor(ks, device=d), top_p=torch.tensor(ps, device=d))
    for r in range(5):
        row = sk.sampling_probs(logits[r:r + 1].to(d), temperature=temp[r], top_k=ks[r], top_p=ps[r])
        torch.testing.assert_close(out[r:r + 1].cpu(), row.cpu(), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------

_X = torch.zeros(2, 5)
BAD = [
    ("temperature_zero", dict(temperature=0.0), "temperature"),
    ("temperature_negative", dict(temperature=-1.0), "temperature"),
    ("temperature_nan", dict(temperature=float("nan")), "temperature"),
    ("temperature_inf", dict(temperature=float("inf")), "temperature"),
    ("temperature_tensor_zero", dict(temperature=torch.tensor([1.0, 0.0])), "temperature"),
    ("temperature_tensor_shape", dict(temperature=torch.ones(3)), "temperature"),
    ("temperature_tensor_int", dict(temperature=torch.ones(2, dtype=torch.long)), "temperature"),
    ("top_p_zero", dict(top_p=0.0), "top_p"),
    ("top_p_above_one", dict(top_p=1.5), "top_p"),
    ("top_p_negative", dict(top_p=-0.1), "top_p"),
    ("top_p_tensor", dict(top_p=torch.tensor([0.5, 0.0])), "top_p"),
    ("top_p_tensor_above_one", dict(top_p=torch.tensor([0.5, 1.01])), "top_p"),
    ("top_k_negative", dict(top_k=-1), "top_k"),
    ("top_k_tensor_negative", dict(top_k=torch.tensor([2, -1])), "top_k"),
    ("top_k_float", dict(top_k=2.0), "top_k"),
    ("top_k_bool", dict(top_k=True), "top_k"),
    ("top_k_float_tensor", dict(top_k=torch.tensor([1.0, 2.0])), "top_k"),
    ("logits_nan", dict(logits=torch.tensor([[0.0, float("nan")], [0.0, 0.0]])), "logits"),
    ("logits_posinf", dict(logits=torch.tensor([[0.0, float("inf")]])), "logits"),
    ("logits_all_masked_row", dict(logits=torch.tensor([[0.0, 1.0], [float("-inf")] * 2])), "logits"),
    ("logits_int", dict(logits=torch.zeros(2, 5, dtype=torch.long)), "logits"),
    ("logits_double", dict(logits=torch.zeros(2, 5, dtype=torch.float64)), "logits"),
    ("logits_0d", dict(logits=torch.tensor(1.0)), "logits"),
    ("logits_V0", dict(logits=torch.zeros(2, 0)), "logits"),
    ("logits_not_tensor", dict(logits=[[0.0, 1.0]]), "logits"),
]


@pytest.mark.parametrize("fn", [sk.sampling_probs, ref.sampling_probs], ids=["public", "reference"])
@pytest.mark.parametrize("kw,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_sampling_probs_bad_inputs(fn, kw, match):
    kw = {"logits": _X, **kw}
    logits = kw.pop("logits")
    with pytest.raises(ValueError, match=match):
        fn(logits, **kw)


def test_sampling_probs_raw_op_checks():
    op = torch.ops.specdec.sampling_probs
    x = torch.zeros(2, 5)
    one, k0 = torch.ones(2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(RuntimeError, match="top_k"):
        op(x, one, k0.int(), one)
    with pytest.raises(RuntimeError, match="temperature"):
        op(x, one[:1], k0, one)
    with pytest.raises(RuntimeError, match="logits"):
        op(x[0], one, k0, one)


@pytest.mark.cuda
def test_sampling_probs_device_mismatch_cuda():
    x = torch.zeros(2, 5, device="cuda")
    with pytest.raises(ValueError, match="temperature"):
        sk.sampling_probs(x, temperature=torch.ones(2))
    with pytest.raises(ValueError, match="top_k"):
        sk.sampling_probs(x, top_k=torch.ones(2, dtype=torch.long))


# ----------------------------------------------------------------------------------------------
# torch.compile / fake impl / CUDA graphs
# ----------------------------------------------------------------------------------------------


def test_opcheck_sampling_probs():
    x = make_logits(3, 7, seed=0)
    t, k, p = torch.tensor([0.5, 1.0, 2.0]), torch.tensor([0, 2, 9]), torch.tensor([1.0, 0.5, 0.9])
    torch.library.opcheck(torch.ops.specdec.sampling_probs.default, (x, t, k, p))


def test_torch_compile_fullgraph_sampling_probs_cpu():
    x = make_logits(3, 7, seed=0)
    t, k, p = torch.tensor([0.5, 1.0, 2.0]), torch.tensor([0, 2, 9]), torch.tensor([1.0, 0.5, 0.9])

    def f(x, t, k, p):
        return torch.ops.specdec.sampling_probs(x, t, k, p) * 2

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(cf(x, t, k, p), f(x, t, k, p), rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_graph_sampling_probs(cuda_backend):
    d = cuda_backend.device
    x = make_logits(33, 111, seed=3).to(d)
    t = torch.full((33,), 0.7, device=d)
    k = torch.full((33,), 5, dtype=torch.long, device=d)
    p = torch.full((33,), 0.9, device=d)
    graph, static = capture_cuda_graph(
        lambda: sk.sampling_probs(x, temperature=t, top_k=k, top_p=p, check=False)
    )
    for step in range(2):
        x.copy_(make_logits(33, 111, seed=10 + step).to(d))
        k.fill_(3 + step)  # parameters updated in place are read by the replay
        graph.replay()
        torch.cuda.synchronize()
        expected = ref.sampling_probs(x.cpu(), temperature=t.cpu(), top_k=k.cpu(), top_p=p.cpu())
        assert_probs_match(static, expected)
