"""verify_chain(rule="block"), block verification (docs/algorithms.md §9): the rule's exactness by
exact enumeration, the emitted law and the correction's conditional law of every backend (with
negative controls the tests must reject), expected tokens per round, equality with the reference
on every backend, K = 1 = rule "token", input checks, torch.compile and CUDA graphs."""

from __future__ import annotations

import functools

import pytest
import torch
from chain_cases import (
    DET_NEXT,
    DIST_CASES,
    DRAFT,
    N_DEFAULT,
    N_SLOW,
    SMALL_N,
    START,
    TARGET,
    VARIANTS_BY_NAME,
    _assert_exact,
    _bad_cases,
    _build_case,
    _n_samples,
    _varied_case,
    check_structure,
    chi2_stat,
    exact_law,
    make_chain,
    simulate,
)
from chain_exact import RULES, ToyModel, block_h, round_law, tvd
from helpers import capture_cuda_graph, to_device, with_generator
from scipy import stats

import specdec_kernels as sk
import specdec_kernels.reference as ref
from specdec_kernels import VERIFY_CHAIN_OFFSET_STRIDE as STRIDE
from specdec_kernels.testing import assert_same

TRITON_FAMILY = "chain"  # conftest: the triton params need specdec_kernels.triton.chain


# ----------------------------------------------------------------------------------------------
# The rule itself, by exact enumeration (float64; tests/chain_exact.py)
# ----------------------------------------------------------------------------------------------


def _random_models(n, V=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        # Sharp, context-dependent tables (temperature 2 logits) so that w_i, h_i and the weighted
        # residuals take values far from 0 and 1.
        P = torch.softmax(2 * torch.randn(V, V, generator=g, dtype=torch.float64), -1)
        Q = torch.softmax(2 * torch.randn(V, V, generator=g, dtype=torch.float64), -1)
        out.append(ToyModel(P, Q))
    return out


TOY = ToyModel(TARGET, DRAFT)
TOY_DET = ToyModel(TARGET, next_token=DET_NEXT)
RANDOM = _random_models(12)


@pytest.mark.parametrize("K", [1, 2, 3])
def test_enumeration_block_is_exact(K):
    # The law of the first K + 1 emitted tokens equals the target's, to float64 rounding, on the toy
    # model of the distribution tests (stochastic and deterministic drafts) and on random ones.
    L = K + 1
    for m in [TOY, TOY_DET] + RANDOM:
        for rule in ("token", "block"):
            assert tvd(m.emitted_law(START, L, K, rule), m.target_law(START, L)) < 1e-13, rule


def test_enumeration_block_never_worse_than_token():
    # E[tokens per round]: block >= token everywhere; equal for K = 1 and for deterministic drafts
    # (both accept x_1..x_i with probability p(x_1..x_i)); strictly more on stochastic drafts here.
    gains = []
    for m in [TOY] + RANDOM:
        for K in (1, 2, 3):
            e_tok, e_blk = m.expected_tokens(START, K, "token"), m.expected_tokens(START, K, "block")
            assert e_blk >= e_tok - 1e-12
            if K == 1:
                assert e_blk == pytest.approx(e_tok, abs=1e-12)
            else:
                gains.append(e_blk - e_tok)
    assert min(gains) >= 0 and max(gains) > 0.05
    for K in (1, 2, 3):
        assert TOY_DET.expected_tokens(START, K, "block") == pytest.approx(
            TOY_DET.expected_tokens(START, K, "token"), abs=1e-12)
    # Fixed figures of the toy model (tokens per round from context 0), as recorded in docs.
    assert TOY.expected_tokens(START, 3, "token") == pytest.approx(1.7028, abs=1e-4)
    assert TOY.expected_tokens(START, 3, "block") == pytest.approx(1.8715, abs=1e-4)


def test_enumeration_negative_controls_are_biased():
    # The two classic mistakes are visibly wrong in exact arithmetic: a forward scan (stop at the
    # first failed eta_i) distorts the joint law badly; the unweighted correction max(0, p - q)
    # after a partial acceptance only slightly (which is why the conditional test below exists).
    L, K = 4, 3
    fwd = tvd(TOY.emitted_law(START, L, K, "block_forward"), TOY.target_law(START, L))
    unw = tvd(TOY.emitted_law(START, L, K, "block_unweighted"), TOY.target_law(START, L))
    assert fwd > 0.1
    assert 1e-4 < unw < 1e-2
    assert set(RULES) == {"token", "block", "block_forward", "block_unweighted"}


# ----------------------------------------------------------------------------------------------
# Plain-torch samplers of the rule: a positive control and the two negative controls
# ----------------------------------------------------------------------------------------------


def torch_block_verify(x, p, q, nd, seed, offset, *, bias=None):
    """Block verification in plain torch, float64, own RNG: bias=None (exact), "forward_scan" or
    "unweighted_residual" (negative controls)."""
    g = torch.Generator().manual_seed(int(seed if isinstance(seed, int) else seed[0]) * 31 +
                                      int(offset if isinstance(offset, int) else offset[0]))
    M, K = x.shape
    V = p.shape[-1]
    tokens = torch.full((M, K + 1), -1, dtype=torch.long)
    nacc = torch.zeros(M, dtype=torch.long)
    eta = torch.rand(M, max(K, 1), generator=g, dtype=torch.float64)
    for b in range(M):
        n = int(nd[b]) if nd is not None else K
        xs = [int(t) for t in x[b, :n]]
        ps = [p[b, i].double() for i in range(n + 1)]
        qs = [q[b, i].double() if q is not None else torch.nn.functional.one_hot(x[b, i], V).double()
              for i in range(n)]
        w, h = block_h(ps, qs, xs)
        hh = [1.0] + h  # hh[i] = h_i
        if bias == "forward_scan":
            tau = 0
            while tau < n and eta[b, tau] <= hh[tau + 1]:
                tau += 1
        else:
            tau = max([i for i in range(1, n + 1) if eta[b, i - 1] <= hh[i]], default=0)
        if tau == n:
            row = ps[n]
        else:
            wt = 1.0 if bias == "unweighted_residual" else w[tau]
            row = torch.clamp(wt * ps[tau] - qs[tau], min=0.0)
            if float(row.sum()) <= 0:
                row = ps[tau]
        tokens[b, :tau] = x[b, :tau]
        tokens[b, tau] = int(torch.multinomial(row, 1, generator=g))
        nacc[b] = tau
    return tokens, nacc


def block_verify(x, p, q, nd, seed, offset):
    res = sk.verify_chain(x, p, q, num_draft=nd, seed=seed, offset=offset, rule="block")
    return res.tokens, res.num_accepted


# ----------------------------------------------------------------------------------------------
# The emitted law of every backend (the toy Markov model of tests/chain_cases.py)
# ----------------------------------------------------------------------------------------------

# The law cases of rule "token" (tests/test_chain_law.py) but K = 1, where the two rules coincide.
LAW_CASES = [c for c in DIST_CASES if c[1] > 1]


@pytest.mark.parametrize("name,K,drafts,ragged,seed_mode", LAW_CASES, ids=[c[0] for c in LAW_CASES])
def test_block_emitted_law_is_exact(backend, name, K, drafts, ragged, seed_mode):
    if backend.name == "reference" and name not in ("stochastic_K3", "deterministic_K3"):
        pytest.skip("reference: two main cases here (all run in test_block_emitted_law_is_exact_slow)")
    N = _n_samples(backend, N_DEFAULT)
    samples, info = simulate(block_verify, N=N, K=K, drafts=drafts, ragged=ragged, seed_mode=seed_mode,
                             gen_seed=5, device=backend.device)
    assert info["rejections"] > N // 10 and info["accepted"] > N // 10, info
    _assert_exact(samples, 2, info)


@pytest.mark.slow
@pytest.mark.parametrize("name,K,drafts,ragged,seed_mode", LAW_CASES, ids=[c[0] for c in LAW_CASES])
def test_block_emitted_law_is_exact_slow(backend, name, K, drafts, ragged, seed_mode):
    N = _n_samples(backend, N_SLOW)
    samples, info = simulate(block_verify, N=N, K=K, n_emit=3, drafts=drafts, ragged=ragged,
                             seed_mode=seed_mode, gen_seed=6, device=backend.device)
    _assert_exact(samples, 3, info)


@pytest.mark.parametrize("drafts", ["stochastic", "deterministic"])
def test_block_harness_positive_control(drafts):
    samples, info = simulate(lambda *a: torch_block_verify(*a), N=4000, K=3, drafts=drafts, gen_seed=7)
    _assert_exact(samples, 2, info)


def test_block_harness_negative_control_forward_scan():
    # A forward scan over block's h_i (token-like: stop at the first failed eta_i) must FAIL the law
    # test at the smallest sample size any backend uses.
    samples, info = simulate(lambda *a: torch_block_verify(*a, bias="forward_scan"), N=SMALL_N, K=3,
                             gen_seed=8)
    stat, thr, _ = chi2_stat(samples, exact_law(2))
    assert stat > thr, f"forward scan not detected: chi2 = {stat:.1f} < {thr:.1f}"


# ----------------------------------------------------------------------------------------------
# The correction's conditional law given tau, for one fixed draft
# ----------------------------------------------------------------------------------------------
#
# V = 3, K = 2, drafts x = (0, 2). w_1 = p_0(0) / q_0(0) = 0.4; at tau = 1 the correction law is
# norm(max(0, 0.4 p_1 - q_1)) = (1, 0, 0), whereas the unweighted max(0, p_1 - q_1) gives
# (0.7, 0.3, 0): a joint-law test barely sees that mistake (it hides among the rounds), this one
# sees a cell of probability 0 filled 3% of the time.

COND_X = torch.tensor([0, 2])
COND_P = torch.tensor([[0.2, 0.5, 0.3], [0.45, 0.45, 0.1], [0.3, 0.3, 0.4]])
COND_Q = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.3, 0.6]])


def _cond_expected():
    """Joint law of (tau, emitted token) given the draft, flattened as tau * V + y."""
    ps = [r.double() for r in COND_P]
    qs = [r.double() for r in COND_Q]
    law = torch.zeros(3 * 3, dtype=torch.float64)
    for tau, row, pt in round_law(ps, qs, COND_X.tolist(), "block"):
        law[tau * 3:(tau + 1) * 3] = pt * row / row.sum()
    return law


def _cond_chi2(tokens, nacc):
    law = _cond_expected()
    y = tokens.gather(1, nacc[:, None]).squeeze(1)
    idx = nacc * 3 + y
    counts = torch.bincount(idx, minlength=law.numel()).double()
    N = idx.numel()
    zero = law == 0
    if float(counts[zero].sum()) > 0:
        return float("inf"), 0.0
    e = N * law[~zero]
    o = counts[~zero]
    stat = float(((o - e) ** 2 / e).sum())
    return stat, float(stats.chi2.ppf(1 - 1e-4, int((~zero).sum()) - 1))


def _cond_inputs(N):
    return (COND_X.expand(N, 2).contiguous(), COND_P.expand(N, 3, 3).contiguous(),
            COND_Q.expand(N, 2, 3).contiguous())


def test_block_correction_conditional_law(backend):
    N = _n_samples(backend, N_DEFAULT)
    x, p, q = to_device(_cond_inputs(N), backend.device)
    res = sk.verify_chain(x, p, q, seed=11, rule="block")
    nacc = res.num_accepted.cpu()
    assert int((nacc == 1).sum()) > N // 20  # the partial acceptance the test is about occurs
    stat, thr = _cond_chi2(res.tokens.cpu(), nacc)
    assert stat < thr, f"chi2 = {stat:.1f} >= {thr:.1f}: (tau, correction) law differs"


@pytest.mark.parametrize("bias,fails", [(None, False), ("unweighted_residual", True)])
def test_block_correction_conditional_law_controls(bias, fails):
    # Positive control passes; the unweighted correction FAILS at the smallest sample size used.
    x, p, q = _cond_inputs(SMALL_N)
    tokens, nacc = torch_block_verify(x, p, q, None, 3, 0, bias=bias)
    stat, thr = _cond_chi2(tokens, nacc)
    assert (stat > thr) == fails, (bias, stat, thr)


# ----------------------------------------------------------------------------------------------
# Expected tokens per round against the exact computation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["token", "block"])
def test_mean_tokens_per_round_matches_exact(backend, rule):
    # One round from context 0 with drafts drawn from the toy drafter, K = 3: the mean of tau + 1
    # over N rounds agrees with the enumeration (1.7028 token, 1.8715 block) within 5 standard errors.
    N = _n_samples(backend, N_DEFAULT) * 2
    g = torch.Generator().manual_seed(12)
    K = 3
    chain = [torch.full((N,), START)]
    for _ in range(K):
        chain.append(torch.multinomial(DRAFT[chain[-1]], 1, generator=g).squeeze(1))
    chain = torch.stack(chain, 1)
    x, p, q = chain[:, 1:], TARGET[chain], DRAFT[chain[:, :K]]
    res = sk.verify_chain(*to_device((x, p, q), backend.device), seed=13, rule=rule)
    t = res.num_accepted.cpu().double() + 1
    exact = TOY.expected_tokens(START, K, rule)
    se = float(t.std()) / N**0.5
    assert abs(float(t.mean()) - exact) < 5 * se, (float(t.mean()), exact, se)


# ----------------------------------------------------------------------------------------------
# Equality with the reference on every backend
# ----------------------------------------------------------------------------------------------

GRID = [(V, B, K) for V in (1, 7, 111, 32000) for B in (1, 3, 33) for K in (0, 1, 5)
        if not (V == 32000 and B == 33)]
VARIANTS = ["ragged", "ragged_int32", "no_q", "no_q_ragged", "fp16", "bf16", "bf16_no_q_ragged",
            "seed_tensor", "offset_tensor", "seed_and_offset_tensor_ragged", "big_seed_offset", "generator",
            "strided", "ragged_V32000", "no_q_V32000", "bf16_seed_tensor_V32000", "fp16_no_q_V7_ragged"]


def _special(kind: str, B=33, K=5, V=111):
    """Inputs that reach the rule's corner cases: p == q (w stays 1, m_i = 0 = den), one-hot rows,
    rows with zeros where the drafter has mass."""
    inputs = make_chain(B, K, V, seed=77)
    p, q = inputs["target_probs"], inputs["draft_probs"]
    if kind == "p_equals_q":
        q = p[:, :K].clone()
        x = torch.multinomial(q.reshape(-1, V), 1, generator=torch.Generator().manual_seed(1)).reshape(B, K)
        inputs["draft_tokens"] = x
    elif kind == "one_hot":
        hot = torch.nn.functional.one_hot(p.argmax(-1), V).float()
        p = torch.where(torch.arange(B)[:, None, None] % 2 == 0, hot, p)
    elif kind == "zeros":
        keep = torch.rand(B, K + 1, V, generator=torch.Generator().manual_seed(2)) < 0.5
        p = p * keep
        p = p / p.sum(-1, keepdim=True)
    inputs.update(target_probs=p, draft_probs=q)
    return inputs


SPECIAL = ["p_equals_q", "one_hot", "zeros"]


@functools.cache
def _case(V, B, K, variant):
    if variant in SPECIAL:
        inputs, kw = _special(variant), dict(seed=5, offset=2)
    else:
        opts = dict(VARIANTS_BY_NAME[variant][3]) if variant else {}
        inputs, kw = _build_case(V, B, K, opts, case_seed=V * 10_000 + B * 100 + K + 1)
    return inputs, kw, ref.verify_chain(**inputs, **with_generator(kw), rule="block", check=False)


def _run_case(backend, V, B, K, variant=None):
    inputs, kw, expected = _case(V, B, K, variant)
    check_structure(expected, inputs)
    d = backend.device
    res = sk.verify_chain(**to_device(inputs, d), **to_device(with_generator(kw), d), rule="block")
    assert res.tokens.device.type == d.type
    check_structure(res, inputs)
    assert_same(res, expected)


@pytest.mark.parametrize("V,B,K", GRID, ids=[f"V{V}-B{B}-K{K}" for V, B, K in GRID])
def test_block_matches_reference(backend, V, B, K):
    _run_case(backend, V, B, K)


@pytest.mark.parametrize("variant", VARIANTS + SPECIAL)
def test_block_matches_reference_variants(backend, variant):
    if variant in SPECIAL:
        _run_case(backend, 111, 33, 5, variant)
    else:
        V, B, K, _ = VARIANTS_BY_NAME[variant]
        _run_case(backend, V, B, K, variant)


def test_block_cases_reach_every_outcome():
    # The equality tests are meaningful only if every tau in 0..K occurs, weighed rows included
    # (0 < tau < K), and the corner cases do what they are there for.
    taus = torch.cat([_case(111, 33, 5, v)[2].num_accepted for v in ("ragged", "bf16", "seed_tensor")])
    assert set(range(6)) <= set(taus.tolist())
    assert bool((_case(111, 33, 5, "p_equals_q")[2].num_accepted == 5).all())  # p == q accepts all


@pytest.mark.parametrize("drafts", ["stochastic", "deterministic"])
def test_block_k1_equals_token(backend, drafts):
    # With one draft the two rules are the same rule, down to the draws.
    inputs = make_chain(65, 1, 111, seed=31, stochastic=drafts == "stochastic", ragged=True)
    d = backend.device
    a = sk.verify_chain(**to_device(inputs, d), seed=3, offset=6, rule="block")
    b = sk.verify_chain(**to_device(inputs, d), seed=3, offset=6, rule="token")
    assert_same(a, b)


def test_block_differs_from_token_for_k_above_1():
    # ... and with more drafts they are different rules (same draws, other decisions).
    inputs = make_chain(200, 4, 50, seed=32)
    a = sk.verify_chain(**inputs, seed=3, rule="block")
    b = sk.verify_chain(**inputs, seed=3, rule="token")
    assert not torch.equal(a.num_accepted, b.num_accepted)
    assert float(a.num_accepted.double().mean()) > float(b.num_accepted.double().mean())


def test_block_check_false_out_of_range_drafts(backend):
    # check=False with out-of-range drafts: no crash, and the same result as the reference (the
    # valid prefix ends at the first bad draft, which is never read).
    inputs = make_chain(33, 5, 111, seed=41)
    x = inputs["draft_tokens"].clone()
    x[::3, 2] = 10**6
    x[1::3, 0] = -7
    inputs["draft_tokens"] = x
    for draft_probs in (inputs["draft_probs"], None):
        kw = dict(inputs, draft_probs=draft_probs)
        expected = ref.verify_chain(**kw, seed=2, rule="block", check=False)
        assert_same(sk.verify_chain(**to_device(kw, backend.device), seed=2, rule="block", check=False),
                    expected)


def test_block_large_batch_matches_cpu(backend):
    if backend.name in ("reference", "cpu"):
        pytest.skip("the cpu backend is the oracle here (checked against the reference above)")
    if "cpu" not in sk.backends("cpu"):
        pytest.skip("needs the compiled cpu backend as the oracle")
    inputs = make_chain(8193, 3, 5, seed=21, ragged=True)
    with sk.use_backend("cpu"):
        expected = sk.verify_chain(**inputs, seed=4, rule="block")
    assert_same(sk.verify_chain(**to_device(inputs, backend.device), seed=4, rule="block"), expected)


def test_block_same_seed_offset_identical_and_offsets_differ(backend):
    x, p, q = to_device(_varied_case(), backend.device)
    a = sk.verify_chain(x, p, q, seed=5, offset=4, rule="block")
    assert_same(a, sk.verify_chain(x, p, q, seed=5, offset=4, rule="block"))
    b = sk.verify_chain(x, p, q, seed=5, offset=4 + STRIDE, rule="block")
    assert not torch.equal(a.tokens.cpu(), b.tokens.cpu())


# ----------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [sk.verify_chain, ref.verify_chain], ids=["public", "reference"])
@pytest.mark.parametrize("rule", ["tree", "Block", None, 1])
def test_bad_rule_raises(fn, rule):
    x, p, q = _varied_case(B=2, V=5, K=3)
    with pytest.raises(ValueError, match=r"rule must be one of 'token', 'block'"):
        fn(x, p, q, seed=0, rule=rule)


@pytest.mark.parametrize("changes,match", _bad_cases())
def test_block_bad_inputs(backend, changes, match):
    # Every check of rule "token" holds for rule "block", on every backend (the cpu kernel checks
    # the values it reads itself).
    x, p, q = _varied_case(B=2, V=5, K=3)
    kw = to_device({"draft_tokens": x, "target_probs": p, "draft_probs": q, "seed": 0, **changes},
                   backend.device)
    with pytest.raises(ValueError, match=match):
        sk.verify_chain(**kw, rule="block")


# ----------------------------------------------------------------------------------------------
# torch.compile, fake implementations, CUDA graphs
# ----------------------------------------------------------------------------------------------


def test_opcheck_verify_chain_block():
    x, p, q = _varied_case(B=3, V=7, K=2)
    s = torch.arange(3)
    o = torch.zeros(3, dtype=torch.long)
    nd = torch.tensor([0, 1, 2])
    torch.library.opcheck(torch.ops.specdec.verify_chain_block.default, (x, p, q, nd, s, o, True))
    torch.library.opcheck(torch.ops.specdec.verify_chain_block.default, (x, p, None, None, s, o, False))


def test_torch_compile_fullgraph_block_cpu():
    x, p, q = _varied_case(B=4, V=7, K=3)
    s = torch.arange(4)
    o = torch.zeros(4, dtype=torch.long)

    def f(x, p, q, s, o):
        return torch.ops.specdec.verify_chain_block(x, p, q, None, s, o, False)

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    for off in (0, STRIDE):
        o.fill_(off)
        assert_same(cf(x, p, q, s, o), f(x, p, q, s, o))


@pytest.mark.cuda
def test_block_cuda_graph_capture_replay(cuda_backend):
    d = cuda_backend.device
    x, p, q = to_device(_varied_case(), d)
    B = x.shape[0]
    seed = torch.arange(B, device=d) * 13 + 1
    offset = torch.zeros(B, dtype=torch.long, device=d)

    def step():
        return sk.verify_chain(x, p, q, seed=seed, offset=offset, rule="block", check=False)

    graph, static = capture_cuda_graph(step)
    for r in range(3):
        offset.fill_(r * STRIDE)
        graph.replay()
        torch.cuda.synchronize()
        assert_same(static, sk.verify_chain(x, p, q, seed=seed, offset=offset.clone(), rule="block"))


# ----------------------------------------------------------------------------------------------
# Near-ties: the cpu kernel decides most weighed positions from a fast float64 sum and falls back
# to the exact fixed-point mass only when that sum is within 1e-9 of the threshold
# t = eta (1 - w) / (1 - eta): inputs built to land there must still give the reference's result.
# ----------------------------------------------------------------------------------------------


def _near_tie_case(seed: int, V: int, nudge: int):
    """B = 1, K = 2, V >= 3001: w_1 = 0.625 and the residual of row 1 has mass t +- ulps."""
    from specdec_kernels.reference._philox import draw_uniform

    eta1, eta2 = draw_uniform(torch.tensor(seed), torch.tensor(0), 0, torch.tensor(0),
                              torch.arange(2)).tolist()
    w1 = 0.625
    if not eta1 < w1:
        return None
    t = eta1 * (1 - w1) / (1 - eta1)
    f32 = lambda v: float(torch.tensor(v, dtype=torch.float64).to(torch.float32))  # noqa: E731
    a = f32(t / w1 * (1 - 1e-6))
    r0 = f32(w1 * a)
    b = f32((t - r0) / w1)
    b = float(torch.nextafter(torch.tensor(b), torch.tensor(2.0 if nudge > 0 else 0.0))) if nudge else b
    if a + b >= 1 or not eta2 >= f32(w1 * (1 - a - b)):
        return None
    p = torch.zeros(1, 3, V)
    q = torch.zeros(1, 2, V)
    p[0, 0, :3] = torch.tensor([0.5, 0.25, 0.25])
    q[0, 0, :3] = torch.tensor([0.8, 0.1, 0.1])
    p[0, 1, 5], p[0, 1, 3000], p[0, 1, V - 1] = a, b, 1 - a - b
    q[0, 1, V - 1] = 1.0
    p[0, 2, 7] = 1.0
    m = f32(w1 * a) + f32(w1 * b)
    return dict(draft_tokens=torch.tensor([[0, V - 1]]), target_probs=p, draft_probs=q), m, t


def test_block_near_tie_matches_reference(backend):
    found = 0
    for seed in range(200):
        for nudge in (-1, 0, 1):
            case = _near_tie_case(seed, 4099, nudge)
            if case is None:
                continue
            inputs, m, t = case
            assert abs(m - t) < 1e-9 * t  # inside the band where the exact mass decides
            expected = ref.verify_chain(**inputs, seed=seed, rule="block", check=False)
            got = sk.verify_chain(**to_device(inputs, backend.device), seed=seed, rule="block", check=False)
            assert_same(got, expected)
            found += 1
        if found >= 12:
            break
    assert found >= 12
