"""The cpu backend's vector paths (csrc/cpu/simd.h) against its scalar path and the reference.

The op test modules run every cpu-backend test at each vector level (tests/conftest.py), mostly at
vocabulary sizes that are all tail (V < 128) or a whole number of 128-element steps (32000). Here
the sizes straddle the steps (the main loop and a tail in one row), dtypes other than float32
reach the vector loads, beams start at misaligned Philox elements, and rows hold the values the
pruning tests must not get wrong (zeros, -inf, ties). Tokens must be identical at every level
(the keys come from the same scalar formulas); floats agree within float32 rounding.
"""

from __future__ import annotations

import pytest
import torch

import specdec_kernels as sk
from specdec_kernels import reference
from specdec_kernels.testing import assert_same

pytestmark = pytest.mark.skipif("cpu" not in sk.backends("cpu"), reason="needs the compiled cpu backend")

LEVELS = list(range(sk.cpu_simd_level(supported=True) + 1)) if "cpu" in sk.backends("cpu") else []
VOCABS = [129, 1000, 4099]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def at_levels(fn):
    """fn() at every vector level of this CPU, scalar first."""
    outs = []
    for level in LEVELS:
        with sk.use_backend("cpu"), sk.use_cpu_simd(level):
            outs.append(fn())
    return outs


def peaked_probs(shape, V, g, zero_frac=0.0):
    z = 2.0 * torch.randn(*shape, V, generator=g)
    z.scatter_add_(-1, torch.randint(0, V, (*shape, 1), generator=g), torch.full((*shape, 1), 6.0))
    if zero_frac:
        z[torch.rand(*shape, V, generator=g) < zero_frac] = float("-inf")
    return torch.softmax(z, -1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("deterministic", [False, True], ids=["draft_probs", "one_hot"])
def test_verify_chain_levels(V, dtype, deterministic):
    g = torch.Generator().manual_seed(V)
    B, K = 6, 4
    p = peaked_probs((B, K + 1), V, g, zero_frac=0.3).to(dtype)  # zero runs: skipped Philox chunks
    q = peaked_probs((B, K), V, g).to(dtype)
    x = torch.multinomial(q.float().reshape(-1, V), 1, generator=g).reshape(B, K)
    nd = torch.tensor([4, 0, 2, 4, 1, 3])
    qq = None if deterministic else q
    outs = at_levels(lambda: sk.verify_chain(x, p, qq, num_draft=nd, seed=torch.arange(B) + 11))
    ref = reference.verify_chain(x, p, qq, num_draft=nd, seed=torch.arange(B) + 11)
    for o in outs:
        assert_same(o, ref)
    other = sk.verify_chain(x, p, qq, num_draft=nd, seed=torch.arange(B) + 12)
    assert not torch.equal(other.tokens, ref.tokens), "the seed must matter (else equality is vacuous)"


@pytest.mark.parametrize("V", VOCABS)
def test_verify_chain_greedy_levels(V):
    g = torch.Generator().manual_seed(V)
    z = torch.randn(5, 4, V, generator=g).half().float()  # ties between equal halves
    z[0, :, :] = float("-inf")
    z[1, :, 3] = float("nan")
    x = z.argmax(-1)[:, :3]
    x[2, 1] = (x[2, 1] + 1) % V
    outs = at_levels(lambda: sk.verify_chain_greedy(x, z.nan_to_num(nan=-1.0)))
    ref = reference.verify_chain_greedy(x, z.nan_to_num(nan=-1.0))
    for o in outs:
        assert torch.equal(o.tokens, ref.tokens)
    # NaN never wins (check=False lets it in): every level agrees with the scalar path.
    raw = at_levels(lambda: sk.verify_chain_greedy(x, z, check=False))
    for o in raw[1:]:
        assert torch.equal(o.tokens, raw[0].tokens)


def binary_tree(B, N, V, g):
    parents = ((torch.arange(N) - 1) // 2).expand(B, N).clone()
    parents[:, 0] = -1
    q = peaked_probs((B, N), V, g)
    tokens = torch.zeros(B, N, dtype=torch.long)
    for n in range((N - 1) // 2 + 1):
        kids = [c for c in (2 * n + 1, 2 * n + 2) if c < N]
        if kids:
            u = torch.rand(B, V, generator=g).clamp_min(1e-20)
            tokens[:, kids] = torch.topk(q[:, n].log() - (-u.log()).log(), len(kids), -1).indices
    return tokens, parents, q


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("mode", ["wor", "iid", "one_hot"])
def test_verify_tree_levels(V, dtype, mode):
    g = torch.Generator().manual_seed(V + 1)
    B, N = 6, 7
    tokens, parents, q = binary_tree(B, N, V, g)
    # a target far from the draft: first children get rejected, so mass passes and residual races run
    p = peaked_probs((B, N), V, g, zero_frac=0.2).to(dtype)
    qq = None if mode == "one_hot" else q.to(dtype)
    kw = dict(replacement=mode == "iid", num_nodes=torch.tensor([7, 1, 3, 7, 5, 2]), seed=torch.arange(B) + 5)
    outs = at_levels(lambda: sk.verify_tree(tokens, parents, p, qq, **kw))
    ref = reference.verify_tree(tokens, parents, p, qq, **kw)
    for o in outs:
        assert_same(o, ref)


@pytest.mark.parametrize("V", VOCABS)
def test_verify_tree_greedy_levels(V):
    g = torch.Generator().manual_seed(V + 2)
    tokens, parents, _ = binary_tree(4, 7, V, g)
    z = torch.randn(4, 7, V, generator=g)
    tokens[:, 1] = z[:, 0].argmax(-1)
    outs = at_levels(lambda: sk.verify_tree_greedy(tokens, parents, z))
    ref = reference.verify_tree_greedy(tokens, parents, z)
    for o in outs:
        assert_same(o, ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("T", [1.0, 0.7])
def test_gumbel_topk_levels(V, dtype, T):
    g = torch.Generator().manual_seed(V + 3)
    z = (3.0 * torch.randn(5, V, generator=g)).to(dtype)
    z[1, ::3] = float("-inf")
    z[2, 5:] = float("-inf")  # fewer finite tokens than k: padding slots
    k = 8
    outs = at_levels(lambda: sk.gumbel_topk(z, k, temperature=T, seed=torch.arange(5) + 1))
    ref = reference.gumbel_topk(z, k, temperature=T, seed=torch.arange(5) + 1)
    for o in outs:
        assert_same(o, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("V", VOCABS)
def test_stochastic_beam_step_levels(V):
    # W = 3 beams of V elements: beam w's noise starts at Philox element w * V, inside a block.
    g = torch.Generator().manual_seed(V + 4)
    B, W = 4, 3
    z = 3.0 * torch.randn(B, W, V, generator=g)
    lp = torch.log_softmax(torch.randn(B, W, generator=g), -1)
    sc = lp + torch.rand(B, W, generator=g)
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)
    kw = dict(beam_mask=mask, temperature=0.9, seed=torch.arange(B) + 3)
    outs = at_levels(lambda: sk.stochastic_beam_step(z, lp, sc, 4, **kw))
    ref = reference.stochastic_beam_step(z, lp, sc, 4, **kw)
    for o in outs:
        assert_same(o, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("V", VOCABS)
def test_draft_entropy_levels(V, dtype):
    g = torch.Generator().manual_seed(V + 5)
    z = (2.0 * torch.randn(4, V, generator=g)).to(dtype)
    z[1, ::2] = float("-inf")
    z[2, :] = 0.0  # uniform: log V exactly
    outs = at_levels(lambda: sk.draft_entropy(z, temperature=torch.tensor([1.0, 0.5, 1.0, 2.0])))
    ref = reference.draft_entropy(z, temperature=torch.tensor([1.0, 0.5, 1.0, 2.0]))
    for o in outs:
        torch.testing.assert_close(o, ref, rtol=2e-6, atol=2e-6)
    nan = z.float().clone()
    nan[0, 7] = float("nan")
    for o in at_levels(lambda: sk.draft_entropy(nan, check=False)):
        assert torch.isnan(o[0]) and not torch.isnan(o[1:]).any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("kw", [dict(temperature=0.8), dict(temperature=0.8, top_k=50),
                                dict(temperature=1.3, top_k=3), dict(temperature=0.8, top_p=0.9),
                                dict(temperature=1.0, top_k=40, top_p=0.5),
                                dict(temperature=1.0, top_p=0.999)], ids=str)
def test_sampling_probs_levels(V, dtype, kw):
    g = torch.Generator().manual_seed(V + 6)
    z = (2.0 * torch.randn(6, V, generator=g)).to(dtype)
    z[1] = torch.linspace(-5, 5, V).to(dtype)  # sorted: the worst order for a running top-k
    z[2, ::4] = float("-inf")
    outs = at_levels(lambda: sk.sampling_probs(z, **kw))
    ref = reference.sampling_probs(z, **kw)
    for o in outs:
        torch.testing.assert_close(o, ref.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("loss", ["tvdpp_loss", "tvd_loss", "kl_loss"])
def test_losses_levels(V, loss):
    # V = 1000 and 4099 leave tails past the last 32-element step: forward and backward must switch
    # to their scalar tails at the same element, or they disagree on 1[p > q] there.
    g = torch.Generator().manual_seed(V + 7)
    z = 2.0 * torch.randn(6, V, generator=g)
    p = peaked_probs((6,), V, g, zero_frac=0.2)
    grads, values = [], []
    for level in LEVELS:
        with sk.use_backend("cpu"), sk.use_cpu_simd(level):
            zz = z.clone().requires_grad_(True)
            value = getattr(sk, loss)(zz, p)
            value.backward()
        grads.append(zz.grad)
        values.append(value.detach())
    zr = z.clone().requires_grad_(True)
    ref = getattr(reference, loss)(zr, p)
    ref.backward()
    for value, grad in zip(values, grads, strict=True):
        torch.testing.assert_close(value, ref.detach().float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, zr.grad.float(), rtol=1e-4, atol=1e-6)


def test_use_cpu_simd_bad_level():
    for bad in ("sse", 3, -1, True, 1.0):
        with pytest.raises(ValueError, match="level must be"), sk.use_cpu_simd(bad):
            pass
    with sk.use_cpu_simd("scalar"):
        assert sk.cpu_simd_level() == 0
    assert sk.cpu_simd_level() == sk.cpu_simd_level(supported=True)
