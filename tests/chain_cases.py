"""Shared inputs of the verify_chain tests (test_chain_*.py, test_chain_block.py): random chains,
the result invariants, the variants of the equality tests, the toy Markov model and chi-square
harness of the law tests, and the valid / invalid argument sets of the input checks."""

from __future__ import annotations

import pytest
import torch
from chain_exact import TOY_DET_NEXT, TOY_DRAFT, TOY_TARGET
from helpers import pooled_chi2, to_device

from specdec_kernels import VERIFY_CHAIN_OFFSET_STRIDE as STRIDE

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


# Variants of the equality tests on top of the base case; each is (name, V, B, K, options).
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


VARIANTS_BY_NAME = {name: (V, B, K, opts) for name, V, B, K, opts in VARIANTS}


# ----------------------------------------------------------------------------------------------
# Distribution: the emitted sequence has exactly the target's law
# ----------------------------------------------------------------------------------------------
#
# Toy language model on V = 4 tokens: the target's next-token law depends on the previous token
# (a Markov chain P[prev]); the drafter is another chain Q[prev], deliberately far from P so that
# rejections (and therefore corrections) are frequent and a wrong correction law is visible.
# Starting from context token 0, rounds of "draft K tokens, verify" are repeated until n tokens
# are emitted; the first n emitted tokens must have the law P[0][y1] * P[y1][y2] * ...

# The tables live in chain_exact.py (shared with tests_vllm).
TARGET, DRAFT, DET_NEXT = TOY_TARGET, TOY_DRAFT, TOY_DET_NEXT
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
    return pooled_chi2(counts, expected, 1e-4)


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


# High-entropy inputs of the determinism, input-check and compile tests.
def _varied_case(B=33, V=111, K=5):
    # High-entropy outputs (nearly uniform p, q far from p): two independent draws differ.
    g = torch.Generator().manual_seed(42)
    p = torch.softmax(0.3 * torch.randn(B, K + 1, V, generator=g), -1)
    q = torch.softmax(torch.randn(B, K, V, generator=g), -1)
    x = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, K)
    return x, p, q


# Valid arguments and the bad-input cases of the input checks.
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
