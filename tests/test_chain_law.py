"""verify_chain: the emitted sequence has exactly the target's law (chi-square on the toy Markov
model of tests/chain_cases.py, every backend, a slow variant with three tokens), with a
positive control (an exact plain-torch verifier) and a negative control (a biased verifier the
harness must reject)."""

from __future__ import annotations

import pytest
import torch
from chain_cases import (
    DIST_CASES,
    N_DEFAULT,
    N_SLOW,
    SMALL_N,
    _assert_exact,
    _n_samples,
    chi2_stat,
    exact_law,
    simulate,
)

import specdec_kernels as sk

TRITON_FAMILY = "chain"  # conftest: the triton params need specdec_kernels.triton.chain


# ----------------------------------------------------------------------------------------------
# Distribution: the emitted sequence has exactly the target's law
# ----------------------------------------------------------------------------------------------
#
# The toy model (TARGET, DRAFT, DET_NEXT), the simulated decoding loop (simulate) and the
# chi-square harness live in tests/chain_cases.py (tests/test_chain_block.py uses them too).


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
