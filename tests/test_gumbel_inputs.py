"""gumbel_topk / stochastic_beam_step: argument checks and their messages (bad inputs on the public
ops and the reference, overflowing scaled logits), check=False skipping only the value checks,
the raw torch.ops checks, device mismatches, the k / width limit of the CUDA kernels."""

from __future__ import annotations

import pytest
import torch
from gumbel_cases import (
    _beam_good,
    _need_cpp_gumbel,
    _varied_beam,
    assert_beam_same,
    assert_topk_same,
    make_logits,
)
from helpers import to_device

import specdec_kernels as sk
import specdec_kernels.reference as ref

TRITON_FAMILY = "gumbel"  # conftest: the triton params need specdec_kernels.triton.gumbel


# ----------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------


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
