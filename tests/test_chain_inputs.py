"""verify_chain / verify_chain_greedy: argument checks and their messages (bad inputs on the public
op and the reference, row sums by dtype), backend selection (SPECDEC_BACKEND, use_backend, the
C++ status message), check=False with out-of-range values, the raw torch.ops checks, device
mismatches."""

from __future__ import annotations

import pytest
import torch
from chain_cases import _bad_cases, _good, _varied_case
from helpers import ROW_SUM_TOL, assert_row_sum_tolerance, to_device

import specdec_kernels as sk
import specdec_kernels.reference as ref
from specdec_kernels.testing import assert_same

TRITON_FAMILY = "chain"  # conftest: the triton params need specdec_kernels.triton.chain


# ----------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [sk.verify_chain, ref.verify_chain], ids=["public", "reference"])
@pytest.mark.parametrize("changes,match", _bad_cases())
def test_verify_chain_bad_inputs(fn, changes, match):
    kw = {**_good(), "seed": 0, **changes}
    with pytest.raises(ValueError, match=match):
        fn(**kw)


@pytest.mark.parametrize("fn", [sk.verify_chain_greedy, ref.verify_chain_greedy], ids=["public", "reference"])
@pytest.mark.parametrize("changes,match", [
    pytest.param(dict(draft_tokens=torch.zeros(2, dtype=torch.long)), "draft_tokens", id="tokens_rank"),
    pytest.param(dict(draft_tokens=torch.zeros(2, 3, dtype=torch.int32)), "draft_tokens", id="tokens_dtype"),
    pytest.param(dict(target_logits=torch.zeros(2, 3, 5)), r"target_logits must be \[B, K\+1, V\]",
                 id="shape"),
    pytest.param(dict(target_logits=torch.zeros(2, 4, 5, dtype=torch.long)), "target_logits", id="dtype"),
    pytest.param(dict(draft_tokens=torch.full((2, 3), 5)), "draft_tokens", id="token_range"),
    pytest.param(dict(num_draft=torch.tensor([0, 4])), "num_draft", id="num_draft_range"),
    pytest.param(dict(target_logits=torch.full((2, 4, 5), float("nan"))), "target_logits", id="nan"),
])
def test_verify_chain_greedy_bad_inputs(fn, changes, match):
    kw = {"draft_tokens": torch.zeros(2, 3, dtype=torch.long), "target_logits": torch.zeros(2, 4, 5),
          **changes}
    with pytest.raises(ValueError, match=match):
        fn(**kw)


# check=True: probability rows must sum to 1, within a tolerance by dtype (contract/limits.py).
def _sum_case(dtype=torch.float32, V=300):
    """B = 2, K = 2 rows that sum to 1 exactly in every dtype (2^-8 on ids [0, 256), 0 on the last
    44: the vector loops' tail). Draft 0 is rejected for sure in both requests (p(x0) = 0 < q(x0)),
    so every backend reads the whole rows p[:, 0] and q[:, 0]: the cpu kernel only those, the
    Python checks every used row."""
    x = torch.tensor([[5, 7], [9, 3]])
    p = torch.zeros(2, 3, V)
    p[..., :256] = 1.0 / 256
    q = p[:, :2].clone()
    for b, t in enumerate([5, 9]):
        p[b, 0, t] = 0.0
        p[b, 0, t + 1] = 2.0 / 256
    return dict(draft_tokens=x, target_probs=p.to(dtype), draft_probs=q.to(dtype))


def _sum_msg(arg, dtype):
    return rf"{arg} rows must sum to 1 \(within {ROW_SUM_TOL[dtype]:.0e} for {str(dtype)[6:]}\)"


@pytest.mark.parametrize("arg", ["target_probs", "draft_probs"])
def test_verify_chain_unnormalised_rows_raise(backend, arg):
    kw = _sum_case()
    bad = dict(kw, **{arg: kw[arg] * 5})
    with pytest.raises(ValueError, match=_sum_msg(arg, torch.float32) + "; found a row summing to 5$"):
        sk.verify_chain(**to_device(bad, backend.device), seed=1)
    # deterministic drafts: the rejected row p[:, 0] is read whole too
    if arg == "target_probs":
        with pytest.raises(ValueError, match=_sum_msg(arg, torch.float32)):
            sk.verify_chain(**to_device(dict(bad, draft_probs=None), backend.device), seed=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("arg", ["target_probs", "draft_probs"])
def test_verify_chain_sum_tolerance(backend, arg, dtype):
    kw = _sum_case(dtype)
    assert_row_sum_tolerance(
        lambda k, check: sk.verify_chain(**to_device(k, backend.device), seed=1, check=check),
        lambda res, k: assert_same(res, ref.verify_chain(**k, seed=1, check=False)),
        kw, arg, dtype, _sum_msg(arg, dtype),
    )


def test_verify_chain_bf16_softmax_rows_pass(backend):
    # bf16-rounded softmax rows over 32000 ids are off 1 by more than float32's 1e-3 (the largest
    # probabilities round with a spacing of 2^-8): the bfloat16 tolerance lets them through.
    g = torch.Generator().manual_seed(0)
    B, K, V = 2, 3, 32000
    p = torch.softmax(6 * torch.randn(B, K + 1, V, generator=g), -1).bfloat16()
    q = torch.softmax(6 * torch.randn(B, K, V, generator=g), -1).bfloat16()
    for t in (p, q):
        assert float((t.float().sum(-1) - 1).abs().max()) > 1e-3
    x = torch.multinomial(q.float().reshape(-1, V), 1, generator=g).reshape(B, K)
    for qq in (q, None):
        res = sk.verify_chain(*to_device((x, p, qq), backend.device), seed=3)
        assert_same(res, ref.verify_chain(x, p, qq, seed=3, check=False))


def test_bad_backend_env(monkeypatch):
    monkeypatch.setenv("SPECDEC_BACKEND", "bogus")
    with pytest.raises(ValueError, match="SPECDEC_BACKEND"):
        sk.verify_chain(**_good(), seed=0)
    with pytest.raises(ValueError, match="SPECDEC_BACKEND"):
        sk.verify_chain_greedy(_good()["draft_tokens"], _good()["target_probs"])


def test_backend_env_is_honoured(monkeypatch):
    # SPECDEC_BACKEND=reference routes to the reference implementation.
    import specdec_kernels.reference.chain as ref_chain

    calls = []
    real = ref_chain.op_verify_chain
    monkeypatch.setattr(ref_chain, "op_verify_chain", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv("SPECDEC_BACKEND", "reference")
    sk.verify_chain(**_good(), seed=0)
    assert calls == [1]


def test_use_backend_rejects_unknown_and_unavailable():
    with pytest.raises(ValueError, match="backend"):
        with sk.use_backend("bogus"):
            pass
    missing = [b for b in ("cpu", "triton", "cuda") if b not in sk.backends("cpu")]
    for name in missing:  # e.g. "cuda" for CPU tensors: a clear error, not a silent fallback
        with sk.use_backend(name), pytest.raises(ValueError, match=name):
            sk.verify_chain(**_good(), seed=0)


def _out_of_range_case():
    x, p, q = _varied_case(B=4, V=7, K=3)
    x = x.clone()
    x[0, 0] = 10**12
    x[1, 1] = -(10**12)
    x[2, 2] = 7
    return x, p, q


def test_check_false_out_of_range_tokens_do_not_crash():
    # With check=False the cpu kernel must still never read out of bounds: an out-of-range draft is
    # rejected (never read) and the correction is a valid token; num_draft out of range is clamped.
    x, p, q = _out_of_range_case()
    nd = torch.tensor([3, 3, 3, 3])
    with sk.use_backend("cpu"):
        for qq in (q, None):
            res = sk.verify_chain(x, p, qq, num_draft=nd, seed=1, check=False)
            n = res.num_accepted
            assert n[0] == 0 and n[1] <= 1 and n[2] <= 2
            emitted = res.tokens.gather(1, n[:, None])
            assert bool(((emitted >= 0) & (emitted < 7)).all())
            assert bool((res.tokens[:, :3][torch.arange(3)[None, :] < n[:, None]] < 7).all())
        # with stochastic drafts the reference handles it too (same rule: reject, never read)
        assert_same(sk.verify_chain(x, p, q, num_draft=nd, seed=1, check=False),
                    ref.verify_chain(x, p, q, num_draft=nd, seed=1, check=False))
        wild = sk.verify_chain(x, p, q, num_draft=torch.tensor([-5, 99, 0, 3]), seed=1, check=False)
        assert wild.num_accepted[0] == 0 and wild.num_accepted[2] == 0
        res = sk.verify_chain_greedy(x, p, num_draft=torch.tensor([-5, 99, 0, 3]), check=False)
        assert bool(((res.tokens >= -1) & (res.tokens < 7)).all())


def test_check_false_out_of_range_deterministic_reference_matches_cpu():
    x, p, _ = _out_of_range_case()
    with sk.use_backend("cpu"):
        res = sk.verify_chain(x, p, None, seed=1, check=False)
    assert_same(res, ref.verify_chain(x, p, None, seed=1, check=False))


def test_raw_op_checks_raise():
    # Direct torch.ops calls bypass the Python checks; the C++ checks still name the argument.
    x, p, q = _varied_case(B=2, V=5, K=3)
    s = torch.zeros(2, dtype=torch.long)
    op = torch.ops.specdec.verify_chain
    with pytest.raises(RuntimeError, match="num_draft"):
        op(x, p, q, torch.tensor([1, 2], dtype=torch.int32), s, s, True)
    with pytest.raises(RuntimeError, match="seed"):
        op(x, p, q, None, s[:1], s, True)
    with pytest.raises(RuntimeError, match="draft_probs"):
        op(x, p, q.half(), None, s, s, True)
    with pytest.raises(RuntimeError, match="target_probs"):
        op(x, p[:, :2], q, None, s, s, True)
    with pytest.raises(RuntimeError, match="target_logits"):
        torch.ops.specdec.verify_chain_greedy(x, p[:, :2], None)


@pytest.mark.cuda
def test_device_mismatch_cuda():
    g = _good()
    x, p, q = g["draft_tokens"], g["target_probs"].cuda(), g["draft_probs"].cuda()
    with pytest.raises(ValueError, match="draft_tokens"):
        sk.verify_chain(x, p, q, seed=0)
    with pytest.raises(ValueError, match="draft_probs"):
        sk.verify_chain(x.cuda(), p, q.cpu(), seed=0)
    with pytest.raises(ValueError, match="num_draft"):
        sk.verify_chain(x.cuda(), p, q, num_draft=torch.tensor([1, 2]), seed=0)
    with pytest.raises(ValueError, match="seed"):
        sk.verify_chain(x.cuda(), p, q, seed=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="offset"):
        sk.verify_chain(x.cuda(), p, q, seed=0, offset=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="draft_tokens"):
        sk.verify_chain_greedy(x, p)


def test_cpp_status_names_missing_extension(monkeypatch):
    # Without a built _C the status says so plainly (not Python's "circular import" message).
    import importlib.util

    from specdec_kernels import _backend

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.endswith("._C") else real(name, *a))
    loaded, with_cuda, msg = _backend.cpp_status.__wrapped__()
    assert (loaded, with_cuda) == (False, False)
    assert "not built" in msg and "pip install" in msg
