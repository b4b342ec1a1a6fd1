"""verify_chain / verify_chain_greedy: equality with the reference on every backend, the exactness of
the emitted law (distribution tests with a negative control), golden cases, determinism, input
checks, torch.compile and CUDA graphs."""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import (
    ROW_SUM_TOL,
    assert_row_sum_tolerance,
    capture_cuda_graph,
    to_device,
    with_generator,
)
from scipy import stats

import specdec_kernels as sk
import specdec_kernels.reference as ref
from specdec_kernels import VERIFY_CHAIN_OFFSET_STRIDE as STRIDE

TRITON_FAMILY = "chain"  # conftest: the triton params need specdec_kernels.triton.chain


# ----------------------------------------------------------------------------------------------
# Random inputs
# ----------------------------------------------------------------------------------------------


def make_chain(B, K, V, *, seed, dtype=torch.float32, stochastic=True, ragged=False):
    """Random chain-verification inputs on the CPU where both accept and reject paths run.

    p = softmax(z), q = softmax(z + 0.5 * noise): q is close to p, so drafts drawn from q are
    accepted often but not always. Deterministic drafts (no q) are the argmax of the noisy
    logits: usually p's mode, sometimes not. Ragged rows get num_draft in [0, K] and -1 padding.
    """
    g = torch.Generator().manual_seed(seed)
    z = 3.0 * torch.randn(B, K + 1, V, generator=g)
    zq = z[:, :K] + 0.5 * torch.randn(B, K, V, generator=g)
    p = torch.softmax(z, -1)
    q = torch.softmax(zq, -1)
    if stochastic:
        x = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, K) if K else \
            torch.zeros(B, 0, dtype=torch.long)
    else:
        x = zq.argmax(-1)
    nd = None
    if ragged:
        nd = torch.randint(0, K + 1, (B,), generator=g)
        x = torch.where(torch.arange(K)[None, :] < nd[:, None], x, torch.full_like(x, -1))
    return dict(draft_tokens=x, target_probs=p.to(dtype), draft_probs=q.to(dtype) if stochastic else None,
                num_draft=nd)


def check_structure(res, inputs):
    """Invariants of a ChainResult whatever the randomness: accepted prefix = drafts, one emitted
    token in range after it, -1 padding after that, 0 <= num_accepted <= num_draft."""
    x = inputs["draft_tokens"].cpu()
    B, K = x.shape
    V = inputs["target_probs"].shape[-1]
    nd = inputs.get("num_draft")
    nd = torch.full((B,), K) if nd is None else nd.cpu().long()
    tokens, n = res.tokens.cpu(), res.num_accepted.cpu()
    assert tokens.shape == (B, K + 1) and tokens.dtype == torch.long
    assert n.shape == (B,) and n.dtype == torch.long
    assert bool(((n >= 0) & (n <= nd)).all())
    pos = torch.arange(K + 1)[None, :]
    xp = torch.cat([x, torch.full((B, 1), -1)], 1)
    assert torch.equal(torch.where(pos < n[:, None], tokens, 0), torch.where(pos < n[:, None], xp, 0))
    emitted = tokens.gather(1, n[:, None]).squeeze(1)
    assert bool(((emitted >= 0) & (emitted < V)).all())
    assert bool((tokens[pos > n[:, None]] == -1).all())


def assert_same(res, exp):
    assert torch.equal(res.num_accepted.cpu(), exp.num_accepted.cpu()), (res, exp)
    assert torch.equal(res.tokens.cpu(), exp.tokens.cpu()), (res, exp)


# ----------------------------------------------------------------------------------------------
# Equality with the reference
# ----------------------------------------------------------------------------------------------

# V = 32000 only with small B: the reference is a Python loop.
GRID = [(V, B, K) for V in (1, 7, 111, 32000) for B in (1, 3, 33) for K in (0, 1, 5)
        if not (V == 32000 and B == 33)]

# Variants on top of the base case; each is (name, V, B, K, options).
VARIANTS = [
    ("ragged", 111, 33, 5, dict(ragged=True)),
    ("ragged_int32", 111, 33, 5, dict(ragged=True, nd_dtype=torch.int32)),
    ("no_q", 111, 33, 5, dict(stochastic=False)),
    ("no_q_ragged", 111, 33, 5, dict(stochastic=False, ragged=True)),
    ("fp16", 111, 33, 5, dict(dtype=torch.float16)),
    ("bf16", 111, 33, 5, dict(dtype=torch.bfloat16)),
    ("bf16_no_q_ragged", 111, 33, 5, dict(dtype=torch.bfloat16, stochastic=False, ragged=True)),
    ("seed_tensor", 111, 33, 5, dict(seed="tensor")),
    ("seed_0d_tensor", 111, 33, 5, dict(seed="0d")),
    ("offset_tensor", 111, 33, 5, dict(offset="tensor")),
    ("offset_0d_tensor", 111, 33, 5, dict(offset="0d")),
    ("seed_and_offset_tensor_ragged", 111, 33, 5, dict(seed="tensor", offset="tensor", ragged=True)),
    ("big_seed_offset", 111, 33, 5, dict(seed=2**63 - 1, offset=2**40 + 6)),
    ("generator", 111, 33, 5, dict(seed="generator")),
    ("strided", 111, 33, 5, dict(strided=True)),
    ("ragged_V32000", 32000, 3, 5, dict(ragged=True)),
    ("no_q_V32000", 32000, 3, 5, dict(stochastic=False)),
    ("bf16_seed_tensor_V32000", 32000, 3, 5, dict(dtype=torch.bfloat16, seed="tensor")),
    ("fp16_no_q_V7_ragged", 7, 33, 5, dict(dtype=torch.float16, stochastic=False, ragged=True)),
]


def _build_case(V, B, K, opts, case_seed):
    inputs = make_chain(B, K, V, seed=case_seed, dtype=opts.get("dtype", torch.float32),
                        stochastic=opts.get("stochastic", True), ragged=opts.get("ragged", False))
    if "nd_dtype" in opts:
        inputs["num_draft"] = inputs["num_draft"].to(opts["nd_dtype"])
    if opts.get("strided"):
        # Non-contiguous probabilities (a slice of larger buffers along K and V).
        for name, k in (("target_probs", K + 1), ("draft_probs", K)):
            t = inputs[name]
            big = torch.zeros(B, k + 2, V + 3, dtype=t.dtype)
            big[:, 1:k + 1, 2:V + 2] = t
            inputs[name] = big[:, 1:k + 1, 2:V + 2]
            assert not inputs[name].is_contiguous()
    seed, offset = opts.get("seed", 1234 + case_seed), opts.get("offset", 0)
    if seed == "tensor":
        seed = torch.arange(B, dtype=torch.long) * 1_000_003 + 17
    elif seed == "0d":
        seed = torch.tensor(99, dtype=torch.long)
    if offset == "tensor":
        offset = torch.arange(B, dtype=torch.long) * STRIDE + 2**33
    elif offset == "0d":
        offset = torch.tensor(4, dtype=torch.long)
    kw = dict(offset=offset)
    if seed == "generator":
        kw["generator"] = 5  # a placeholder; a fresh torch.Generator is made per call
    else:
        kw["seed"] = seed
    return inputs, kw


@functools.cache
def _case(V, B, K, variant):
    """(inputs, kwargs, reference result): the reference runs once per case, whatever the backend."""
    opts = dict(VARIANTS_BY_NAME[variant][3]) if variant else {}
    inputs, kw = _build_case(V, B, K, opts, case_seed=V * 10_000 + B * 100 + K)
    expected = ref.verify_chain(**inputs, **with_generator(kw))
    return inputs, kw, expected


VARIANTS_BY_NAME = {name: (V, B, K, opts) for name, V, B, K, opts in VARIANTS}


def _run_case(backend, V, B, K, variant=None):
    inputs, kw, expected = _case(V, B, K, variant)
    check_structure(expected, inputs)
    d = backend.device
    res = sk.verify_chain(**to_device(inputs, d), **to_device(with_generator(kw), d))
    assert res.tokens.device.type == backend.device.type
    check_structure(res, inputs)
    assert_same(res, expected)


@pytest.mark.parametrize("V,B,K", GRID, ids=[f"V{V}-B{B}-K{K}" for V, B, K in GRID])
def test_verify_chain_matches_reference(backend, V, B, K):
    _run_case(backend, V, B, K)


@pytest.mark.parametrize("variant", [v[0] for v in VARIANTS])
def test_verify_chain_matches_reference_variants(backend, variant):
    V, B, K, _ = VARIANTS_BY_NAME[variant]
    _run_case(backend, V, B, K, variant)


def test_random_inputs_exercise_accept_and_reject():
    # The equality tests are only meaningful if both paths run: partial acceptance must occur.
    for variant in ("ragged", "no_q", "bf16"):
        V, B, K, _ = VARIANTS_BY_NAME[variant]
        inputs, _, expected = _case(V, B, K, variant)
        n = expected.num_accepted
        nd = inputs["num_draft"] if inputs["num_draft"] is not None else torch.full_like(n, K)
        assert bool((n < nd).any()), f"{variant}: no rejection"
        assert bool((n > 0).any()), f"{variant}: no acceptance"


@pytest.mark.parametrize("rule", ["token", "block"])
def test_ignored_positions_are_not_read(backend, rule):
    # Entries beyond num_draft are ignored: poison them (NaN probabilities, garbage tokens) and the
    # result must equal the clean one, with check=True (the checks must skip them too), whatever
    # the rule.
    V, B, K = 111, 33, 5
    clean = make_chain(B, K, V, seed=3, ragged=True)
    nd = clean["num_draft"]
    dirty = {k: (v.clone() if v is not None else None) for k, v in clean.items()}
    pos = torch.arange(K + 1)[None, :]
    dirty["target_probs"][pos > nd[:, None]] = float("nan")
    dirty["draft_probs"][pos[:, :K] >= nd[:, None]] = -1.0
    dirty["draft_tokens"][pos[:, :K] >= nd[:, None]] = 10**9
    expected = ref.verify_chain(**clean, seed=8, rule=rule)
    res = sk.verify_chain(**to_device(dirty, backend.device), seed=8, rule=rule)
    assert_same(res, expected)


def test_large_batch_matches_cpu(backend):
    # Launch configuration at a large batch just above a power of two (grid limits, rows packed per
    # program, tails). The reference loop is too slow for 8193 rows, so the cpu backend is the
    # oracle here; it is itself checked bitwise against the reference on the first rows.
    if backend.name == "reference":
        pytest.skip("the reference is the oracle's oracle: checked on the first rows below, not 8193")
    if "cpu" not in sk.backends("cpu"):
        pytest.skip("needs the compiled cpu backend as the oracle")
    B, K, V = 8193, 3, 5
    inputs = make_chain(B, K, V, seed=21, ragged=True)
    greedy_inputs = dict(draft_tokens=inputs["draft_tokens"], target_logits=inputs["target_probs"],
                         num_draft=inputs["num_draft"])
    with sk.use_backend("cpu"):
        expected = sk.verify_chain(**inputs, seed=4)
        expected_greedy = sk.verify_chain_greedy(**greedy_inputs)
    # An int seed gives row b stream b, so the first rows alone draw what they draw in the batch.
    head = {k: (v[:40] if v is not None else None) for k, v in inputs.items()}
    assert_same(ref.verify_chain(**head, seed=4),
                sk.ChainResult(expected.tokens[:40], expected.num_accepted[:40]))
    assert_same(sk.verify_chain(**to_device(inputs, backend.device), seed=4), expected)
    assert_same(sk.verify_chain_greedy(**to_device(greedy_inputs, backend.device)), expected_greedy)


def make_greedy(B, K, V, *, seed, dtype=torch.float32, ties=False, ragged=False):
    """Greedy inputs: drafts equal the argmax 80% of the time; with ``ties`` the logits are small
    integers so argmax ties are frequent (and drafts may pick a tied index that is not the first)."""
    g = torch.Generator().manual_seed(seed)
    if ties:
        logits = torch.randint(0, 3, (B, K + 1, V), generator=g).float()
        # draft: a random index among the tied maxima of each row (often not the first one)
        is_max = logits[:, :K] == logits[:, :K].amax(-1, keepdim=True)
        x = torch.multinomial(is_max.reshape(-1, V).float(), 1, generator=g).reshape(B, K) if K else \
            torch.zeros(B, 0, dtype=torch.long)
    else:
        logits = 2.0 * torch.randn(B, K + 1, V, generator=g)
        x = logits[:, :K].to(dtype).float().argmax(-1)
    wrong = torch.rand(B, K, generator=g) < 0.2
    x = torch.where(wrong, torch.randint(0, V, (B, K), generator=g), x)
    nd = None
    if ragged:
        nd = torch.randint(0, K + 1, (B,), generator=g)
        x = torch.where(torch.arange(K)[None, :] < nd[:, None], x, torch.full_like(x, -1))
    if V > 2:
        logits[0, 0, 1] = float("-inf")  # masked entries are ordinary values for argmax
    return dict(draft_tokens=x, target_logits=logits.to(dtype), num_draft=nd)


GREEDY_GRID = GRID
GREEDY_VARIANTS = [
    ("ragged", 111, 33, 5, dict(ragged=True)),
    ("ties", 7, 33, 5, dict(ties=True)),
    ("ties_ragged_V111", 111, 33, 5, dict(ties=True, ragged=True)),
    ("fp16", 111, 33, 5, dict(dtype=torch.float16)),
    ("bf16_ragged", 111, 33, 5, dict(dtype=torch.bfloat16, ragged=True)),
    ("bf16_V32000", 32000, 3, 5, dict(dtype=torch.bfloat16)),  # bf16 over 32000 entries: many ties
]


@functools.cache
def _greedy_case(V, B, K, variant):
    opts = dict(next(v[4] for v in GREEDY_VARIANTS if v[0] == variant)) if variant else {}
    inputs = make_greedy(B, K, V, seed=V * 10_000 + B * 100 + K, **opts)
    return inputs, ref.verify_chain_greedy(**inputs)


@pytest.mark.parametrize("V,B,K", GREEDY_GRID, ids=[f"V{V}-B{B}-K{K}" for V, B, K in GREEDY_GRID])
def test_verify_chain_greedy_matches_reference(backend, V, B, K):
    inputs, expected = _greedy_case(V, B, K, None)
    res = sk.verify_chain_greedy(**to_device(inputs, backend.device))
    check_structure(res, inputs | {"target_probs": inputs["target_logits"]})
    assert_same(res, expected)


@pytest.mark.parametrize("variant", [v[0] for v in GREEDY_VARIANTS])
def test_verify_chain_greedy_matches_reference_variants(backend, variant):
    V, B, K = next(v[1:4] for v in GREEDY_VARIANTS if v[0] == variant)
    inputs, expected = _greedy_case(V, B, K, variant)
    res = sk.verify_chain_greedy(**to_device(inputs, backend.device))
    check_structure(res, inputs | {"target_probs": inputs["target_logits"]})
    assert_same(res, expected)
    if variant.startswith("ties"):
        # the tie-breaking is actually exercised: some draft is a tied max that is not the first
        x, lg = inputs["draft_tokens"], inputs["target_logits"].float()
        K_ = x.shape[1]
        mx = lg[:, :K_].amax(-1)
        xv = lg[:, :K_].gather(-1, x.clamp(min=0)[..., None]).squeeze(-1)
        assert bool(((xv == mx) & (x != lg[:, :K_].argmax(-1)) & (x >= 0)).any())


# ----------------------------------------------------------------------------------------------
# Distribution: the emitted sequence has exactly the target's law
# ----------------------------------------------------------------------------------------------
#
# Toy language model on V = 4 tokens: the target's next-token law depends on the previous token
# (a Markov chain P[prev]); the drafter is another chain Q[prev], deliberately far from P so that
# rejections (and therefore corrections) are frequent and a wrong correction law is visible.
# Starting from context token 0, rounds of "draft K tokens, verify" are repeated until n tokens
# are emitted; the first n emitted tokens must have the law P[0][y1] * P[y1][y2] * ...

TARGET = torch.tensor([
    [0.60, 0.20, 0.10, 0.10],
    [0.10, 0.50, 0.30, 0.10],
    [0.25, 0.25, 0.25, 0.25],
    [0.10, 0.10, 0.20, 0.60],
])
DRAFT = torch.tensor([
    [0.10, 0.10, 0.20, 0.60],
    [0.40, 0.00, 0.20, 0.40],  # a zero where p > 0: that token is only reachable by correction
    [0.70, 0.10, 0.10, 0.10],
    [0.25, 0.25, 0.25, 0.25],
])
# Deterministic drafter (n-gram / greedy style): next token is a fixed function of the previous.
DET_NEXT = torch.tensor([0, 1, 3, 3])
START = 0
DV = TARGET.shape[0]


def exact_law(n):
    """Exact law of the first n tokens, flattened in row-major order over (y1, ..., yn)."""
    law = TARGET[START].double()
    for _ in range(n - 1):
        last = torch.arange(law.numel()) % DV  # last token of each flattened prefix
        law = (law[:, None] * TARGET.double()[last]).reshape(-1)
    return law


def simulate(verify, *, N, K, n_emit=2, drafts="stochastic", ragged=False, seed_mode="int",
             gen_seed=0, device="cpu"):
    """Run N independent decodings in one batch; return ([N, n_emit] tokens, stats).

    verify(x, p, q, num_draft, seed, offset) -> (tokens, num_accepted), on ``device``.
    seed_mode "int": one int seed per call (row streams), offset advanced by the stride each round.
    seed_mode "tensor": a seed per simulation that follows it across rounds (and batch positions).
    """
    g = torch.Generator().manual_seed(gen_seed)
    out = torch.full((N, n_emit), -1, dtype=torch.long)
    filled = torch.zeros(N, dtype=torch.long)
    ctx = torch.full((N,), START, dtype=torch.long)
    sim_seed = torch.arange(N, dtype=torch.long) * 7919 + 1000 * gen_seed + 1
    rows = torch.arange(N)
    n_rej = n_acc = 0
    rnd = 0
    while rows.numel():
        M = rows.numel()
        prev = ctx[rows]
        chain = [prev]
        for _ in range(K):
            prev = torch.multinomial(DRAFT[prev], 1, generator=g).squeeze(1) if drafts == "stochastic" \
                else DET_NEXT[prev]
            chain.append(prev)
        chain = torch.stack(chain, 1)  # [M, K+1]: context of each verified position
        x = chain[:, 1:]
        p = TARGET[chain[:, :K + 1]]
        q = DRAFT[chain[:, :K]] if drafts == "stochastic" else None
        nd = torch.randint(0, K + 1, (M,), generator=g) if ragged else None
        if nd is not None:
            x = torch.where(torch.arange(K)[None, :] < nd[:, None], x, torch.full_like(x, -1))
        if seed_mode == "int":
            seed, offset = 1000 + gen_seed, rnd * STRIDE
        else:
            seed, offset = sim_seed[rows], torch.full((M,), rnd * STRIDE, dtype=torch.long)
        tokens, nacc = verify(*to_device((x, p, q, nd, seed, offset), device))
        tokens, nacc = tokens.cpu(), nacc.cpu()
        lim = nd if nd is not None else torch.full((M,), K)
        n_rej += int((nacc < lim).sum())
        n_acc += int(nacc.sum())
        emitted = nacc + 1
        for j in range(K + 1):
            m = (j < emitted) & (filled[rows] + j < n_emit)
            out[rows[m], filled[rows[m]] + j] = tokens[m, j]
        filled[rows] += emitted
        ctx[rows] = tokens.gather(1, nacc[:, None]).squeeze(1)
        rows = rows[filled[rows] < n_emit]
        rnd += 1
    assert bool((out >= 0).all() and (out < DV).all())
    return out, dict(rejections=n_rej, accepted=n_acc, rounds=rnd)


def chi2_stat(samples, law):
    """(statistic, threshold at p = 1e-4, df); cells with expected count < 5 are pooled."""
    n_emit = samples.shape[1]
    idx = torch.zeros(samples.shape[0], dtype=torch.long)
    for j in range(n_emit):
        idx = idx * DV + samples[:, j]
    counts = torch.bincount(idx, minlength=law.numel()).double()
    N = samples.shape[0]
    expected = N * law
    assert float(counts[law == 0].sum()) == 0, "a sequence of probability 0 was emitted"
    small = expected < 5
    o = torch.cat([counts[~small], counts[small].sum().reshape(1)])
    e = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = e > 0
    o, e = o[keep], e[keep]
    stat = float(((o - e) ** 2 / e).sum())
    df = int(keep.sum()) - 1
    return stat, float(stats.chi2.ppf(1 - 1e-4, df)), df


def torch_verify(x, p, q, nd, seed, offset, *, bias=None):
    """Chain verification in plain torch (own RNG), optionally biased on purpose.

    bias=None: the exact algorithm (a positive control for the harness and the law).
    bias="correction_from_p": on rejection sample from p instead of the residual (or, for
    deterministic drafts, from p without removing the rejected draft): a classic bug.
    """
    g = torch.Generator().manual_seed(int(seed if isinstance(seed, int) else seed[0]) * 31 +
                                      int(offset if isinstance(offset, int) else offset[0]))
    M, K = x.shape
    n = nd if nd is not None else torch.full((M,), K)
    ar = torch.arange(M)
    if K:
        xc = x.clamp(min=0)
        px = p[:, :K].gather(2, xc[..., None]).squeeze(-1)
        qx = q.gather(2, xc[..., None]).squeeze(-1) if q is not None else torch.ones_like(px)
        u = torch.rand(M, K, generator=g)
        ok = (u * qx < px) & (torch.arange(K)[None, :] < n[:, None])
        a = torch.cumprod(ok.long(), 1).sum(1)
    else:
        a = torch.zeros(M, dtype=torch.long)
    row = p[ar, a]
    rejected = a < n
    dist = row.clone()
    if K and bias is None:
        if q is not None:
            resid = (row - q[ar, a.clamp(max=K - 1)]).clamp(min=0)
        else:
            resid = row.clone()
            resid[ar, xc[ar, a.clamp(max=K - 1)]] = 0
        dist = torch.where(rejected[:, None], resid, row)
    y = torch.multinomial(dist, 1, generator=g).squeeze(1)
    tokens = torch.full((M, K + 1), -1, dtype=torch.long)
    if K:
        tokens[:, :K] = torch.where(torch.arange(K)[None, :] < a[:, None], x, -1)
    tokens[ar, a] = y
    return tokens, a


def library_verify(x, p, q, nd, seed, offset):
    res = sk.verify_chain(x, p, q, num_draft=nd, seed=seed, offset=offset)
    return res.tokens, res.num_accepted


# Samples per distribution test. The reference costs ~5 ms per row (a Python loop), the Triton
# interpreter ~0.1 ms per row (it packs many rows per program), the compiled kernels microseconds.
# The negative controls below run at the smallest size, so every size has the power to catch a
# wrong correction law.
N_DEFAULT = {"reference": 500, "interpreted": 4000, "compiled": 20_000}
N_SLOW = {"reference": 3000, "interpreted": 30_000, "compiled": 300_000}
SMALL_N = min(N_DEFAULT.values())


def _n_samples(backend, table):
    if backend.name == "reference":
        return table["reference"]
    return table["interpreted" if backend.interpreted else "compiled"]


def _assert_exact(samples, n_emit, info):
    stat, thr, df = chi2_stat(samples, exact_law(n_emit))
    assert stat < thr, f"chi2 = {stat:.1f} >= {thr:.1f} (df {df}): emitted law differs from target ({info})"


DIST_CASES = [
    # name, K, drafts, ragged, seed_mode
    ("stochastic_K1", 1, "stochastic", False, "int"),  # bonus token is the 2nd emitted token
    ("stochastic_K3", 3, "stochastic", False, "int"),
    ("stochastic_K3_seed_tensor", 3, "stochastic", False, "tensor"),
    ("deterministic_K3", 3, "deterministic", False, "tensor"),
    ("ragged_K3", 3, "stochastic", True, "tensor"),
    ("ragged_deterministic_K2", 2, "deterministic", True, "int"),
]


@pytest.mark.parametrize("name,K,drafts,ragged,seed_mode", DIST_CASES, ids=[c[0] for c in DIST_CASES])
def test_emitted_law_is_exact(backend, name, K, drafts, ragged, seed_mode):
    if backend.name == "reference" and name not in ("stochastic_K3", "deterministic_K3", "ragged_K3"):
        pytest.skip("reference: three main cases only here (all run in test_emitted_law_is_exact_slow)")
    N = _n_samples(backend, N_DEFAULT)
    samples, info = simulate(library_verify, N=N, K=K, drafts=drafts, ragged=ragged, seed_mode=seed_mode,
                             gen_seed=1, device=backend.device)
    assert info["rejections"] > N // 10 and info["accepted"] > N // 10, info  # both paths ran
    _assert_exact(samples, 2, info)


@pytest.mark.slow
@pytest.mark.parametrize("name,K,drafts,ragged,seed_mode", DIST_CASES, ids=[c[0] for c in DIST_CASES])
def test_emitted_law_is_exact_slow(backend, name, K, drafts, ragged, seed_mode):
    # Three tokens (64 cells): the bonus path after K = 2 accepted drafts is part of the law, and
    # larger N tightens the check.
    N = _n_samples(backend, N_SLOW)
    samples, info = simulate(library_verify, N=N, K=max(K, 2), n_emit=3, drafts=drafts, ragged=ragged,
                             seed_mode=seed_mode, gen_seed=2, device=backend.device)
    _assert_exact(samples, 3, info)


@pytest.mark.parametrize("drafts", ["stochastic", "deterministic"])
def test_harness_positive_control(drafts):
    # The plain-torch exact algorithm passes the same check: the harness and exact_law are right.
    samples, info = simulate(lambda *a: torch_verify(*a), N=20_000, K=3, drafts=drafts, gen_seed=3)
    _assert_exact(samples, 2, info)


@pytest.mark.parametrize("drafts", ["stochastic", "deterministic"])
def test_harness_negative_control(drafts):
    # A biased verifier (correction drawn from p instead of the residual) must FAIL the check, at
    # the smallest sample size any backend uses: the distribution tests have power.
    samples, info = simulate(lambda *a: torch_verify(*a, bias="correction_from_p"), N=SMALL_N, K=3,
                             drafts=drafts, gen_seed=4)
    stat, thr, _ = chi2_stat(samples, exact_law(2))
    assert stat > thr, f"biased verifier not detected: chi2 = {stat:.1f} < {thr:.1f}"


# ----------------------------------------------------------------------------------------------
# Golden cases by hand
# ----------------------------------------------------------------------------------------------


def onehot(idx, V):
    return torch.nn.functional.one_hot(torch.tensor(idx), V).float()


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_golden_onehot_equal_always_accepts(backend, seed):
    # p one-hot = q one-hot at every draft: accepted with probability 1; the bonus comes from p.
    V = 5
    x = torch.tensor([[1, 2, 3], [4, 4, 0]])
    p = torch.stack([onehot([1, 2, 3, 4], V), onehot([4, 4, 0, 2], V)])
    q = p[:, :3].clone()
    d = backend.device
    for qq in (q, None):  # stochastic and deterministic drafts
        res = sk.verify_chain(x.to(d), p.to(d), None if qq is None else qq.to(d), seed=seed)
        assert res.tokens.tolist() == [[1, 2, 3, 4], [4, 4, 0, 2]]
        assert res.num_accepted.tolist() == [3, 3]


@pytest.mark.parametrize("seed", [0, 7])
def test_golden_onehot_reject_emits_argmax(backend, seed):
    V = 6
    d = backend.device
    # Row 0: p one-hot at 3, draft 1 -> rejected at position 0, correction 3.
    # Row 1: first two drafts match one-hot p, third does not -> two accepted, correction 5.
    x = torch.tensor([[1, 2, 2], [0, 4, 2]])
    p = torch.stack([onehot([3, 0, 0, 1], V), onehot([0, 4, 5, 1], V)])
    q_uniform = torch.full((2, 3, V), 1.0 / V)
    q_onehot = torch.stack([onehot([1, 2, 2], V), onehot([0, 4, 2], V)])
    for q in (q_uniform, q_onehot, None):
        res = sk.verify_chain(x.to(d), p.to(d), None if q is None else q.to(d), seed=seed)
        assert res.tokens.tolist() == [[3, -1, -1, -1], [0, 4, 5, -1]], q
        assert res.num_accepted.tolist() == [0, 2]


def test_golden_p_equals_q_always_accepts(backend):
    # p == q (not one-hot): u * q < p holds for every u < 1, so every draft is accepted.
    g = torch.Generator().manual_seed(0)
    B, K, V = 16, 4, 9
    p = torch.softmax(torch.randn(B, K + 1, V, generator=g), -1)
    q = p[:, :K].clone()
    x = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, K)
    d = backend.device
    res = sk.verify_chain(x.to(d), p.to(d), q.to(d), seed=3)
    assert res.num_accepted.tolist() == [K] * B
    assert torch.equal(res.tokens[:, :K].cpu(), x)


def test_golden_zero_target_prob_always_rejects(backend):
    # p(x) = 0 -> always rejected, and the correction never emits x.
    V = 4
    x = torch.tensor([[2, 2]] * 8)
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25] * 4, [0.25] * 4]).expand(8, 3, V).contiguous()
    q = torch.tensor([[0.2, 0.2, 0.6, 0.0], [0.25] * 4]).expand(8, 2, V).contiguous()
    d = backend.device
    for qq in (q, None):
        res = sk.verify_chain(x.to(d), p.to(d), None if qq is None else qq.to(d), seed=11)
        assert res.num_accepted.tolist() == [0] * 8
        assert set(res.tokens[:, 0].tolist()) <= {0, 1}
        assert bool((res.tokens[:, 1:] == -1).all())


def test_golden_num_draft_zero_and_K0(backend):
    V = 5
    d = backend.device
    # num_draft = 0: the bonus comes from position 0, even when the draft would have matched.
    x = torch.tensor([[2, 3], [2, 3]])
    p = torch.stack([onehot([2, 3, 1], V), onehot([4, 3, 1], V)])
    q = torch.stack([onehot([2, 3], V), onehot([2, 3], V)])
    res = sk.verify_chain(x.to(d), p.to(d), q.to(d), num_draft=torch.tensor([0, 0], device=d), seed=0)
    assert res.tokens.tolist() == [[2, -1, -1], [4, -1, -1]]
    assert res.num_accepted.tolist() == [0, 0]
    # K = 0: only the bonus.
    p0 = onehot([[1], [4]], V)
    res = sk.verify_chain(torch.empty(2, 0, dtype=torch.long, device=d), p0.to(d),
                          torch.empty(2, 0, V, device=d), seed=0)
    assert res.tokens.tolist() == [[1], [4]]
    assert res.num_accepted.tolist() == [0, 0]
    # B = 0: empty results of the right shapes.
    res = sk.verify_chain(torch.empty(0, 3, dtype=torch.long, device=d), torch.empty(0, 4, V, device=d),
                          seed=0)
    assert res.tokens.shape == (0, 4) and res.num_accepted.shape == (0,)


def test_golden_greedy(backend):
    d = backend.device
    # ties go to the smallest index: row [1, 3, 3, 0] has argmax 1
    lg = torch.tensor([[[1.0, 3.0, 3.0, 0.0], [0.0, 0.0, 5.0, 5.0], [2.0, 2.0, 2.0, 2.0]]])
    cases = [
        (torch.tensor([[1, 2]]), None, [[1, 2, 0]], [2]),  # all accepted, bonus = first max
        (torch.tensor([[2, 2]]), None, [[1, -1, -1]], [0]),  # tied but not first -> rejected
        (torch.tensor([[1, 3]]), None, [[1, 2, -1]], [1]),  # second draft: tied, not first
        (torch.tensor([[1, 2]]), torch.tensor([0]), [[1, -1, -1]], [0]),  # num_draft = 0
        (torch.tensor([[1, -1]]), torch.tensor([1]), [[1, 2, -1]], [1]),  # ragged, -1 padding
    ]
    for x, nd, tokens, nacc in cases:
        res = sk.verify_chain_greedy(x.to(d), lg.to(d), num_draft=None if nd is None else nd.to(d))
        assert res.tokens.tolist() == tokens and res.num_accepted.tolist() == nacc, (x, nd)
    # docstring example
    logits = torch.tensor([[[0.0, 5.0, 1.0], [9.0, 0.0, 0.0], [0.0, 0.0, 3.0]]])
    res = sk.verify_chain_greedy(torch.tensor([[1, 2]], device=d), logits.to(d))
    assert res.tokens.tolist() == [[1, 0, -1]] and res.num_accepted.tolist() == [1]
    # K = 0 and -inf masked entries
    lg0 = torch.tensor([[[float("-inf"), -3.0, -1.0, -1.0]]])
    res = sk.verify_chain_greedy(torch.empty(1, 0, dtype=torch.long, device=d), lg0.to(d))
    assert res.tokens.tolist() == [[2]] and res.num_accepted.tolist() == [0]


# ----------------------------------------------------------------------------------------------
# Determinism and the seed/offset contract
# ----------------------------------------------------------------------------------------------


def _varied_case(B=33, V=111, K=5):
    # High-entropy outputs (nearly uniform p, q far from p): two independent draws differ.
    g = torch.Generator().manual_seed(42)
    p = torch.softmax(0.3 * torch.randn(B, K + 1, V, generator=g), -1)
    q = torch.softmax(torch.randn(B, K, V, generator=g), -1)
    x = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, K)
    return x, p, q


def test_same_seed_offset_identical(backend):
    x, p, q = to_device(_varied_case(), backend.device)
    a = sk.verify_chain(x, p, q, seed=5, offset=6)
    b = sk.verify_chain(x, p, q, seed=5, offset=6)
    assert_same(a, b)
    s = torch.arange(33, device=backend.device)
    assert_same(sk.verify_chain(x, p, q, seed=s, offset=6),
                sk.verify_chain(x, p, q, seed=s.clone(), offset=6))


@pytest.mark.parametrize("change", ["seed", "offset_stride", "seed_tensor"])
def test_different_randomness_differs(backend, change):
    x, p, q = to_device(_varied_case(), backend.device)
    base = sk.verify_chain(x, p, q, seed=5, offset=0)
    if change == "seed":
        other = sk.verify_chain(x, p, q, seed=6, offset=0)
    elif change == "offset_stride":
        other = sk.verify_chain(x, p, q, seed=5, offset=STRIDE)
    else:
        other = sk.verify_chain(x, p, q, seed=torch.full((33,), 5, device=backend.device), offset=0)
    assert not torch.equal(base.tokens, other.tokens)


def test_seed_tensor_result_independent_of_batch_position(backend):
    # A request with its own seed draws the same numbers wherever it sits in the batch.
    x, p, q = _varied_case(B=8)
    seeds = torch.arange(8, dtype=torch.long) * 101 + 7
    offs = torch.arange(8, dtype=torch.long) * STRIDE
    d = backend.device
    base = sk.verify_chain(*to_device((x, p, q), d), seed=seeds.to(d), offset=offs.to(d))
    perm = torch.tensor([5, 2, 7, 0, 1, 6, 3, 4])  # request 0 moves to row 3, request 5 to row 0
    moved = sk.verify_chain(*to_device((x[perm], p[perm], q[perm]), d), seed=seeds[perm].to(d),
                            offset=offs[perm].to(d))
    assert torch.equal(moved.tokens.cpu(), base.tokens.cpu()[perm])
    assert torch.equal(moved.num_accepted.cpu(), base.num_accepted.cpu()[perm])
    # Alone in a batch of one, it is still the same.
    alone = sk.verify_chain(*to_device((x[5:6], p[5:6], q[5:6]), d), seed=seeds[5:6].to(d),
                            offset=offs[5:6].to(d))
    assert torch.equal(alone.tokens.cpu(), base.tokens.cpu()[5:6])


def test_int_seed_gives_rows_distinct_streams(backend):
    # The same request in every row: an int seed gives row b stream b (rows differ), equal seeds in
    # a tensor give every row the same stream (rows identical).
    x, p, q = _varied_case(B=1)
    B = 16
    x, p, q = (t.expand(B, *t.shape[1:]).contiguous() for t in (x, p, q))
    d = backend.device
    rows = sk.verify_chain(*to_device((x, p, q), d), seed=3).tokens.cpu()
    assert len({tuple(r) for r in rows.tolist()}) > 1
    same = sk.verify_chain(*to_device((x, p, q), d), seed=torch.full((B,), 3, device=d)).tokens.cpu()
    assert len({tuple(r) for r in same.tolist()}) == 1


def test_seed_none_uses_generator(backend):
    x, p, q = to_device(_varied_case(), backend.device)
    a = sk.verify_chain(x, p, q, generator=torch.Generator().manual_seed(3))
    b = sk.verify_chain(x, p, q, generator=torch.Generator().manual_seed(3))
    assert_same(a, b)
    # and seed=None without a generator draws from torch's default generator
    torch.manual_seed(0)
    c = sk.verify_chain(x, p, q)
    torch.manual_seed(0)
    assert_same(c, sk.verify_chain(x, p, q))


# ----------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------


def _good(B=2, K=3, V=5):
    x, p, q = _varied_case(B=B, V=V, K=K)
    return dict(draft_tokens=x, target_probs=p, draft_probs=q)


def _bad_cases():
    cases = []

    def case(name, match, **changes):
        cases.append(pytest.param(changes, match, id=name))

    g = _good()
    x, p, q = g["draft_tokens"], g["target_probs"], g["draft_probs"]
    case("tokens_rank", "draft_tokens", draft_tokens=x[0])
    case("tokens_dtype", "draft_tokens", draft_tokens=x.int())
    case("tokens_not_tensor", "draft_tokens", draft_tokens=x.tolist())
    case("target_shape_K", r"target_probs must be \[B, K\+1, V\]", target_probs=p[:, :3])
    case("target_shape_B", r"target_probs must be \[B, K\+1, V\]", target_probs=p[:1])
    case("target_rank", r"target_probs must be \[B, K\+1, V\]", target_probs=p[0])
    case("target_dtype", "target_probs", target_probs=p.double())
    case("target_V0", "target_probs", target_probs=p[..., :0], draft_probs=q[..., :0])
    case("draft_shape", "draft_probs", draft_probs=q[:, :2])
    case("draft_V", "draft_probs", draft_probs=q[..., :4])
    case("draft_dtype_mismatch", "draft_probs", draft_probs=q.half())
    case("draft_dtype_int", "draft_probs", draft_probs=(q * 10).long())
    case("token_too_large", "draft_tokens", draft_tokens=x.clone().index_fill_(1, torch.tensor([1]), 5))
    case("token_negative", "draft_tokens", draft_tokens=x.clone().index_fill_(1, torch.tensor([0]), -1))
    case("num_draft_negative", "num_draft", num_draft=torch.tensor([-1, 2]))
    case("num_draft_too_large", "num_draft", num_draft=torch.tensor([4, 2]))
    case("num_draft_shape", "num_draft", num_draft=torch.tensor([1, 2, 3]))
    case("num_draft_dtype", "num_draft", num_draft=torch.tensor([1.0, 2.0]))
    case("target_nan", "target_probs", target_probs=p.clone().index_fill_(2, torch.tensor([3]), float("nan")))
    case("target_negative", "target_probs", target_probs=p.clone().index_fill_(2, torch.tensor([3]), -0.1))
    case("target_inf", "target_probs", target_probs=p.clone().index_fill_(2, torch.tensor([0]), float("inf")))
    case("target_zero_mass", "target_probs", target_probs=torch.zeros_like(p))
    case("draft_nan", "draft_probs", draft_probs=q.clone().index_fill_(2, torch.tensor([1]), float("nan")))
    case("draft_negative", "draft_probs", draft_probs=q.clone().index_fill_(2, torch.tensor([1]), -1.0))
    case("target_sum", r"target_probs rows must sum to 1 \(within 1e-03 for float32\); found a row summing "
         r"to 5$", target_probs=p * 5)
    case("draft_sum", r"draft_probs rows must sum to 1 \(within 1e-03 for float32\)", draft_probs=q * 5)
    case("seed_negative", "seed", seed=-1)
    case("seed_too_large", "seed", seed=2**63)
    case("seed_float", "seed", seed=1.5)
    case("seed_bool", "seed", seed=True)
    case("seed_tensor_dtype", "seed", seed=torch.tensor([1, 2], dtype=torch.int32))
    case("seed_tensor_shape", "seed", seed=torch.tensor([1, 2, 3]))
    case("offset_negative", "offset", offset=-2)
    case("offset_tensor_dtype", "offset", offset=torch.tensor([0.0, 2.0]))
    case("seed_and_generator", "generator", seed=1, generator=torch.Generator())
    return cases


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


# check=True: probability rows must sum to 1, within a tolerance by dtype (ops/_common.py).
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
def test_batch_beyond_grid_limit_cuda():
    # gridDim.y/z are capped at 65535; the CUDA kernels put rows there and launch per slice.
    if "cpu" not in sk.backends("cpu") or "cuda" not in sk.backends("cuda"):
        pytest.skip("needs the compiled cpu and cuda backends")
    inputs = make_chain(65535 + 70, 2, 5, seed=3, ragged=True)
    greedy_inputs = dict(draft_tokens=inputs["draft_tokens"], target_logits=inputs["target_probs"],
                         num_draft=inputs["num_draft"])
    with sk.use_backend("cpu"):
        expected = sk.verify_chain(**inputs, seed=9)
        expected_greedy = sk.verify_chain_greedy(**greedy_inputs)
    with sk.use_backend("cuda"):
        assert_same(sk.verify_chain(**to_device(inputs, "cuda"), seed=9), expected)
        assert_same(sk.verify_chain_greedy(**to_device(greedy_inputs, "cuda")), expected_greedy)


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


# ----------------------------------------------------------------------------------------------
# torch.compile, fake implementations, CUDA graphs
# ----------------------------------------------------------------------------------------------


def test_opcheck_chain_ops():
    # Schema, fake (meta) implementation and dispatch registration are consistent.
    x, p, q = _varied_case(B=3, V=7, K=2)
    s = torch.arange(3)
    o = torch.zeros(3, dtype=torch.long)
    nd = torch.tensor([0, 1, 2])
    torch.library.opcheck(torch.ops.specdec.verify_chain.default, (x, p, q, nd, s, o, True))
    torch.library.opcheck(torch.ops.specdec.verify_chain_greedy.default, (x, p, None))


def test_torch_compile_fullgraph_cpu():
    # aot_eager traces with fake tensors (the registered fake impls) without C++ codegen: cheap.
    x, p, q = _varied_case(B=4, V=7, K=3)
    s = torch.arange(4)
    o = torch.zeros(4, dtype=torch.long)

    def f(x, p, q, s, o):
        tokens, n = torch.ops.specdec.verify_chain(x, p, q, None, s, o, False)
        return tokens, n, torch.ops.specdec.verify_chain_greedy(x, p, None)[0]

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    for off in (0, STRIDE):
        o.fill_(off)
        got, exp = cf(x, p, q, s, o), f(x, p, q, s, o)
        for a, b in zip(got, exp, strict=True):
            assert torch.equal(a, b)


@pytest.mark.cuda
def test_cuda_graph_capture_replay(cuda_backend):
    d = cuda_backend.device
    x, p, q = to_device(_varied_case(), d)
    B = x.shape[0]
    seed = torch.arange(B, device=d) * 13 + 1
    offset = torch.zeros(B, dtype=torch.long, device=d)
    nd = torch.randint(0, x.shape[1] + 1, (B,), generator=torch.Generator().manual_seed(0)).to(d)

    def step():
        return sk.verify_chain(x, p, q, num_draft=nd, seed=seed, offset=offset, check=False)

    graph, static = capture_cuda_graph(step)
    outs = []
    for r in range(3):
        offset.fill_(r * STRIDE)  # in place: the captured kernels read the new offset
        graph.replay()
        torch.cuda.synchronize()
        eager = sk.verify_chain(x, p, q, num_draft=nd, seed=seed, offset=offset.clone())
        assert_same(static, eager)
        outs.append(static.tokens.clone())
    assert not torch.equal(outs[0], outs[1])


@pytest.mark.cuda
def test_cuda_graph_capture_greedy(cuda_backend):
    d = cuda_backend.device
    inputs = to_device(make_greedy(33, 5, 111, seed=0, ragged=True), d)
    graph, static = capture_cuda_graph(lambda: sk.verify_chain_greedy(**inputs, check=False))
    inputs["target_logits"].copy_(inputs["target_logits"].flip(-1))
    graph.replay()
    torch.cuda.synchronize()
    assert_same(static, ref.verify_chain_greedy(**to_device(inputs, "cpu")))


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
